"""The `soulsai` command line. Nothing else parses argv.

The group and its error boundary live here; the commands in roles.py (train, server, node,
client) and tools.py (quicksave, evaluate, acl, compare), what they share in common.py.
Exit codes: 0 done, 2 bad usage or config, 1 runtime failure (one line, no traceback).
"""

from __future__ import annotations

import os
import sys

# Before numpy loads: the clients' small matrix products are fastest on one BLAS thread, and
# OpenBLAS's extra threads would take the CPU from the env, Redis and the training node (a 1M
# parameter model's first inference: 1.9 ms threaded, 0.3 ms on one). The node trains with
# torch's own threads (training.threads). A value set in the environment wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import click  # noqa: E402

from soulsai.cli import roles, tools  # noqa: E402
from soulsai.errors import SoulsaiError  # noqa: E402
from soulsai.transport.links import TRANSIENT  # noqa: E402


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="soulsai")
def cli() -> None:
    """soulsai: distributed deep RL for slow environments, through Redis.

    Sampling clients push experience to Redis; the training node learns and broadcasts
    weights; the telemetry node turns episodes into figures and best-model checkpoints.
    Start with `soulsai train` to run everything on this machine.
    """


for command in (
    roles.train,
    roles.server,
    roles.node,
    roles.client,
    tools.quicksave,
    tools.evaluate,
    tools.acl,
    tools.compare,
):
    cli.add_command(command)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(2)
    except SoulsaiError as e:
        click.echo(f"soulsai: error: {e}", err=True)
        sys.exit(e.exit_code)
    except TRANSIENT as e:  # Redis went away mid-command (e.g. the run it served ended)
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        click.echo(f"soulsai: error: lost the connection to Redis: {reason}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)

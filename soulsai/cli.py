"""The `soulsai` command line. Nothing else parses argv.

Exit codes: 0 done, 2 bad usage or config, 1 runtime failure (one line, no traceback).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from soulsai.config import Config, default_config_dir, load_config
from soulsai.errors import ConfigError, ConnectionFailed, SoulsaiError

log = logging.getLogger("soulsai")


def _setup_logging(rich: bool = False) -> None:
    if rich:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False)
        fmt = "%(message)s"
    else:
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


def _stop_on_signals() -> threading.Event:
    """First SIGINT/SIGTERM asks for a graceful stop; a second one exits at once."""
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            log.warning("second signal: exiting now")
            raise SystemExit(1)
        log.info("signal %d received: stopping (again to force)", signum)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def common_options(f: Any) -> Any:
    opts = [
        click.option(
            "--config-dir",
            type=click.Path(path_type=Path),
            default=None,
            help="Folder with config_d.yaml, optional config.yaml and redis.secret "
            "[default: ./config, else the packaged defaults].",
        ),
        click.option(
            "--set",
            "sets",
            multiple=True,
            metavar="KEY=VALUE",
            help="Override one config key, e.g. --set dqn.lr=0.0005 (repeatable).",
        ),
        click.option(
            "--algo",
            type=click.Choice(["dqn", "ppo"]),
            default=None,
            help="Algorithm (config key: algo).",
        ),
        click.option(
            "--env",
            "env_id",
            default=None,
            metavar="ID",
            help="Gymnasium env id (config key: env.id).",
        ),
        click.option(
            "--save-dir",
            type=click.Path(path_type=Path),
            default=None,
            help="Where run folders are created (config key: save_dir).",
        ),
        click.option("--seed", type=int, default=None, help="Base seed (config key: seed)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _load(
    config_dir: Path | None, sets: tuple[str, ...], **named: Any
) -> tuple[Config, Path, list[str]]:
    """Config from files, then the named options, then --set items (which win)."""
    cdir = config_dir if config_dir is not None else default_config_dir()
    mapping = {
        "algo": "algo",
        "env_id": "env.id",
        "save_dir": "save_dir",
        "seed": "seed",
        "max_steps": "max_steps",
        "target_return": "target_return",
    }
    overrides = [
        f"{mapping[k]}={json.dumps(str(v)) if k in ('env_id', 'save_dir') else v}"
        for k, v in named.items()
        if v is not None and k in mapping
    ]
    overrides += list(sets)
    cfg = load_config(cdir, overrides)
    if cfg.algo == "ppo":
        raise ConfigError("algo 'ppo' is not available yet (see the PPO issue); use --algo dqn")
    return cfg, cdir, overrides


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="soulsai")
def cli() -> None:
    """soulsai: distributed deep RL for slow environments, through Redis.

    Sampling clients push experience to Redis; the training node learns and broadcasts
    weights; the telemetry node turns episodes into figures and best-model checkpoints.
    Start with `soulsai train` to run everything on this machine.
    """


@cli.command()
@common_options
@click.option(
    "--clients",
    type=click.IntRange(0, 64),
    default=2,
    show_default=True,
    help="Sampling client processes to start.",
)
@click.option(
    "--max-steps",
    type=click.IntRange(min=0),
    default=None,
    help="Stop after this many env steps (config key: max_steps; 0 = no limit).",
)
@click.option(
    "--target-return",
    type=float,
    default=None,
    help="Stop when the mean of the last 20 episode returns reaches this "
    "(config key: target_return).",
)
@click.option(
    "--redis",
    "redis_mode",
    type=click.Choice(["auto", "embedded", "external"]),
    default="auto",
    show_default=True,
    help="auto: use the configured Redis if config/redis.secret exists and it answers, "
    "else start a private one; embedded: always a private one; external: never.",
)
@click.option("--no-progress", is_flag=True, help="No progress bar (for logs and CI).")
def train(
    config_dir: Path | None,
    sets: tuple[str, ...],
    clients: int,
    redis_mode: str,
    no_progress: bool,
    **named: Any,
) -> None:
    """Train on this machine: Redis, training node, telemetry node and N clients.

    Stops at --max-steps or when the rolling mean of the last 20 episode returns reaches
    --target-return, then writes summary.json into the run folder (exit 0 either way).
    """
    from soulsai.local import LocalStack

    cfg, cdir, overrides = _load(config_dir, sets, **named)
    _setup_logging(rich=True)
    signal.signal(signal.SIGTERM, _interrupt)
    code = LocalStack(cfg, cdir, overrides, clients, redis_mode, progress=not no_progress).run()
    sys.exit(code)


@cli.command()
@common_options
@click.option("--no-progress", is_flag=True, help="No live status line (for logs).")
def server(config_dir: Path | None, sets: tuple[str, ...], no_progress: bool, **named: Any) -> None:
    """Run the training and telemetry nodes against the configured Redis until Ctrl-C.

    Clients on other machines connect with `soulsai client` and the same redis.secret.
    """
    from soulsai.local import LocalStack

    cfg, cdir, overrides = _load(config_dir, sets, **named)
    _setup_logging(rich=True)
    signal.signal(signal.SIGTERM, _interrupt)
    stack = LocalStack(
        cfg,
        cdir,
        overrides,
        clients=0,
        redis_mode="external",
        progress=not no_progress,
        stop_rules=False,
    )
    code = stack.run()
    sys.exit(0 if code == 130 else code)


@cli.command()
@click.argument("role", type=click.Choice(["training", "telemetry"]))
@common_options
@click.option(
    "--run-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Run folder to write into [training: a new one under save_dir; "
    "telemetry: the one the training node announces].",
)
def node(
    role: str, config_dir: Path | None, sets: tuple[str, ...], run_dir: Path | None, **named: Any
) -> None:
    """Run one server node (what a container runs)."""
    from soulsai import run as runfolder
    from soulsai.transport import RedisTarget

    cfg, cdir, _ = _load(config_dir, sets, **named)
    _setup_logging()
    stop = _stop_on_signals()
    target = RedisTarget.from_config(cfg, cdir)
    if role == "training":
        from soulsai.training.node import DQNTrainingNode

        if run_dir is None:
            run_dir = runfolder.make_run_dir(cfg.save_dir, cfg.algo, cfg.env.id)
            runfolder.atomic_write_json(run_dir / runfolder.CONFIG_FILE, cfg.model_dump())
        DQNTrainingNode(cfg, target, run_dir, stop).run()
    else:
        from soulsai.telemetry.node import TelemetryNode

        if run_dir is None:
            run_dir = _announced_run_dir(cfg, target)
        TelemetryNode(cfg, target, run_dir, stop).run()


def _announced_run_dir(cfg: Config, target: Any) -> Path:
    from soulsai.transport import TelemetryLink, open_link
    from soulsai.transport.links import wait_for

    link = open_link(TelemetryLink, target, cfg.key_prefix, wait=cfg.connect_wait)
    info = wait_for(link.run_info, 120.0)
    if not info or "run_dir" not in info:
        raise ConnectionFailed("no training node announced a run folder (start it first)")
    return Path(info["run_dir"])


@cli.command()
@click.option(
    "--config-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder with config_d.yaml, config.yaml and redis.secret.",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a local config key, e.g. --set redis_address=10.0.0.5.",
)
@click.option("--client-id", default=None, help="Name shown in heartbeats and episode records.")
def client(config_dir: Path | None, sets: tuple[str, ...], client_id: str | None) -> None:
    """Run one sampling client against the server's Redis.

    Locally it needs only redis_address (or redis_url) and the secret; env, algorithm and
    batching come from the config the training node publishes.
    """
    from soulsai.client.sampler import Sampler
    from soulsai.transport import RedisTarget

    cfg, cdir, _ = _load(config_dir, sets)
    _setup_logging()
    stop = _stop_on_signals()
    sampler = Sampler(cfg, RedisTarget.from_config(cfg, cdir), stop, client_id)
    try:
        sampler.run()
    finally:
        sampler.close()


@cli.command()
@click.option(
    "--config-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder with config_d.yaml, config.yaml and redis.secret.",
)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a config key.")
@click.option("--buffer", is_flag=True, help="Also save the replay buffer.")
def quicksave(config_dir: Path | None, sets: tuple[str, ...], buffer: bool) -> None:
    """Ask the running training node to save into <run>/manual_save now."""
    from soulsai.quicksave import request_quicksave

    cfg, cdir, _ = _load(config_dir, sets)
    click.echo(request_quicksave(cfg, cdir, buffer))


@cli.command()
@click.option(
    "--config-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder with redis.secret (and the config, for key_prefix).",
)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a config key.")
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="ACL file to write [default: <config-dir>/users.acl].",
)
@click.option(
    "--generate",
    is_flag=True,
    help="First add 'user trainer' and 'user client' lines with fresh passwords to "
    "redis.secret where missing.",
)
@click.option(
    "--client-secret",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Also write a secret file for client machines holding only the client user.",
)
@click.option(
    "--prefix",
    "prefixes",
    multiple=True,
    help="Key prefix the users may use (repeatable) [default: key_prefix].",
)
def acl(
    config_dir: Path | None,
    sets: tuple[str, ...],
    out: Path | None,
    generate: bool,
    client_secret: Path | None,
    prefixes: tuple[str, ...],
) -> None:
    """Write Redis ACL users (trainer, client, optional admin) from redis.secret.

    The file holds password hashes only; Redis >= 7.0 loads it (`aclfile` or as a config
    file). Nodes then log in with redis_username: trainer, clients with redis_username:
    client (see docs/deployment.md).
    """
    from soulsai.transport.acl import write_acl

    cfg, cdir, _ = _load(config_dir, sets)
    _setup_logging()
    res = write_acl(cdir, list(prefixes) or [cfg.key_prefix], out, generate, client_secret)
    if res.generated:
        click.echo(f"added users {', '.join(res.generated)} to {cdir / 'redis.secret'}")
    click.echo(f"wrote {res.acl_file} (users: default off, {', '.join(res.users)})")
    if res.client_secret:
        click.echo(f"wrote {res.client_secret}: copy it to client machines as config/redis.secret")


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
    except KeyboardInterrupt:
        sys.exit(130)

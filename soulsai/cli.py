"""The `soulsai` command line. Nothing else parses argv.

Exit codes: 0 done, 2 bad usage or config, 1 runtime failure (one line, no traceback).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

# Before numpy loads: the clients' small matrix products are fastest on one BLAS thread, and
# OpenBLAS's extra threads would take the CPU from the env, Redis and the training node (a 1M
# parameter model's first inference: 1.9 ms threaded, 0.3 ms on one). The node trains with
# torch's own threads (training.threads). A value set in the environment wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import click  # noqa: E402

from soulsai.config import Config, default_config_dir, load_config  # noqa: E402
from soulsai.config.schema import ALGOS, check_algo_config  # noqa: E402
from soulsai.errors import ConfigError, ConnectionFailed, SoulsaiError  # noqa: E402
from soulsai.transport.links import TRANSIENT  # noqa: E402

log = logging.getLogger("soulsai")

# What the server commands import beyond a client's install: pyproject's `server` extra. A plain
# `pip install soulsai` is a torch-free sampling client (a Windows game machine's install).
SERVER_MODULES = (
    "torch",
    "safetensors",
    "rich",
    "matplotlib",
    "prometheus_client",
    "fastapi",
    "uvicorn",
)


def _need_server(command: str) -> None:
    """A server command on a client-only install stops here, before anything starts: one line
    naming the extra to install, exit 2 (the install does not fit the command)."""
    missing = []
    for name in SERVER_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    if missing:
        raise ConfigError(
            f"`soulsai {command}` needs the server extra ({', '.join(missing)} not installed; "
            "this is a client-only install): pip install 'soulsai[server]'"
        )


def _setup_logging(rich: bool = False) -> None:
    if rich:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False)
        fmt = "%(message)s"
    else:
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    level = os.environ.get("SOULSAI_LOG_LEVEL", "INFO").upper()
    if not isinstance(logging.getLevelName(level), int):
        level = "INFO"
    logging.basicConfig(level=level, handlers=[handler], force=True)


def _stop_on_signals() -> threading.Event:
    """First SIGINT/SIGTERM asks for a graceful stop; a second one exits at once."""
    stop = threading.Event()
    received: list[int] = []  # signals only: a shutdown command also sets `stop`, and the
    # SIGTERM that `soulsai train` sends after it must still mean a graceful stop

    def handler(signum: int, frame: Any) -> None:
        if received:
            log.warning("second signal: exiting now")
            raise SystemExit(1)
        received.append(signum)
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
            help="Folder with config_d.yaml, optional config.yaml and redis.secret, and "
            "presets/ [default: ./config, else the packaged defaults].",
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
            type=click.Choice(ALGOS),
            default=None,
            help="Algorithm (config key: algo).",
        ),
        click.option(
            "--env",
            "env_id",
            default=None,
            metavar="ID",
            help="Gymnasium env id (config key: env.id); a preset for this algo and env "
            "applies by itself (config key: preset).",
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
    check_algo_config(cfg)
    return cfg, cdir, overrides


def _check_spaces(cfg: Config) -> None:
    """The env's spaces are ones the algorithm trains on; an unsupported one (say a Text
    observation, or Box actions for DQN) is a usage error naming it, before anything starts."""
    from soulsai.envs import env_spaces
    from soulsai.model.specs import check_spaces

    check_spaces(cfg, *env_spaces(cfg.env))


def resume_option(f: Any) -> Any:
    return click.option(
        "--resume",
        metavar="RUN_DIR|latest",
        default=None,
        help="Continue a run in its own folder: RUN_DIR (or one of its checkpoint folders), or "
        "`latest`, the run under save_dir that was active last. Counters, model ids, optimizer, "
        "normalizer and (when saved) the replay buffer continue. The run's saved config is used; "
        "this start's config.yaml and options override it (env and algorithm must match).",
    )(f)


def _resume(
    cfg: Config, cdir: Path, overrides: list[str], arg: str, verify: bool = True
) -> tuple[Config, Any]:
    """The config to continue with and where (a ResumePoint); with `verify`, a damaged
    checkpoint is refused here, before anything starts or connects."""
    from soulsai.training import resume
    from soulsai.training.checkpoint import read_summary, verify_checkpoint

    point = resume.find(arg, cfg.save_dir)
    cfg, changed = resume.resume_config(cfg, cdir, overrides, point)
    if verify:
        verify_checkpoint(point.checkpoint)
    summary = read_summary(point.checkpoint) or {}
    log.info(
        "resuming %s from %s: env_steps=%s model_id=%s updates=%s episodes=%s",
        point.run_dir,
        point.checkpoint.name,
        *(summary.get(k) for k in ("env_steps", "model_id", "updates", "episodes")),
    )
    for change in changed:
        log.info("resume override: %s", change)
    return cfg, point


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
@resume_option
def train(
    config_dir: Path | None,
    sets: tuple[str, ...],
    clients: int,
    redis_mode: str,
    no_progress: bool,
    resume: str | None,
    **named: Any,
) -> None:
    """Train on this machine: Redis, training node, telemetry node and N clients.

    Stops at --max-steps or when the rolling mean of the last 20 episode returns reaches
    --target-return, then writes summary.json into the run folder (exit 0 either way).
    """
    _need_server("train")
    from soulsai.local import LocalStack

    cfg, cdir, overrides = _load(config_dir, sets, **named)
    _setup_logging(rich=True)
    point = None
    if resume is not None:
        cfg, point = _resume(cfg, cdir, overrides, resume)
    _check_spaces(cfg)
    signal.signal(signal.SIGTERM, _interrupt)
    stack = LocalStack(
        cfg, cdir, overrides, clients, redis_mode, progress=not no_progress, resume=point
    )
    sys.exit(stack.run())


@cli.command()
@common_options
@click.option("--no-progress", is_flag=True, help="No live status line (for logs).")
@resume_option
def server(
    config_dir: Path | None,
    sets: tuple[str, ...],
    no_progress: bool,
    resume: str | None,
    **named: Any,
) -> None:
    """Run the training and telemetry nodes against the configured Redis until Ctrl-C.

    Clients on other machines connect with `soulsai client` and the same redis.secret.
    """
    _need_server("server")
    from soulsai.local import LocalStack

    cfg, cdir, overrides = _load(config_dir, sets, **named)
    _setup_logging(rich=True)
    point = None
    if resume is not None:
        cfg, point = _resume(cfg, cdir, overrides, resume)
    _check_spaces(cfg)
    signal.signal(signal.SIGTERM, _interrupt)
    stack = LocalStack(
        cfg,
        cdir,
        overrides,
        clients=0,
        redis_mode="external",
        progress=not no_progress,
        stop_rules=False,
        resume=point,
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
@resume_option
def node(
    role: str,
    config_dir: Path | None,
    sets: tuple[str, ...],
    run_dir: Path | None,
    resume: str | None,
    **named: Any,
) -> None:
    """Run one server node (what a container runs)."""
    _need_server(f"node {role}")
    from soulsai import run as runfolder
    from soulsai.transport import RedisTarget

    cfg, cdir, overrides = _load(config_dir, sets, **named)
    _setup_logging()
    point = None
    if resume is not None:
        cfg, point = _resume(cfg, cdir, overrides, resume, verify=role == "training")
    stop = _stop_on_signals()
    target = RedisTarget.from_config(cfg, cdir)
    if role == "training" and cfg.preset:
        log.info("preset %s applied (config.yaml and --set override it)", cfg.preset)
    if role == "training":
        from soulsai.training.node import TrainingNode

        if run_dir is None:  # else `soulsai train` or `server` made it and wrote the config
            run_dir = (
                point.run_dir
                if point
                else runfolder.make_run_dir(cfg.save_dir, cfg.algo, cfg.env.id)
            )
            runfolder.atomic_write_json(run_dir / runfolder.CONFIG_FILE, cfg.model_dump())
        resume_from = point.checkpoint if point is not None else None
        TrainingNode(cfg, target, run_dir, stop, resume=resume_from).run()
        # Its files are written and closed: skip the interpreter's teardown of torch (about
        # 0.4 s), which `soulsai train` would otherwise wait for at every stop.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    else:
        from soulsai.telemetry.node import TelemetryNode

        if run_dir is None:
            run_dir = point.run_dir if point else _announced_run_dir(cfg, target)
        TelemetryNode(cfg, target, run_dir, stop, config_dir=cdir).run()


def _announced_run_dir(cfg: Config, target: Any) -> Path:
    from soulsai.transport import TelemetryLink, open_link
    from soulsai.transport.links import wait_for

    link = open_link(TelemetryLink, target, cfg.key_prefix, wait=cfg.connect_wait)
    info = wait_for(link.run_info, 120.0)
    if not info or "run_dir" not in info:
        raise ConnectionFailed("no training node announced a run folder (start it first)")
    # A path read from Redis: this node writes into it only if it is a run folder directly
    # under its own save_dir (anyone with the password could announce any folder).
    run = Path(info["run_dir"])
    save_dir = Path(cfg.save_dir).resolve()
    if run.is_symlink() or not run.is_dir() or run.resolve().parent != save_dir:
        raise ConfigError(
            f"the run folder announced in Redis ({str(run)[:200]}) is not a folder directly "
            f"under save_dir ({save_dir}): set save_dir as the training node has it, or pass "
            "--run-dir"
        )
    return run


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
@click.option(
    "--save-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="save_dir of a `soulsai train` running from here (finds its private Redis).",
)
@click.option("--buffer", is_flag=True, help="Also save the replay buffer.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=1.0),
    default=120.0,
    show_default=True,
    help="Seconds to wait for the training node to confirm the save.",
)
@click.option("--no-wait", is_flag=True, help="Send the request and return at once.")
def quicksave(
    config_dir: Path | None,
    sets: tuple[str, ...],
    save_dir: Path | None,
    buffer: bool,
    timeout: float,
    no_wait: bool,
) -> None:
    """Ask the running training node to save into <run>/manual_save now, and wait until it has.

    Works against a `soulsai train` started from this directory (its private Redis) or
    against any server through the configured Redis and redis.secret.
    """
    from soulsai.quicksave import request_quicksave

    cfg, cdir, _ = _load(config_dir, sets, save_dir=save_dir)
    click.echo(request_quicksave(cfg, cdir, buffer, timeout=timeout, wait=not no_wait))


@cli.command()
@click.argument("run_dir", metavar="RUN_DIR")
@click.option(
    "--model",
    type=click.Choice(["best", "latest", "manual"]),
    default=None,
    help="best_model/, checkpoint/ or manual_save/ [default: best, else latest].",
)
@click.option(
    "--episodes", type=click.IntRange(1, 100000), default=10, show_default=True, help="Episodes."
)
@click.option(
    "--render",
    type=click.Choice(["rgb_array", "human"]),
    default=None,
    help="Gymnasium render mode (human opens a window; --video needs rgb_array).",
)
@click.option(
    "--video",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    metavar="DIR",
    help="Write each episode as DIR/episode-NNN.gif.",
)
@click.option("--seed", type=int, default=None, help="Seed of the first episode [config seed].")
@click.option(
    "--save-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where `latest` looks for run folders [the configured save_dir].",
)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a saved key.")
@click.option(
    "--config-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="This machine's config: the only source of env.imports and env.wrappers "
    "[default: ./config, else the packaged defaults].",
)
def evaluate(
    run_dir: str,
    model: str | None,
    episodes: int,
    render: str | None,
    video: Path | None,
    seed: int | None,
    save_dir: Path | None,
    sets: tuple[str, ...],
    config_dir: Path | None,
) -> None:
    """Play a saved agent's deterministic policy (greedy DQN, mean-action PPO) without Redis.

    RUN_DIR is a run folder, one of its checkpoint folders, or `latest`. Prints each episode's
    return and then the mean and standard deviation. The env's imports and wrappers come from
    this machine's config, never from the run folder (what it asked for is shown).
    """
    _need_server("evaluate")
    from soulsai import evaluate as ev

    if video is not None and render == "human":
        raise click.UsageError("--video needs --render rgb_array")
    local = load_config(config_dir if config_dir is not None else default_config_dir(), sets)
    if save_dir is None and run_dir == "latest":
        save_dir = Path(local.save_dir)
    folder, note = ev.locate(run_dir, model, save_dir or ".")
    if note:
        click.echo(note, err=True)
    notes: list[str] = []
    cfg = ev.checkpoint_config(folder, sets, local, notes)
    for line in notes:
        click.echo(line, err=True)
    first = cfg.seed + 10_000 if seed is None else seed  # not the seeds the clients trained on
    click.echo(f"evaluating {folder} ({cfg.algo} on {cfg.env.id}, {episodes} episodes)")

    def show(i: int, ret: float, length: int) -> None:
        click.echo(f"episode {i + 1}: return {ret:.2f}, length {length}")

    result = ev.evaluate(folder, cfg, episodes, first, render, video, on_episode=show)
    s = result.summary
    info = f"model_id {s.get('model_id')}, env_steps {s.get('env_steps')}"
    if s.get("value") is not None:
        info += f", saved at {s.get('metric', 'return')} {s['value']:.2f}"
    for path in result.videos:
        click.echo(f"video: {path}")
    click.echo(
        f"mean return {result.mean:.2f} +/- {result.std:.2f} over {episodes} episodes ({info})"
    )


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


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, metavar="RUN_DIR...")
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("compare.png"),
    show_default=True,
    help="Figure to write (.png, .pdf or .svg).",
)
@click.option(
    "--window",
    type=click.IntRange(1, 100000),
    default=20,
    show_default=True,
    help="Episodes in the moving average (the bold lines).",
)
def compare(run_dirs: tuple[str, ...], out: Path, window: int) -> None:
    """Plot the returns of several runs in one figure: against env steps and wall time.

    Each RUN_DIR is a run folder (saves/<date>_<algo>_<env>); its episodes.jsonl is read
    (nothing in it is executed), the legend names each run by its folder, algo and env.
    """
    from soulsai.compare import compare as draw_compare

    curves = draw_compare([Path(d) for d in run_dirs], out, window)
    for c in curves:
        click.echo(f"{c.label}: {len(c.returns)} episodes, {int(c.env_steps[-1])} env steps")
    click.echo(f"wrote {out}")


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

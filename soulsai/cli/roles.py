"""The commands that run roles: `train` and `server` (the whole stack), `node` (one server
node, what a container runs) and `client` (one sampling client)."""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import click

from soulsai.cli.common import (
    check_spaces,
    common_options,
    interrupt,
    load_options,
    need_server,
    resume_option,
    resume_run,
    setup_logging,
    stop_on_signals,
)
from soulsai.config import Config
from soulsai.errors import ConfigError, ConnectionFailed

log = logging.getLogger("soulsai")


def _stack_config(
    config_dir: Path | None, sets: tuple[str, ...], resume: str | None, named: dict[str, Any]
) -> tuple[Config, Path, list[str], Any]:
    """What `train` and `server` do before their stack starts: the config (and the resume
    point, if any), logging, the spaces check, and SIGTERM and SIGINT handled as Ctrl-C."""
    cfg, cdir, overrides = load_options(config_dir, sets, **named)
    setup_logging(rich=True)
    point = None
    if resume is not None:
        cfg, point = resume_run(cfg, cdir, overrides, resume)
    check_spaces(cfg)
    signal.signal(signal.SIGTERM, interrupt)
    # Ctrl-C as KeyboardInterrupt even where the parent left SIGINT ignored (a shell script's
    # background job, nohup ... &): `kill -INT` then still stops the stack in order.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return cfg, cdir, overrides, point


@click.command()
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
    need_server("train")
    from soulsai.local import LocalStack

    cfg, cdir, overrides, point = _stack_config(config_dir, sets, resume, named)
    stack = LocalStack(
        cfg, cdir, overrides, clients, redis_mode, progress=not no_progress, resume=point
    )
    sys.exit(stack.run())


@click.command()
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
    need_server("server")
    from soulsai.local import LocalStack

    cfg, cdir, overrides, point = _stack_config(config_dir, sets, resume, named)
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


@click.command()
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
    need_server(f"node {role}")
    from soulsai import run as runfolder
    from soulsai.transport import RedisTarget

    cfg, cdir, overrides = load_options(config_dir, sets, **named)
    setup_logging()
    point = None
    if resume is not None:
        cfg, point = resume_run(cfg, cdir, overrides, resume, verify=role == "training")
    stop = stop_on_signals()
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


@click.command()
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

    cfg, cdir, _ = load_options(config_dir, sets)
    setup_logging()
    stop = stop_on_signals()
    sampler = Sampler(cfg, RedisTarget.from_config(cfg, cdir), stop, client_id)
    try:
        sampler.run()
    finally:
        sampler.close()

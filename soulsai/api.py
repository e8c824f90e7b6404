"""The Python API for notebooks and scripts: `soulsai.train(...)` is `soulsai train` as a call.

The same config as the command line (config_d.yaml <- preset <- config.yaml <- options <-
overrides, each override a `key.sub=value` as with --set), the same stack (embedded Redis,
training and telemetry nodes, N clients as processes), and the run's summary as the result.
Errors are exceptions (soulsai.errors.ConfigError for a bad key or value), not exit codes.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from soulsai import run as runfolder
from soulsai.config import default_config_dir, load_config
from soulsai.config.schema import check_algo_config
from soulsai.errors import ConfigError, SoulsaiError

NEEDS = ("torch", "safetensors", "rich", "matplotlib")  # the server extra's, for the nodes


def train(
    algo: str | None = None,
    env: str | None = None,
    *,
    overrides: Sequence[str] = (),
    max_steps: int | None = None,
    target_return: float | None = None,
    clients: int = 2,
    seed: int | None = None,
    save_dir: str | Path | None = None,
    config_dir: str | Path | None = None,
    redis: Literal["auto", "embedded", "external"] = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Train on this machine until `max_steps` env steps or the rolling mean of the last 20
    returns reaches `target_return` (None: the config's), like `soulsai train`.

    Returns summary.json's content (`solved`, `env_steps`, `episodes`, `wall_seconds`,
    `best_rolling_return`, `target_return`, `stopped_by`) plus `run_dir`, the run folder.
    A Ctrl-C (KeyboardInterrupt, a notebook's stop button) shuts the stack down in order and
    returns the summary so far (`stopped_by: interrupted`). Raises ConfigError for a bad
    config or a missing server extra, SoulsaiError when a node failed (its log is named).
    """
    missing = [name for name in NEEDS if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"soulsai.train needs the server extra ({', '.join(missing)} not installed): "
            "pip install 'soulsai[server]'"
        )
    if not 0 <= clients <= 64:
        raise ConfigError(f"clients: {clients} is not within 0..64")
    named = {
        "algo": algo,
        "env.id": env,
        "save_dir": None if save_dir is None else str(save_dir),
        "seed": seed,
        "max_steps": max_steps,
        "target_return": target_return,
    }
    # JSON values, as --set reads them (a string such as an env id stays a string)
    items = [f"{key}={json.dumps(v)}" for key, v in named.items() if v is not None]
    items += [str(item) for item in overrides]
    cdir = Path(config_dir) if config_dir is not None else default_config_dir()
    cfg = load_config(cdir, items)
    check_algo_config(cfg)

    from soulsai.local import LocalStack

    stack = LocalStack(cfg, cdir, items, clients, redis, progress=progress)
    code = stack.run()
    run_dir = stack.run_dir
    summary_file = None if run_dir is None else run_dir / runfolder.SUMMARY_FILE
    if code == 1 or summary_file is None or not summary_file.is_file():
        where = f"; the logs are in {run_dir / runfolder.LOG_DIR}" if run_dir else ""
        raise SoulsaiError(f"training stopped with an error{where}")
    summary = json.loads(summary_file.read_text())
    return {**summary, "run_dir": str(run_dir)}

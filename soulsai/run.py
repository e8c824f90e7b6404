"""The run folder: saves/<YYYY-MM-DD_HH-MM-SS>_<algo>_<env>/ and atomic writes into it."""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.json"
EPISODES_FILE = "episodes.jsonl"
FIGURE_FILE = "telemetry.png"
SUMMARY_FILE = "summary.json"
CHECKPOINT_DIR = "checkpoint"
BEST_DIR = "best_model"
MANUAL_DIR = "manual_save"
LOG_DIR = "logs"


def make_run_dir(save_dir: Path | str, algo: str, env_id: str) -> Path:
    """A fresh, uniquely named run folder under `save_dir`."""
    safe_env = re.sub(r"[^A-Za-z0-9_.\-]", "-", env_id)
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    base = Path(save_dir) / f"{stamp}_{algo}_{safe_env}"
    path, i = base, 1
    while True:
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            i += 1
            path = base.with_name(f"{base.name}_{i}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_summary(
    run_dir: Path,
    *,
    solved: bool,
    env_steps: int,
    episodes: int,
    wall_seconds: float,
    best_rolling_return: float | None,
    target_return: float | None,
    **extra: Any,
) -> None:
    atomic_write_json(
        run_dir / SUMMARY_FILE,
        {
            "solved": bool(solved),
            "env_steps": int(env_steps),
            "episodes": int(episodes),
            "wall_seconds": round(float(wall_seconds), 3),
            "best_rolling_return": best_rolling_return,
            "target_return": target_return,
            **extra,
        },
    )

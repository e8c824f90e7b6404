"""Helpers shared by the benchmarks: machine line, a private Redis, node processes."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def add_peer_set(ap: argparse.ArgumentParser) -> None:
    """The `--peer-set KEY=VALUE` option (repeatable, into `peer_sets`): one of the SB3 peer's
    hyperparameters overridden, as bench/sb3_run.py --hp."""
    ap.add_argument(
        "--peer-set",
        dest="peer_sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one of the peer's hyperparameters (bench/sb3_run.py --hp)",
    )


def machine_line() -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?", "?", "?")
    return (
        f"machine: {platform.node()} | {os.cpu_count()} cores | load "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} | python {platform.python_version()} | "
        f"{time.strftime('%Y-%m-%d %H:%M')}"
    )


def soulsai_proc(args: list[str], password: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "SOULSAI_REDIS_PASSWORD": password, "PYTHONUNBUFFERED": "1"}
    out = open(log, "wb")  # noqa: SIM115 - closed by the child's exit
    return subprocess.Popen(
        [sys.executable, "-m", "soulsai", *args], stdout=out, stderr=subprocess.STDOUT, env=env
    )


def stop(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def node_sets(port: int, prefix: str, save_dir: Path, *extra: str) -> list[str]:
    sets = [
        "redis_address=127.0.0.1",
        f"redis_port={port}",
        f"key_prefix={prefix}",
        f"save_dir={save_dir}",
        "training.metrics_port=0",
        "telemetry.http_port=0",
        "checkpoint.every=0",
        *extra,
    ]
    out = ["--config-dir", str(ROOT / "config")]
    for s in sets:
        out += ["--set", s]
    return out

"""Two `soulsai train` started at the same moment with the same ports: each checks that its
ports are free before its nodes bind them (seconds later: a node imports torch first), so both
checks pass and one node finds its port taken. That run must go on with the node on a new port
instead of stopping with an error."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from soulsai.processes import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def train_cmd(tmp_path, config_dir, name: str, metrics: int, http: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "soulsai",
        "train",
        "--algo",
        "dqn",
        "--config-dir",
        str(config_dir),
        "--save-dir",
        str(tmp_path / name),
        "--max-steps",
        "3000",
        "--clients",
        "1",
        "--redis",
        "embedded",
        "--no-progress",
        "--set",
        "target_return=null",
        "--set",
        f"training.metrics_port={metrics}",
        "--set",
        f"telemetry.http_port={http}",
    ]


def test_two_runs_started_together_on_the_same_ports_both_finish(tmp_path, config_dir):
    metrics, http = free_port(), free_port()
    procs = [
        subprocess.Popen(
            train_cmd(tmp_path, config_dir, name, metrics, http),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in ("a", "b")
    ]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]
        assert "stopped: max_steps" in out, out[-3000:]
    # Each port ends with one run: the other run's node moved, at the check (the port was in
    # use by then) or after its bind failed (the race this test makes likely).
    text = "\n".join(outs)
    for setting in (r"training\.metrics_port", r"telemetry\.http_port"):
        moved = re.findall(setting + r"(?: \d+ is in use; using |: the port was taken)", text)
        assert len(moved) == 1, text[-3000:]

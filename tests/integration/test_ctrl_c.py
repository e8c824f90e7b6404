"""Ctrl-C on `soulsai train`: an orderly stop (exit 130) that leaves no process behind, also
when it was started as a shell script's background job, which starts with SIGINT ignored."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.conftest import wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
]


def ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # what `cmd &` in a script gives a child


def test_sigint_stops_train_and_its_children_even_when_started_with_sigint_ignored(
    tmp_path: Path,
) -> None:
    args = [
        sys.executable, "-m", "soulsai", "train", "--algo", "dqn", "--env", "CartPole-v1",
        "--save-dir", str(tmp_path / "saves"), "--clients", "1", "--max-steps", "0",
        "--target-return", "1e9", "--no-progress", "--redis", "embedded",
        "--set", "training.metrics_port=0", "--set", "telemetry.http_port=0",
    ]  # fmt: skip
    log = tmp_path / "train.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, preexec_fn=ignore_sigint
        )
    family: list[psutil.Process] = []
    try:
        me = psutil.Process(proc.pid)

        def stack() -> list[psutil.Process] | None:
            kids = me.children(recursive=True)  # redis, 2 nodes, the client
            return kids if len(kids) >= 4 else None

        family = wait_until(stack, 120, "the training stack's processes")  # type: ignore[assignment]

        def playing() -> bool:  # the whole stack is up: episodes reach the run folder
            return any(f.stat().st_size for f in (tmp_path / "saves").glob("*/episodes.jsonl"))

        wait_until(playing, 120, "episodes in the run folder")
        proc.send_signal(signal.SIGINT)
        code = proc.wait(90)
    finally:
        if proc.poll() is None:  # failed: leave nothing behind either way
            proc.kill()
            proc.wait()
            for p in family:
                if p.is_running():
                    p.kill()
    assert code == 130, log.read_text()[-2000:]
    left = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, [p.cmdline() for p in left]

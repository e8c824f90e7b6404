"""Issue 19's DQN options end to end: `soulsai train` (embedded Redis, 2 clients) on CartPole-v1
with dueling, noisy, quantile (QR-DQN) and prioritized replay all on exits 0 with updates done,
records noisy exploration in its checkpoint, resumes with its replay buffer and priorities, and
its checkpoint evaluates (greedy on the noisy head's means)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ALL_ON = [
    "--set", "dqn.dueling=true", "--set", "dqn.noisy=true", "--set", "dqn.n_quantiles=8",
    "--set", "dqn.prioritized=true", "--set", "target_return=null",
    "--set", "dqn.learning_starts=300", "--set", "dqn.batch_size=32",
    "--set", "dqn.hidden=[32,32]", "--set", "checkpoint.save_buffer=true",
    "--set", "training.metrics_port=0", "--set", "telemetry.http_port=0",
]  # fmt: skip


def soulsai(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "soulsai", *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def train(tmp_path: Path, cfg: Path, save: Path, steps: int, *extra: str):  # noqa: ANN201
    args = ["train", "--config-dir", str(cfg), "--save-dir", str(save), "--no-progress"]
    args += ["--redis", "embedded", "--clients", "2", "--max-steps", str(steps), "--algo", "dqn"]
    return soulsai(*args, "--env", "CartPole-v1", *ALL_ON, *extra, cwd=tmp_path)


def test_train_with_every_dqn_option_on_then_resume_and_evaluate(tmp_path, config_dir):
    save = tmp_path / "saves"
    out = train(tmp_path, config_dir, save, 2500)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (run,) = [p for p in save.iterdir() if p.is_dir()]
    first = json.loads((run / "checkpoint" / "state.json").read_text())
    assert first["env_steps"] >= 2500 and first["updates"] > 0 and first["buffer_saved"]
    assert first["exploration"]["mode"] == "noisy"
    config = json.loads((run / "config.json").read_text())
    assert config["dqn"]["noisy"] and config["dqn"]["prioritized"]

    more = first["env_steps"] + 1500  # the first run may overshoot its limit
    out = train(tmp_path, config_dir, save, more, "--resume", "latest")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    log = (run / "logs" / "training.log").read_text()
    n = first["buffer_size"]
    assert f"replay buffer restored with {n} transitions and their priorities" in log
    second = json.loads((run / "checkpoint" / "state.json").read_text())
    assert second["env_steps"] >= more and second["updates"] > first["updates"]

    ev = soulsai("evaluate", str(run), "--config-dir", str(config_dir), "--model", "latest",
                 "--episodes", "1", cwd=tmp_path)  # fmt: skip
    assert ev.returncode == 0, ev.stdout + ev.stderr
    assert "over 1 episodes" in ev.stdout

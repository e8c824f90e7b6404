"""algo r2d2 end to end: `soulsai train --algo r2d2` on soulsai/CartPoleNoVel-v1 (embedded
Redis, two clients) learns from chunks, checkpoints its sequence replay, resumes with it, and
`soulsai evaluate` plays the recurrent greedy policy."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import train_run

pytestmark = pytest.mark.integration


@pytest.mark.slow
def test_soulsai_train_r2d2_on_cartpole_without_velocities_resume_and_evaluate(
    tmp_path, config_dir
):
    (config_dir / "config.yaml").write_text(
        "env:\n  id: soulsai/CartPoleNoVel-v1\n  imports: [soulsai.envs.memory]\n"
    )
    sets = ["training.metrics_port=0", "telemetry.http_port=0", "target_return=null"]
    sets += ["dqn.hidden=[16]", "r2d2.core_size=16", "r2d2.chunk=8", "r2d2.burn_in=4"]
    sets += ["dqn.batch_size=64", "dqn.learning_starts=300", "dqn.replay_ratio=4"]
    sets += ["checkpoint.save_buffer=true", "dqn.prioritized=true"]
    run = train_run(tmp_path, config_dir, "r2d2", 3000, sets)
    config = json.loads((run / "config.json").read_text())
    assert config["algo"] == "r2d2" and config["r2d2"]["chunk"] == 8
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["updates"] > 0 and state["buffer_saved"] and state["buffer_size"] > 0, state
    summary = json.loads((run / "summary.json").read_text())
    assert summary["episodes"] > 0 and summary["env_steps"] >= 3000, summary
    log = (run / "logs" / "training.log").read_text()
    assert "rejected experience" not in log and "dropped" not in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]

    cmd = [sys.executable, "-m", "soulsai", "train", "--algo", "r2d2", "--config-dir",
           str(config_dir), "--save-dir", str(tmp_path / "saves"), "--resume", str(run),
           "--max-steps", str(state["env_steps"] + 1500), "--clients", "2", "--redis",
           "embedded", "--no-progress"]  # fmt: skip
    cmd += [x for s in sets for x in ("--set", s)]
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    log = (run / "logs" / "training.log").read_text()
    assert f"sequence replay restored with {state['buffer_size']} chunks and their" in log
    resumed = json.loads((run / "checkpoint" / "state.json").read_text())
    assert resumed["updates"] > state["updates"] and resumed["model_id"] > state["model_id"]

    ev = subprocess.run(
        [sys.executable, "-m", "soulsai", "evaluate", str(run), "--config-dir",
         str(config_dir), "--model", "latest", "--episodes", "2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert ev.returncode == 0, ev.stdout + ev.stderr
    assert "over 2 episodes" in ev.stdout

"""Recurrent PPO end to end: `soulsai train --algo ppo --set ppo.recurrent=lstm` on
soulsai/CartPoleNoVel-v1 (embedded Redis, two clients) trains, checkpoints its recurrent
settings, and `soulsai evaluate` plays the checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import train_run

pytestmark = pytest.mark.integration


@pytest.mark.slow
def test_soulsai_train_recurrent_ppo_on_cartpole_without_velocities_then_evaluate(
    tmp_path, config_dir
):
    (config_dir / "config.yaml").write_text(
        "env:\n  id: soulsai/CartPoleNoVel-v1\n  imports: [soulsai.envs.memory]\n"
    )
    sets = ["training.metrics_port=0", "telemetry.http_port=0", "target_return=null"]
    sets += ["ppo.recurrent=lstm", "ppo.recurrent_size=16", "ppo.hidden=[16]"]
    sets += ["ppo.n_steps_total=512", "ppo.fragment_length=32", "ppo.update_epochs=2"]
    sets += ["env.num_envs=4"]
    run = train_run(tmp_path, config_dir, "ppo", 3000, sets)
    config = json.loads((run / "config.json").read_text())
    assert (config["ppo"]["recurrent"], config["ppo"]["recurrent_size"]) == ("lstm", 16)
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["updates"] > 0 and state["iterations"] > 0, state
    summary = json.loads((run / "summary.json").read_text())
    assert summary["episodes"] > 0 and summary["env_steps"] >= 3000, summary
    log = (run / "logs" / "training.log").read_text()
    assert "rejected experience" not in log and "Traceback" not in log, log[-3000:]
    ev = subprocess.run(
        [sys.executable, "-m", "soulsai", "evaluate", str(run), "--config-dir",
         str(config_dir), "--model", "latest", "--episodes", "2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert ev.returncode == 0, ev.stdout + ev.stderr
    assert "over 2 episodes" in ev.stdout

"""PPO on the SoulsGym-shaped env through a real Redis: a training node's intake takes a real
client's masked Dict fragments and rejects (and counts) bad mask bits; `soulsai train --algo
ppo` on soulsai/IudexLike-v0 runs with masks and without, and `soulsai evaluate` plays the
masked Dict-observation policy it saved."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pytest

from soulsai.client.envs import LocalVectorEnv
from soulsai.client.ppo_actor import PPOActor
from soulsai.model.masks import unpack_mask
from soulsai.training.node import TrainingNode
from soulsai.transport.envelope import encode_experience
from tests.conftest import train_run

pytestmark = pytest.mark.integration
IUDEX = ["env.id=soulsai/IudexLike-v0", "env.imports=[soulsai.envs.soulslike]"]  # in-process


def _fragments(cfg, node: TrainingNode, count: int) -> list[dict[str, np.ndarray]]:
    """Fragments of a real PPOActor acting with the node's model 0 on a real IudexLike."""
    env = LocalVectorEnv(cfg.env)
    actor = PPOActor(
        cfg, env.single_observation_space, env.single_action_space, 0, np.random.default_rng(0)
    )
    actor.set_model(0, actor.make_policy(node.learner.policy_state()), {})
    env.reset(actor.rows, seed=0)
    out: list[dict[str, np.ndarray]] = []
    step = 0
    while len(out) < count:
        env.step(actor.act(actor.rows.obs_rows[0], step), actor.rows)
        out += [fields for _, fields in actor.observe()]
        step += 1
    env.close()
    return out


def test_bad_mask_bits_are_rejected_and_counted_by_a_ppo_node(redis_server, node_config, tmp_path):
    cfg = node_config("algo=ppo", *IUDEX, "env.action_mask=action_mask", "ppo.fragment_length=16")
    node = TrainingNode(cfg, redis_server.target, tmp_path / "run", threading.Event())
    try:
        good, padded, empty, outside = _fragments(cfg, node, 4)
        assert set(good) >= {"mask", "obs.boss_animation", "obs.player_hp"}
        assert good["mask"].shape == (16, 3)  # 20 actions in 3 bytes, 4 padding bits
        padded["mask"][5, 2] |= 1  # a padding bit set
        empty["mask"][3] = 0  # a row without a valid action
        valid = unpack_mask(outside["mask"], 20)
        row = int(np.flatnonzero(~valid.all(axis=1))[0])  # a row with an invalid action
        outside["action"][row] = int(np.flatnonzero(~valid[row])[0])  # which is then taken
        intake = node.intake
        for fields in (good, padded, empty, outside):
            intake.handle(encode_experience("c", 0, fields))
        assert intake.rejected["bad_mask"] == 3 and node.accepted == 16
        assert len(node.driver.rollout) == 16  # only the good fragment was kept
        (kept,) = node.driver.rollout.take()
        assert kept["mask"].dtype == bool and kept["mask"].shape == (16, 20)
        assert kept["mask"][np.arange(16), kept["action"]].all()
    finally:
        node.link.close()


@pytest.mark.slow
@pytest.mark.parametrize("masks", [True, False])
def test_soulsai_train_ppo_on_iudexlike_with_and_without_masks(tmp_path, config_dir, masks):
    """Masked: the run folder's latest checkpoint then plays under soulsai evaluate."""
    (config_dir / "config.yaml").write_text(
        "env:\n  id: soulsai/IudexLike-v0\n  imports: [soulsai.envs.soulslike]\n"
    )
    sets = ["training.metrics_port=0", "telemetry.http_port=0", "target_return=null"]
    sets += ["ppo.n_steps_total=512", "ppo.update_epochs=2", "ppo.hidden=[32]"]
    if masks:
        sets.append("env.action_mask=action_mask")
    run = train_run(tmp_path, config_dir, "ppo", 2500, sets)
    config = json.loads((run / "config.json").read_text())
    assert config["env"]["action_mask"] == ("action_mask" if masks else None)
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["updates"] > 0 and state["iterations"] > 0, state
    summary = json.loads((run / "summary.json").read_text())
    assert summary["episodes"] > 0 and summary["env_steps"] >= 2500, summary
    lines = (run / "episodes.jsonl").read_text().splitlines()
    assert len(lines) == summary["episodes"]
    log = (run / "logs" / "training.log").read_text()
    assert "bad_mask" not in log and "Traceback" not in log, log[-3000:]
    if masks:
        ev = subprocess.run(
            [sys.executable, "-m", "soulsai", "evaluate", str(run), "--config-dir",
             str(config_dir), "--model", "latest", "--episodes", "1"],
            cwd=tmp_path, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert ev.returncode == 0, ev.stdout + ev.stderr
        assert "over 1 episodes" in ev.stdout

"""DQN on the SoulsGym-shaped fight end to end (issue 17), with a real Redis and real processes.

- `soulsai train` (2 clients, embedded Redis) on soulsai/IudexLike-v0 with env.action_mask, no
  FlattenObservation: exit 0, updates done, episodes recorded; resumed from its checkpoint (the
  replay buffer's leaves and mask bits) and evaluated; the same env without the mask trains too;
- a real training node's intake rejects and counts hostile per-leaf values and bad mask bits;
- an unsupported observation space is one line and exit 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from soulsai.model.masks import pack_mask
from soulsai.model.obs import env_layout, obs_leaves
from soulsai.model.obs_wire import to_fields
from soulsai.training.node import TrainingNode
from soulsai.transport.envelope import encode_experience

pytestmark = pytest.mark.integration

PORTS_OFF = ["--set", "training.metrics_port=0", "--set", "telemetry.http_port=0"]
IUDEX_YAML = """env:
  id: soulsai/IudexLike-v0
  imports: [soulsai.envs.soulslike]
"""
FAST = [
    "--set", "target_return=null", "--set", "dqn.learning_starts=300",
    "--set", "dqn.batch_size=32", "--set", "dqn.eps_decay_steps=2000",
    "--set", "checkpoint.save_buffer=true",
]  # fmt: skip


def soulsai(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "soulsai", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def state_json(folder: Path) -> dict:
    return json.loads((folder / "state.json").read_text())


@pytest.fixture
def iudex_dir(config_dir: Path) -> Path:
    (config_dir / "config.yaml").write_text(IUDEX_YAML)
    return config_dir


def train(tmp_path: Path, cfg: Path, save: Path, steps: int, *extra: str):  # noqa: ANN201
    args = ["train", "--config-dir", str(cfg), "--save-dir", str(save), "--no-progress"]
    args += ["--redis", "embedded", "--clients", "2", "--max-steps", str(steps)]
    return soulsai(*args, *PORTS_OFF, *FAST, *extra, cwd=tmp_path)


def test_train_dqn_on_iudexlike_with_masks_then_resume_and_evaluate(tmp_path, iudex_dir):
    save = tmp_path / "saves"
    out = train(tmp_path, iudex_dir, save, 3000, "--set", "env.action_mask=action_mask")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (run,) = [p for p in save.iterdir() if p.is_dir()]
    first = state_json(run / "checkpoint")
    assert first["env_steps"] >= 3000 and first["updates"] > 0 and first["buffer_saved"]
    assert first["episodes"] > 0 and (run / "episodes.jsonl").read_text().strip()

    # The first run may overshoot its limit (clients step on until the stop reaches them), so
    # the resumed run's limit counts from where the first one actually ended.
    more = first["env_steps"] + 1500
    out = train(tmp_path, iudex_dir, save, more, "--resume", "latest")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    log = (run / "logs" / "training.log").read_text()
    assert f"replay buffer restored with {first['buffer_size']} transitions" in log
    second = state_json(run / "checkpoint")
    assert second["env_steps"] >= more and second["updates"] > first["updates"]

    ev = soulsai("evaluate", str(run), "--config-dir", str(iudex_dir), "--model", "latest",
                 "--episodes", "1", cwd=tmp_path)  # fmt: skip
    assert ev.returncode == 0, ev.stdout + ev.stderr
    assert "over 1 episodes" in ev.stdout


def test_train_dqn_on_iudexlike_without_mask_or_flatten(tmp_path, iudex_dir):
    save = tmp_path / "saves"
    out = train(tmp_path, iudex_dir, save, 2000)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (run,) = [p for p in save.iterdir() if p.is_dir()]
    state = state_json(run / "checkpoint")
    assert state["env_steps"] >= 2000 and state["updates"] > 0 and state["episodes"] > 0


def test_an_unsupported_observation_space_is_one_line_and_exit_2(tmp_path, config_dir):
    (tmp_path / "w1_text_env.py").write_text(
        "import gymnasium as gym\n"
        "class TextEnv(gym.Env):\n"
        "    observation_space = gym.spaces.Text(5)\n"
        "    action_space = gym.spaces.Discrete(2)\n"
        "gym.register('W1Text-v0', entry_point=TextEnv)\n"
    )
    (config_dir / "config.yaml").write_text("env:\n  id: W1Text-v0\n  imports: [w1_text_env]\n")
    out = subprocess.run(
        [sys.executable, "-m", "soulsai", "train", "--config-dir", str(config_dir),
         "--no-progress", "--redis", "embedded", "--max-steps", "100"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )  # fmt: skip
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Text is not supported" in lines[0], out.stderr
    assert "Box, Discrete, MultiDiscrete, MultiBinary" in lines[0]


def _transitions(layout, n: int) -> dict[str, np.ndarray]:
    """`n` honest IudexLike transitions (1-step) as the client sends them, masks included."""
    env = gym.make("soulsai/IudexLike-v0")
    rng = np.random.default_rng(0)
    obs, info = env.reset(seed=0)
    rows = []
    for _ in range(n):
        a = int(rng.choice(np.flatnonzero(info["action_mask"])))
        nxt, r, term, trunc, info = env.step(a)
        rows.append((obs_leaves(layout, obs, batched=False), a, r, obs_leaves(layout, nxt, False),
                     term, info["action_mask"]))  # fmt: skip
        obs = nxt
        if term or trunc:
            obs, info = env.reset()
    f = {
        **to_fields(layout, {k: np.concatenate([x[0][k] for x in rows]) for k in rows[0][0]}),
        "action": np.array([x[1] for x in rows], np.int64),
        "reward": np.array([x[2] for x in rows], np.float32),
        **to_fields(
            layout, {k: np.concatenate([x[3][k] for x in rows]) for k in rows[0][3]}, "next_obs"
        ),
        "terminated": np.array([x[4] for x in rows], np.uint8),
        "steps": np.ones(n, np.uint8),
        "next_mask": pack_mask(np.stack([x[5] for x in rows])),
    }
    return f


def test_node_intake_rejects_and_counts_hostile_leaves_and_bad_mask_bits(
    node_config, redis_server, tmp_path
):
    cfg = node_config(
        "env.id=soulsai/IudexLike-v0", 'env.imports=["soulsai.envs.soulslike"]',
        "env.action_mask=action_mask", "algo=dqn",
    )  # fmt: skip
    node = TrainingNode(cfg, redis_server.target, tmp_path / "run", threading.Event())
    try:
        layout = env_layout(cfg.env, gym.make("soulsai/IudexLike-v0").observation_space)
        good = _transitions(layout, 8)

        def envelope(**changes: np.ndarray) -> bytes:
            return encode_experience("w1-test", 0, {**good, **changes})

        pad = good["next_mask"].copy()
        pad[:, -1] |= 1  # 20 actions in 3 bytes: the last 4 bits are padding
        empty = good["next_mask"].copy()
        empty[2] = 0  # no valid action after a step that did not terminate
        anim = good["obs.player_animation"].copy()
        anim[0] = 50  # Discrete(51, start=-1): 49 is the highest
        hostile = [
            envelope(**{"obs.player_animation": anim}),
            envelope(**{"next_obs.phase": np.zeros(8, np.int8)}),  # Discrete(2, start=1)
            envelope(**{"obs.boss_hp": good["obs.boss_hp"].astype(np.float64)}),
            envelope(**{"obs.player_hp": np.full((8, 1), np.nan, np.float32)}),
            envelope(next_mask=pad),
            envelope(next_mask=empty),
        ]
        assert node.intake.handle_many([envelope(), *hostile]) == 3  # the last two pass decode
        rejected = node.intake.rejected
        assert rejected["out_of_range"] == 2 and rejected["bad_dtype"] == 1
        assert rejected["non_finite"] == 1
        assert rejected["bad_mask"] == 8 + 1  # transitions: all of `pad`, one of `empty`
        assert node.accepted == 8 + 7 and len(node.driver.buffer) == 15
    finally:
        node.link.close()

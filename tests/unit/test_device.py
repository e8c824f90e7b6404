"""The learner's device path for image batches: the replay hands frames over as uint8 (moved
as such, scaled by the CNN on the device), `to_device` leaves CPU batches alone, and a DQN
update on frames runs with training.device cpu. The CUDA path (pinned memory, one copy per
update) is checked and timed by bench/learner_device.py where a GPU is present: a test that
needs one would skip here, and CI counts a skip as a failure."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces as S

from soulsai.config import load_config
from soulsai.model.obs import env_layout
from soulsai.training.algorithms.dqn import DQNLearner
from soulsai.training.device import to_device
from soulsai.training.replay import ReplayBuffer

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
FRAMES = S.Box(0, 255, (36, 40, 2), np.uint8)


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    d = tmp_path_factory.mktemp("cfg")
    shutil.copy(ROOT / "config" / "config_d.yaml", d / "config_d.yaml")
    return load_config(d, ["dqn.hidden=[32]", "env.image_features=32", "dqn.batch_size=8"])


def filled_replay(layout, n: int = 20) -> ReplayBuffer:
    rng = np.random.default_rng(0)
    buffer = ReplayBuffer(64, seed=0, layout=layout)
    frames = lambda: {"": rng.integers(0, 256, (n, *FRAMES.shape), dtype=np.uint8)}  # noqa: E731
    buffer.add_batch(
        frames(), rng.integers(0, 3, n), rng.random(n, np.float32), frames(), np.ones(n, np.float32)
    )
    return buffer


def test_replay_hands_frames_over_as_uint8_and_a_cpu_update_runs(cfg) -> None:
    layout = env_layout(cfg.env, FRAMES)
    batch = filled_replay(layout).sample(8)
    assert batch.obs[""].dtype == torch.uint8 and batch.next_obs[""].dtype == torch.uint8
    moved = to_device(batch.obs, "cpu")
    assert moved[""] is batch.obs[""]  # the CPU learner copies nothing
    learner = DQNLearner(cfg.dqn, layout, 3, seed=0, device="cpu")
    before = [p.clone() for p in learner.online.encoder.parameters()]
    info = learner.update(batch)
    after = list(learner.online.encoder.parameters())
    assert np.isfinite(info["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))  # CNN learned

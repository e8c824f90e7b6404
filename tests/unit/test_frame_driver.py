"""The DQN driver with stacked frames (env.atari.frame_stack): frame rows in, updates on the
rebuilt uint8 stacks, the frame store through a real checkpoint, an older checkpoint (stacked
observations in a plain replay buffer) still resumes, and options it cannot serve refused."""

from __future__ import annotations

import logging
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from soulsai.config import load_config
from soulsai.config.schema import AtariConfig
from soulsai.errors import ConfigError
from soulsai.training.algorithms.dqn_driver import DQNDriver
from soulsai.training.checkpoint import load_checkpoint, save_checkpoint
from soulsai.training.frame_replay import FrameReplay
from tests.data.driver_host import dqn_host
from tests.unit.test_frame_wire import FRAME, Frames, K, config, run

ROOT = Path(__file__).resolve().parents[2]
OBS = gym.spaces.Box(0, 255, (K, *FRAME), np.uint8)
ACT = gym.spaces.Discrete(3)


def make_driver(*sets: str, frame_stack: int = K) -> DQNDriver:
    cfg = load_config(
        ROOT / "config",
        ["algo=dqn", "dqn.throttle=false", "dqn.learning_starts=0", "dqn.batch_size=16",
         "dqn.buffer_size=500", "dqn.replay_ratio=4", "dqn.hidden=[8]", "dqn.n_step=3",
         "dqn.gamma=0.9", "env.image_encoder=flatten", "dqn.update_samples=1000000", *sets],
    )  # fmt: skip
    cfg.env.atari = AtariConfig(frame_stack=frame_stack)
    return DQNDriver(dqn_host(cfg), OBS, ACT)


def frame_rows(steps: int = 200, seed: int = 0) -> list[dict[str, np.ndarray]]:
    envs = [gym.wrappers.FrameStackObservation(Frames(seed + s), K) for s in range(2)]
    messages, _ = run(config(), envs, steps, seed)
    return [f for _, f in messages]


def one_client(f: dict[str, np.ndarray]) -> np.ndarray:
    """Every row of `f` from the same client."""
    return np.zeros(len(next(iter(f.values()))), np.int64)


def fed(n_messages: int | None = None) -> DQNDriver:
    driver = make_driver()
    for f in frame_rows()[:n_messages]:
        driver.accept_rows(f, one_client(f))
        driver.step()
    return driver


def test_frame_rows_fill_the_frame_store_and_updates_run_on_uint8_stacks() -> None:
    driver = fed()
    assert isinstance(driver.buffer, FrameReplay)
    assert "frame" in driver.spec.fields and "obs" not in driver.spec.fields
    assert driver.host.accepted > 300 and len(driver.buffer) > 300
    assert driver.learner.updates > 0 and np.isfinite(driver.last_info["loss"])
    batch = driver.buffer.sample(4)
    assert tuple(batch.obs.shape) == (4, K, *FRAME) and str(batch.obs.dtype) == "torch.uint8"


def test_the_frame_store_goes_through_a_real_checkpoint(tmp_path: Path) -> None:
    driver = fed()
    parts, counters = driver.checkpoint(True)
    save_checkpoint(tmp_path / "ck", {"learner": driver.learner.state_dict(), **parts}, counters)
    state, summary = load_checkpoint(tmp_path / "ck")
    back = make_driver()
    back.restore(state, summary)
    a, b = driver.buffer, back.buffer
    assert isinstance(a, FrameReplay) and isinstance(b, FrameReplay)
    ra, oa, na = a.complete()
    rb, ob, nb = b.complete()
    np.testing.assert_array_equal(ra, rb)
    np.testing.assert_array_equal(a.stacks(oa), b.stacks(ob))
    np.testing.assert_array_equal(a.stacks(na), b.stacks(nb))
    np.testing.assert_array_equal(a.sample(8).next_obs.numpy(), b.sample(8).next_obs.numpy())


def test_a_checkpoint_from_before_the_frame_store_still_resumes(tmp_path: Path, caplog) -> None:
    old = make_driver(frame_stack=1)  # stacked observations in a plain replay buffer
    assert not isinstance(old.buffer, FrameReplay)
    n = 20
    old.accept_rows(
        {
            "obs": np.zeros((n, K, *FRAME), np.uint8),
            "action": np.zeros(n, np.int64),
            "reward": np.zeros(n, np.float32),
            "next_obs": np.zeros((n, K, *FRAME), np.uint8),
            "terminated": np.zeros(n, np.uint8),
            "steps": np.full(n, 3, np.uint8),
        },
        np.zeros(n, np.int64),
    )
    parts, counters = old.checkpoint(True)
    save_checkpoint(tmp_path / "ck", {"learner": old.learner.state_dict(), **parts}, counters)
    state, summary = load_checkpoint(tmp_path / "ck")
    new = make_driver()
    with caplog.at_level(logging.WARNING):
        new.restore(state, summary)
    assert len(new.buffer) == 0 and "before the frame store" in caplog.text
    for f in frame_rows(60):
        new.accept_rows(f, one_client(f))
    assert len(new.buffer) > 0


def test_hostile_frame_rows_never_break_the_store() -> None:
    driver = make_driver()
    rows = frame_rows(120)
    rng = np.random.default_rng(1)
    for f in rows:
        f = {k: v.copy() for k, v in f.items()}
        f["seq"] = rng.permutation(f["seq"])  # scrambled links
        f["flags"] = rng.integers(0, 4, len(f["flags"])).astype(np.uint8)
        f["stream"][: len(f["stream"]) // 2] = 7  # a stream shared with someone else
        driver.accept_rows(f, one_client(f))
    if len(driver.buffer):
        driver.buffer.sample(8)


@pytest.mark.parametrize("key", ["dqn.prioritized", "dqn.normalize_obs"])
def test_options_the_frame_store_cannot_serve_are_config_errors(key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        make_driver(f"{key}=true")


def test_a_store_of_only_broken_links_pauses_learning_instead_of_failing() -> None:
    """Rows that never start an episode nor continue one: every transition is linked to its
    next frame but no stack rebuilds. The learner skips (and the store unlinks them)."""
    driver = make_driver()
    n = 64
    pair = np.arange(2 * n) // 2
    driver.accept_rows(
        {
            "frame": np.zeros((2 * n, *FRAME), np.uint8),
            "flags": np.tile(np.array([0, 2], np.uint8), n),  # a row and a final frame
            "stream": 1000 + pair,
            "seq": np.tile(np.array([5, 6]), n),
            "action": np.zeros(2 * n, np.int64),
            "reward": np.zeros(2 * n, np.float32),
            "terminated": np.zeros(2 * n, np.uint8),
            "steps": np.tile(np.array([1, 0], np.uint8), n),
        },
        np.zeros(2 * n, np.int64),
    )
    assert len(driver.buffer) == n and driver.learning()
    driver.step()
    assert driver.learner.updates == 0 and len(driver.buffer) == 0 and not driver.learning()

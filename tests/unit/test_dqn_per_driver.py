"""Prioritized replay inside the DQN driver: the sampler follows every accepted batch, an update
changes the sampled rows' priorities, and the priorities, tree, max priority and beta clock go
through the driver's checkpoint parts (saved and loaded as a real checkpoint) bit-exactly; a
checkpoint without them (saved before prioritized replay, or without the buffer) still resumes.

The host is a small in-process stand-in for the node shell (no Redis: `throttle` is off, so
the driver never touches the link).
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from soulsai.config import load_config
from soulsai.errors import CheckpointError
from soulsai.training.algorithms.dqn_driver import DQNDriver
from soulsai.training.algorithms.dqn_replay import still_there
from soulsai.training.checkpoint import load_checkpoint, save_checkpoint
from tests.data.driver_host import dqn_host

ROOT = Path(__file__).resolve().parents[2]
OBS = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
ACT = gym.spaces.Discrete(2)


def make_driver(*sets: str) -> DQNDriver:
    cfg = load_config(
        ROOT / "config",
        ["algo=dqn", "dqn.prioritized=true", "dqn.throttle=false", "dqn.learning_starts=0",
         "dqn.batch_size=16", "dqn.buffer_size=100", "dqn.replay_ratio=16", "dqn.hidden=[8]",
         "dqn.update_samples=1000000", "max_steps=1000", *sets],
    )  # fmt: skip
    return DQNDriver(dqn_host(cfg), OBS, ACT)


ONE_CLIENT = np.zeros(1000, np.int64)  # every row from the same client


def rows(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "obs": rng.normal(size=(n, 4)).astype(np.float32),
        "action": rng.integers(0, 2, n),
        "reward": rng.normal(size=n).astype(np.float32),
        "next_obs": rng.normal(size=(n, 4)).astype(np.float32),
        "steps": np.full(n, 3, np.int64),
        "terminated": (rng.random(n) < 0.1).astype(np.uint8),
    }


def fed(*sets: str, n: int = 130) -> DQNDriver:
    """A driver that took `n` transitions (the ring wrapped once) and did some updates."""
    driver = make_driver(*sets)
    for i in range(n // 10):
        driver.accept_rows(rows(10, i), ONE_CLIENT[:10])
        driver.step()
    return driver


def test_sampler_follows_the_ring_and_an_update_changes_priorities() -> None:
    driver = make_driver()
    driver.accept_rows(rows(40, 0), ONE_CLIENT[:40])
    per = driver.per
    assert per is not None and len(per) == 40 == len(driver.buffer)
    before = per.tree.get(np.arange(40)).copy()
    assert (before == 1.0).all()  # new rows enter at the max priority
    driver.step()
    assert driver.learner.updates == 1 and per.steps == 1
    after = per.tree.get(np.arange(40))
    changed = np.flatnonzero(after != before)
    assert len(changed) > 0  # the sampled rows took their TD errors' priorities
    assert driver.stats()["per_beta"] > driver.cfg.dqn.per_beta_start
    for i in range(1, 12):  # the ring wraps; the sampler's position stays the buffer's
        driver.accept_rows(rows(10, i), ONE_CLIENT[:10])
        driver.step()
        assert (per.pos, per.size) == (driver.buffer.pos, len(driver.buffer))


def test_priorities_of_rows_overwritten_during_an_update_are_not_set() -> None:
    driver = make_driver()
    driver.accept_rows(rows(100, 0), ONE_CLIENT[:100])  # full ring, next write at 0
    idx = np.array([0, 5, 50, 99])
    driver.accept_rows(rows(10, 1), ONE_CLIENT[:10])  # overwrites slots 0..9
    assert still_there(idx, driver.buffer, 10).tolist() == [False, False, True, True]
    assert not still_there(idx, driver.buffer, 100).any()


def _save_load(driver: DQNDriver, tmp: Path, with_buffer: bool) -> tuple[dict, dict]:
    parts, counters = driver.checkpoint(with_buffer)
    state = {"learner": driver.learner.state_dict(), **parts}
    save_checkpoint(tmp, state, counters)
    return load_checkpoint(tmp)


def test_checkpoint_resumes_priorities_and_beta_bit_exactly(tmp_path: Path) -> None:
    driver = fed()
    state, counters = _save_load(driver, tmp_path / "ck", with_buffer=True)
    resumed = make_driver()
    resumed.learner.load_state_dict(state["learner"])
    resumed.restore(state, counters)
    a, b = driver.per, resumed.per
    assert a is not None and b is not None
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[k], v, err_msg=k)
    assert a.beta == b.beta and a.max_priority == b.max_priority
    s1, s2 = a.sample(16), b.sample(16)  # the same next draws
    np.testing.assert_array_equal(s1.indices, s2.indices)
    np.testing.assert_array_equal(s1.weights, s2.weights)


def test_checkpoint_without_buffer_keeps_the_beta_clock(tmp_path: Path) -> None:
    driver = fed()
    state, counters = _save_load(driver, tmp_path / "ck", with_buffer=False)
    assert "tree.priorities" not in state["prioritized"]
    resumed = make_driver()
    resumed.restore(state, counters)
    assert resumed.per is not None and driver.per is not None
    assert resumed.per.steps == driver.per.steps and len(resumed.per) == 0
    assert resumed.per.beta == driver.per.beta


def test_checkpoint_from_before_prioritized_replay_resumes_at_max_priority(
    tmp_path: Path,
) -> None:
    plain = fed("dqn.prioritized=false")
    assert plain.per is None
    state, counters = _save_load(plain, tmp_path / "ck", with_buffer=True)
    assert "prioritized" not in state
    resumed = make_driver()
    resumed.restore(state, counters)
    per = resumed.per
    assert per is not None
    assert (per.size, per.pos) == (len(resumed.buffer), resumed.buffer.pos) == (100, 30)
    assert (per.tree.get(np.arange(100)) == 1.0).all()
    resumed.accept_rows(rows(10, 99), ONE_CLIENT[:10])
    resumed.step()
    assert (per.pos, per.size) == (resumed.buffer.pos, 100)


def test_priorities_that_do_not_fit_the_buffer_are_a_checkpoint_error(tmp_path: Path) -> None:
    driver = fed()
    state, counters = _save_load(driver, tmp_path / "ck", with_buffer=True)
    state["prioritized"]["size"] = np.array(50, dtype=np.int64)
    with pytest.raises(CheckpointError, match="priorities"):
        make_driver().restore(state, counters)

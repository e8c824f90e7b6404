"""ReplayBuffer: shapes and dtypes, ring semantics, state_dict round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from soulsai.training.replay import ReplayBatch, ReplayBuffer


def _rows(start: int, n: int, obs_shape: tuple[int, ...] = (3,)) -> tuple[np.ndarray, ...]:
    """n transitions whose every field encodes its global index start..start+n-1."""
    ids = np.arange(start, start + n)
    obs = np.broadcast_to(ids.reshape(-1, *[1] * len(obs_shape)), (n, *obs_shape)).astype(np.uint8)
    return (
        obs,
        ids.astype(np.int64),
        ids.astype(np.float32),
        obs + 1,
        np.full(n, 0.5, np.float32),
    )


def test_add_and_sample_shapes_and_dtypes() -> None:
    buf = ReplayBuffer(10, obs_shape=(3,), obs_dtype=np.uint8, seed=0)
    assert len(buf) == 0
    with pytest.raises(ValueError):
        buf.sample(4)
    buf.add_batch(*_rows(0, 4))
    assert len(buf) == 4 and buf.total_added == 4
    batch = buf.sample(7)
    assert isinstance(batch, ReplayBatch)
    assert batch.obs.shape == (7, 3) and batch.next_obs.shape == (7, 3)
    assert batch.action.shape == (7,) and batch.reward.shape == (7,)
    assert batch.discount.shape == (7,)
    assert batch.obs.dtype == torch.float32 and batch.next_obs.dtype == torch.float32
    assert batch.action.dtype == torch.int64
    assert batch.reward.dtype == torch.float32 and batch.discount.dtype == torch.float32
    # rows stay consistent across fields
    torch.testing.assert_close(batch.obs[:, 0], batch.reward)
    torch.testing.assert_close(batch.next_obs[:, 0], batch.reward + 1)
    assert set(batch.action.tolist()) <= {0, 1, 2, 3}


def test_action_shape() -> None:
    buf = ReplayBuffer(
        5, obs_shape=(2,), obs_dtype=np.float32, action_shape=(2,), action_dtype=np.float32, seed=0
    )
    buf.add_batch(np.zeros((3, 2)), np.ones((3, 2)), np.zeros(3), np.zeros((3, 2)), np.ones(3))
    assert buf.sample(4).action.shape == (4, 2)


def test_wrap_around_keeps_newest() -> None:
    buf = ReplayBuffer(5, obs_shape=(3,), obs_dtype=np.uint8, seed=0)
    buf.add_batch(*_rows(0, 3))
    buf.add_batch(*_rows(3, 4))  # 7 rows into capacity 5: wraps, 0 and 1 are overwritten
    assert len(buf) == 5 and buf.total_added == 7 and buf.pos == 2
    assert sorted(buf.action.tolist()) == [2, 3, 4, 5, 6]
    assert buf.action.tolist() == [5, 6, 2, 3, 4]
    assert set(buf.sample(200).action.tolist()) == {2, 3, 4, 5, 6}


def test_batch_bigger_than_capacity() -> None:
    buf = ReplayBuffer(4, obs_shape=(3,), obs_dtype=np.uint8, seed=0)
    buf.add_batch(*_rows(0, 1))
    buf.add_batch(*_rows(1, 11))
    assert len(buf) == 4 and buf.total_added == 12
    assert sorted(buf.action.tolist()) == [8, 9, 10, 11]
    # ring order continues as if the rows had been added one by one
    ref = ReplayBuffer(4, obs_shape=(3,), obs_dtype=np.uint8, seed=0)
    for i in range(12):
        ref.add_batch(*_rows(i, 1))
    assert ref.pos == buf.pos
    np.testing.assert_array_equal(ref.action, buf.action)
    np.testing.assert_array_equal(ref.obs, buf.obs)


def test_state_dict_round_trip_after_wrap() -> None:
    buf = ReplayBuffer(6, obs_shape=(3,), obs_dtype=np.uint8, seed=1)
    buf.add_batch(*_rows(0, 4))
    buf.add_batch(*_rows(4, 5))
    buf.sample(3)  # advance the rng
    state = buf.state_dict()
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in state.values())
    assert state["pos"].shape == () and state["pos"].dtype == np.int64

    restored = ReplayBuffer(6, obs_shape=(3,), obs_dtype=np.uint8, seed=99)
    restored.load_state_dict(state)
    assert (len(restored), restored.pos, restored.total_added) == (6, buf.pos, 9)
    for _ in range(3):
        a, b = buf.sample(8), restored.sample(8)
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x, y, rtol=0, atol=0)
    buf.add_batch(*_rows(9, 2))
    restored.add_batch(*_rows(9, 2))
    np.testing.assert_array_equal(buf.action, restored.action)


def test_state_dict_partial_and_other_capacity() -> None:
    buf = ReplayBuffer(8, obs_shape=(3,), obs_dtype=np.uint8, seed=1)
    buf.add_batch(*_rows(0, 3))
    same = ReplayBuffer(8, obs_shape=(3,), obs_dtype=np.uint8)
    same.load_state_dict(buf.state_dict())
    assert (len(same), same.pos) == (3, 3)

    buf.add_batch(*_rows(3, 7))  # wrapped, oldest kept is 2
    smaller = ReplayBuffer(5, obs_shape=(3,), obs_dtype=np.uint8)
    smaller.load_state_dict(buf.state_dict())
    assert len(smaller) == 5 and sorted(smaller.action.tolist()) == [5, 6, 7, 8, 9]
    bigger = ReplayBuffer(20, obs_shape=(3,), obs_dtype=np.uint8)
    bigger.load_state_dict(buf.state_dict())
    assert len(bigger) == 8 and bigger.action[:8].tolist() == list(range(2, 10))

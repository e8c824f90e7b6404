"""PrioritizedSampler: max-priority inserts, importance weights, updates, beta, exact resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from soulsai.model.schedules import per_beta
from soulsai.training.checkpoint import load_checkpoint, save_checkpoint
from soulsai.training.prioritized import PrioritizedSampler
from soulsai.training.replay import ReplayBuffer


def _rows(ids: np.ndarray) -> tuple[np.ndarray, ...]:
    obs = ids.astype(np.float32)[:, None]
    return obs, ids.astype(np.int64), ids.astype(np.float32), obs, np.ones(len(ids), np.float32)


def test_new_rows_enter_with_the_max_priority_seen() -> None:
    per = PrioritizedSampler(8, alpha=1.0, eps=1e-6)
    np.testing.assert_array_equal(per.add(3), [0, 1, 2])
    np.testing.assert_array_equal(per.tree.priorities()[:3], [1.0, 1.0, 1.0])
    per.update(np.array([1]), np.array([-4.0]))  # |td| + eps, alpha 1
    assert per.max_priority == 4.0 + 1e-6
    per.add(2)
    np.testing.assert_array_equal(per.tree.priorities()[3:5], [4.0 + 1e-6] * 2)
    per.update(np.array([1]), np.array([0.5]))  # the max is the largest ever seen
    per.add(1)
    assert per.tree.priorities()[5] == 4.0 + 1e-6


@pytest.mark.parametrize("batches", [[3, 4, 5], [12], [25, 2], [9, 9, 9, 1]])
def test_indices_follow_the_replay_buffers_ring(batches: list[int]) -> None:
    """Each row's priority sits at the index where ReplayBuffer put the row."""
    buf, per = ReplayBuffer(10, obs_shape=(1,)), PrioritizedSampler(10, alpha=1.0, eps=1e-6)
    start = 0
    for n in batches:
        ids = np.arange(start, start + n)
        buf.add_batch(*_rows(ids))
        per.add(n, td_errors=ids.astype(np.float64))  # priority = id + eps
        start += n
    assert (per.pos, per.size) == (buf.pos, buf.size)
    np.testing.assert_allclose(per.tree.priorities()[: buf.size], buf.reward[: buf.size] + 1e-6)


def test_importance_weights_match_a_hand_computation() -> None:
    """w_i = (N P(i))^-beta / max_j w_j, the max over the whole buffer (not the batch)."""
    per = PrioritizedSampler(8, alpha=0.5, eps=1.0, seed=0)
    per.add(4, td_errors=np.array([3.0, 0.0, -15.0, 8.0]))
    # p = sqrt(|td| + 1) = [2, 1, 4, 3]; P = p / 10 = [.2, .1, .4, .3]; N P = [.8, .4, 1.6, 1.2]
    # beta 0.5: (N P)^-0.5 = [1.1180, 1.5811, 0.7906, 0.9129], max 1.5811 (row 1), so
    # w = [sqrt(.4/.8), 1, sqrt(.4/1.6), sqrt(.4/1.2)] = [1/sqrt(2), 1, 1/2, 1/sqrt(3)]
    expected = np.array([1 / np.sqrt(2), 1.0, 0.5, 1 / np.sqrt(3)])
    np.testing.assert_allclose(per.tree.priorities()[:4], [2, 1, 4, 3])
    sample = per.sample(256, beta=0.5)
    assert sample.beta == 0.5
    np.testing.assert_allclose(sample.weights, expected[sample.indices], rtol=1e-6)
    assert sample.weights.dtype == np.float32 and sample.weights.max() == 1.0
    # beta 1: w_i = p_min / p_i
    full = per.sample(64, beta=1.0)
    np.testing.assert_allclose(full.weights, 1 / np.array([2, 1, 4, 3.0])[full.indices], rtol=1e-6)


def test_weights_are_normalized_by_the_buffer_not_the_batch() -> None:
    per = PrioritizedSampler(4, alpha=1.0, eps=1e-6, seed=0)
    per.add(4, td_errors=np.array([100.0, 100.0, 100.0, 0.0]))  # row 3 is rarely drawn
    sample = per.sample(3, beta=1.0)
    assert 3 not in sample.indices
    np.testing.assert_allclose(sample.weights, (100.0 + 1e-6) ** -1 * 1e-6, rtol=1e-6)


def test_update_changes_priorities_and_so_the_sampling() -> None:
    per = PrioritizedSampler(6, alpha=1.0, eps=1e-6, seed=1)
    per.add(6)
    before = per.tree.priorities()
    per.update(np.array([0, 5, 5]), np.array([10.0, 1.0, 0.0]))  # row 5: last TD error wins
    after = per.tree.priorities()
    np.testing.assert_array_equal(after, [10 + 1e-6, 1, 1, 1, 1, 1e-6])
    assert not np.array_equal(before, after)
    counts = np.bincount(np.concatenate([per.sample(64).indices for _ in range(50)]), minlength=6)
    assert counts[0] > 0.6 * counts.sum() and counts[5] == 0


def test_beta_is_annealed_to_one_over_the_samples() -> None:
    assert per_beta(0.4, 0, 100) == 0.4
    assert per_beta(0.4, 50, 100) == pytest.approx(0.7)
    assert per_beta(0.4, 100, 100) == 1.0 and per_beta(0.4, 10_000, 100) == 1.0
    assert per_beta(0.4, 5, 0) == 1.0
    per = PrioritizedSampler(4, beta_start=0.4, beta_anneal_steps=4, seed=0)
    per.add(4)
    assert [per.sample(2).beta for _ in range(6)] == pytest.approx([0.4, 0.55, 0.7, 0.85, 1, 1])
    assert per.steps == 6


def _used(seed: int) -> PrioritizedSampler:
    per = PrioritizedSampler(10, alpha=0.6, beta_start=0.4, beta_anneal_steps=100, seed=seed)
    rng = np.random.default_rng(seed)
    for n in (4, 5, 4):  # 13 rows into 10: wrapped around
        per.add(n)
        sample = per.sample(8)
        per.update(sample.indices, rng.normal(size=8) * 10.0 ** rng.uniform(-3, 3, 8))
    return per


def _assert_same(a: PrioritizedSampler, b: PrioritizedSampler) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and np.array_equal(sa[key], sb[key]), key
    np.testing.assert_array_equal(a.tree._sum, b.tree._sum)
    np.testing.assert_array_equal(a.tree._low, b.tree._low)
    assert a.tree.min == b.tree.min
    assert (a.pos, a.size, a.max_priority, a.steps) == (b.pos, b.size, b.max_priority, b.steps)


def test_priorities_survive_a_checkpoint_bit_exactly_and_sampling_resumes(
    tmp_path: Path,
) -> None:
    per = _used(3)
    save_checkpoint(tmp_path / "c", {"buffer": {"per": per.state_dict()}}, {"env_steps": 0})
    state, _ = load_checkpoint(tmp_path / "c")
    restored = PrioritizedSampler(10, alpha=0.6, beta_start=0.4, beta_anneal_steps=100, seed=99)
    restored.add(2)  # whatever it held is replaced
    restored.load_state_dict(state["buffer"]["per"])
    _assert_same(restored, per)
    for step in range(3):  # same priorities and RNG state: the same draws, weights and beta
        a, b = restored.sample(16), per.sample(16)
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_array_equal(a.weights, b.weights)
        assert a.beta == b.beta
        td = np.full(16, float(step + 1))
        restored.update(a.indices, td)
        per.update(b.indices, td)
    _assert_same(restored, per)


@pytest.mark.parametrize("new_capacity", [6, 10, 20])
def test_a_resume_with_another_capacity_keeps_rows_and_priorities_together(
    new_capacity: int,
) -> None:
    buf, per = ReplayBuffer(10, obs_shape=(1,)), PrioritizedSampler(10, alpha=1.0, eps=1e-6)
    for start, n in ((0, 4), (4, 5), (9, 4)):
        ids = np.arange(start, start + n)
        buf.add_batch(*_rows(ids))
        per.add(n, td_errors=ids.astype(np.float64))
    buf2 = ReplayBuffer(new_capacity, obs_shape=(1,))
    per2 = PrioritizedSampler(new_capacity, alpha=1.0, eps=1e-6)
    buf2.load_state_dict(buf.state_dict())
    per2.load_state_dict(per.state_dict())
    assert (per2.pos, per2.size) == (buf2.pos, buf2.size)
    np.testing.assert_allclose(per2.tree.priorities()[: buf2.size], buf2.reward[: buf2.size] + 1e-6)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_td_error_is_rejected_and_changes_nothing(bad: float) -> None:
    per = PrioritizedSampler(4, seed=0)
    per.add(4)
    before = per.state_dict()
    with pytest.raises(ValueError):
        per.update(np.array([0, 1]), np.array([1.0, bad]))
    with pytest.raises(ValueError):
        per.add(1, td_errors=np.array([bad]))
    _assert_same_state(before, per.state_dict())


def _assert_same_state(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_updates_outside_the_filled_rows_and_empty_samples_are_errors() -> None:
    per = PrioritizedSampler(8, seed=0)
    with pytest.raises(ValueError):
        per.sample(4)
    per.add(3)
    with pytest.raises(ValueError):
        per.update(np.array([3]), np.array([1.0]))
    with pytest.raises(ValueError):
        PrioritizedSampler(8, eps=0.0)

"""SumTree: sums and the tracked minimum under batched updates, prefix-sum search, sampling,
round trip."""

from __future__ import annotations

import numpy as np
import pytest

from soulsai.training import sumtree
from soulsai.training.sumtree import SumTree

# Upper 0.1 % points of the chi-square distribution (from the standard table), by degrees of freedom
CHI2_999 = {11: 31.264}


def _assert_consistent(tree: SumTree) -> None:
    """Every inner node is exactly the sum of its two children; the minimum is the set leaves'."""
    for node in range(1, tree.n_leaves):
        left, right = 2 * node, 2 * node + 1
        assert tree._sum[node] == tree._sum[left] + tree._sum[right]
    assert tree.min == tree._low.min()


def _chi2(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = counts.sum() * probs
    return float(((counts - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("capacity", [1, 2, 5, 8, 13])
def test_total_and_min_follow_batched_updates(capacity: int) -> None:
    tree = SumTree(capacity)
    assert tree.total == 0.0 and tree.min == np.inf
    rng = np.random.default_rng(capacity)
    shadow = np.zeros(capacity)
    set_ = np.zeros(capacity, bool)
    for _ in range(20):
        idx = rng.choice(capacity, size=rng.integers(1, capacity + 1), replace=False)
        values = rng.uniform(0.1, 5.0, len(idx))
        tree.update(idx, values)
        shadow[idx], set_[idx] = values, True
        np.testing.assert_allclose(tree.total, shadow.sum(), rtol=1e-12)
        assert tree.min == shadow[set_].min()
        np.testing.assert_array_equal(tree.priorities(), shadow)
        np.testing.assert_array_equal(tree.get(idx), values)
        _assert_consistent(tree)


def test_a_duplicate_index_takes_its_last_priority() -> None:
    tree = SumTree(6)
    tree.update(np.array([2, 4, 2, 2, 4]), np.array([1.0, 2.0, 3.0, 7.0, 0.5]))
    np.testing.assert_array_equal(tree.priorities(), [0, 0, 7.0, 0, 0.5, 0])
    assert tree.total == 7.5 and tree.min == 0.5
    _assert_consistent(tree)


@pytest.fixture(params=[0, 2, sumtree.SEARCH_LEVELS])
def search_levels(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Sampling with the top levels found by one search (the default) and walked level by level."""
    monkeypatch.setattr(sumtree, "SEARCH_LEVELS", request.param)
    return request.param


def test_find_walks_the_prefix_sums_and_never_lands_on_an_empty_leaf(search_levels: int) -> None:
    tree = SumTree(7)  # 8 leaves: the last one never set
    tree.update(np.array([0, 1, 2, 3, 4, 5, 6]), np.array([1.0, 0.0, 2.0, 0.5, 0.0, 0.25, 0.25]))
    # leaf i owns [cum[i], cum[i+1]): the boundary itself belongs to the next non-empty leaf
    mass = np.array([0.0, 0.999, 1.0, 2.999, 3.0, 3.49, 3.5, 3.75, 3.9999])
    np.testing.assert_array_equal(tree.find(mass), [0, 0, 2, 2, 3, 3, 5, 6, 6])
    # at or past the total (rounding): the last leaf with priority, never leaf 7 or 4
    np.testing.assert_array_equal(tree.find(np.array([4.0, 4.0 + 1e-9, 1e9])), [6, 6, 6])


@pytest.mark.parametrize("stratified", [True, False])
def test_sampling_frequencies_match_the_priorities(stratified: bool, search_levels: int) -> None:
    """Chi-square goodness of fit of 256,000 seeded draws against p_i / sum(p)."""
    capacity = 13  # 16 leaves, three of them empty; one set leaf has priority 0
    rng = np.random.default_rng(7)
    priorities = rng.uniform(0.05, 3.0, capacity)
    priorities[4] = 0.0
    tree = SumTree(capacity)
    tree.update(np.arange(capacity), priorities)
    draws = []
    for _ in range(2000):
        if stratified:
            draws.append(tree.stratified(128, rng))
        else:
            draws.append(tree.find(rng.random(128) * tree.total))
    counts = np.bincount(np.concatenate(draws), minlength=tree.n_leaves)
    assert counts[4] == 0 and counts[capacity:].sum() == 0
    keep = priorities > 0
    probs = priorities[keep] / priorities.sum()
    assert _chi2(counts[:capacity][keep], probs) < CHI2_999[int(keep.sum()) - 1]


def test_find_in_a_deep_tree_equals_a_search_over_the_running_sum() -> None:
    """Depth 13: the search covers the top 10 levels, the walk the rest."""
    rng = np.random.default_rng(11)
    priorities = rng.exponential(size=5000)
    priorities[rng.random(5000) < 0.2] = 0.0
    tree = SumTree(5000)
    tree.update(np.arange(5000), priorities)
    assert tree.depth > sumtree.SEARCH_LEVELS
    mass = rng.random(20_000) * tree.total
    expected = np.searchsorted(np.cumsum(priorities), mass, side="right")
    np.testing.assert_array_equal(tree.find(mass), expected)


def test_stratified_sampling_takes_one_draw_per_segment() -> None:
    tree = SumTree(4)
    tree.update(np.arange(4), np.ones(4))
    for seed in range(5):  # 4 segments over 4 equal leaves: each leaf exactly once, in order
        np.testing.assert_array_equal(tree.stratified(4, np.random.default_rng(seed)), [0, 1, 2, 3])


def test_state_round_trip_is_bit_exact() -> None:
    tree = SumTree(11)
    rng = np.random.default_rng(3)
    for _ in range(10):
        idx = rng.integers(0, 9, 6)  # leaves 9 and 10 stay empty
        tree.update(idx, rng.random(6) * 10 ** rng.uniform(-8, 8, 6))
    tree.update(np.array([3]), np.array([0.0]))  # set to 0: counts for the min
    restored = SumTree(11)
    restored.update(np.array([10]), np.array([5.0]))  # overwritten by the load
    restored.load_state_dict(tree.state_dict())
    np.testing.assert_array_equal(restored._sum, tree._sum)
    np.testing.assert_array_equal(restored._low, tree._low)
    assert restored.min == 0.0
    np.testing.assert_array_equal(
        restored.stratified(64, np.random.default_rng(1)),
        tree.stratified(64, np.random.default_rng(1)),
    )


def test_the_minimum_after_a_load_is_the_loaded_leaves() -> None:
    """An update right after a load, before the minimum is asked for, against the loaded
    leaves, not the ones the tree held before."""
    source = SumTree(4)
    source.update(np.arange(4), np.array([1.0, 6.0, 7.0, 8.0]))
    tree = SumTree(4)
    tree.update(np.arange(4), np.array([5.0, 5.0, 5.0, 5.0]))
    tree.load_state_dict(source.state_dict())
    tree.update(np.array([1]), np.array([3.0]))  # above the loaded 1.0, below the old 5.0
    assert tree.min == 1.0
    _assert_consistent(tree)


@pytest.fixture(params=[0, 2, sumtree.TOP_LEVELS])
def top_levels(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Updates with the top levels rebuilt whole (the default) and walked level by level."""
    monkeypatch.setattr(sumtree, "TOP_LEVELS", request.param)
    return request.param


def test_the_live_tree_equals_one_rebuilt_from_its_leaves_bit_for_bit(top_levels: int) -> None:
    """Depth 13, past the rebuilt top: batches sorted (as sampled), unsorted, with duplicates."""
    rng = np.random.default_rng(5)
    tree = SumTree(5000)
    for step in range(60):
        idx = rng.integers(0, 5000, int(rng.integers(1, 300)))
        if step % 3 == 0:
            idx = np.unique(idx)
        tree.update(idx, rng.random(len(idx)) * 10 ** rng.uniform(-8, 8, len(idx)))
    rebuilt = SumTree(5000)
    rebuilt.load_state_dict(tree.state_dict())
    np.testing.assert_array_equal(rebuilt._sum, tree._sum)
    assert rebuilt.min == tree.min
    _assert_consistent(tree)


def test_the_minimum_follows_ties_and_raised_minima() -> None:
    """The tracked minimum against a scan after every update: ties at the minimum, the last leaf
    holding it raised (found again by a scan), lowered again while not yet looked up."""
    tree = SumTree(9)
    shadow = np.full(9, np.inf)

    def update(idx: list[int], values: list[float], look: bool = True) -> None:
        tree.update(np.array(idx), np.array(values))
        for i, value in zip(idx, values, strict=True):  # a duplicate index: its last value
            shadow[i] = value
        if look:
            assert tree.min == shadow.min()

    update([0, 1, 2], [1.0, 1.0, 1.0])  # three leaves tie at the minimum
    update([0, 1], [2.0, 3.0])  # two of them raised: leaf 2 still holds it
    update([2], [4.0])  # the last one raised: 2.0 (leaf 0), by a scan
    update([3, 4], [2.0, 2.0])  # ties with the minimum
    update([0, 3], [5.0, 5.0])  # leaf 4 still holds it
    update([4], [6.0], look=False)  # the last one raised, not looked up ...
    update([5], [0.5], look=False)  # ... and a lower one written: no scan needed
    assert tree.min == 0.5 == shadow.min()
    update([5], [7.0], look=False)  # raised, not looked up ...
    update([6, 6], [9.0, 3.0], look=False)  # ... then a duplicate index: its last value counts
    assert tree.min == 3.0 == shadow.min()
    update([6], [3.0])  # written again with the same value
    update([7, 8], [0.0, 0.0])  # priority 0 is a minimum too
    update([7, 8, 7], [1.0, 8.0, 0.0])


@pytest.mark.parametrize(
    ("indices", "priorities"),
    [
        (np.array([0, 5]), np.array([1.0, 1.0])),  # index out of range
        (np.array([-1]), np.array([1.0])),
        (np.array([0.5]), np.array([1.0])),  # not an integer
        (np.array([0]), np.array([-1.0])),
        (np.array([0]), np.array([np.nan])),
        (np.array([0]), np.array([np.inf])),
        (np.array([0, 1]), np.array([1.0])),  # lengths differ
    ],
)
def test_bad_updates_are_rejected_and_change_nothing(
    indices: np.ndarray, priorities: np.ndarray
) -> None:
    tree = SumTree(5)
    tree.update(np.array([1]), np.array([2.0]))
    before = tree._sum.copy()
    with pytest.raises(ValueError):
        tree.update(indices, priorities)
    np.testing.assert_array_equal(tree._sum, before)


def test_sampling_an_empty_tree_is_an_error() -> None:
    with pytest.raises(ValueError):
        SumTree(4).stratified(2, np.random.default_rng(0))


def test_a_state_with_bad_priorities_is_rejected() -> None:
    tree = SumTree(3)
    state = {"priorities": np.array([1.0, np.nan, 0.0]), "is_set": np.array([1, 1, 0], bool)}
    with pytest.raises(ValueError):
        tree.load_state_dict(state)
    with pytest.raises(ValueError):
        tree.load_state_dict({"priorities": np.ones(4), "is_set": np.ones(4, bool)})

"""A vectorized sum-tree over a fixed number of leaf priorities, with their minimum tracked.

Prioritized replay (Schaul et al. 2016) samples leaf i with probability p_i / sum(p): a draw u
in [0, total) is found by walking from the root, going right (and subtracting the left sum)
whenever u >= the left child's sum. Here a whole batch of draws walks down at once, one numpy
step per tree level (the top levels in one search over the running sum of the nodes below
them), and a batch of priority updates walks up the same way (the top levels rebuilt whole,
one numpy call a level): no Python loop per transition. At batch 128 the cost is the number of
numpy calls a batch makes, not the arithmetic, so each step is as few calls as it can be (a
16-ary tree, 4x fewer levels, measured slower: numpy's reductions along rows of 16 cost more
than the calls they save).

The minimum (for the importance-weight normalization) is tracked, not kept in a min-tree: the
smallest set priority and how many leaves hold it; an update that lowers it or writes it again
adjusts the two in O(batch), and only when the last leaf holding it is raised is it found again,
by one scan of the leaves, when next asked for. Replay raises the minimum's leaf rarely (it is
the least likely to be sampled, and the ring reaches it once a lap), while a min-tree cost every
update as much again as the sum-tree.

Layout: a complete binary tree in an array of 2 * L floats (L = the capacity rounded up to a
power of two); the root is node 1, node k has children 2k and 2k + 1, leaf i is node L + i.
Every inner node is always recomputed as (left + right) of its current children, never
adjusted by a delta, so a tree rebuilt from its leaves equals the live one bit for bit.
"""

from __future__ import annotations

import math

import numpy as np

SEARCH_LEVELS = 10  # sampling finds the node among the 2**10 this far down with one search
TOP_LEVELS = 10  # an update rebuilds the 2**10 - 1 nodes above this depth whole, level by level


class SumTree:
    """Sums over `capacity` non-negative float64 leaves and their minimum; all start empty.

    An empty leaf has priority 0 in the sum-tree (it is never sampled) and does not count as
    the minimum (+inf in `_low`, the set leaves' priorities).
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.depth = max(int(capacity - 1).bit_length(), 0)  # levels below the root
        self.n_leaves = 1 << self.depth
        self._sum = np.zeros(2 * self.n_leaves, dtype=np.float64)
        self._pairs = self._sum.reshape(-1, 2)  # row k: the children of node k
        self._low = np.full(self.n_leaves, np.inf, dtype=np.float64)
        self._min_value = np.inf  # the smallest set priority, unless _min_stale
        self._min_count = 0  # how many set leaves hold _min_value
        self._min_stale = False  # the last leaf holding _min_value was raised: scan on demand
        self._top = min(self.depth, TOP_LEVELS)
        # the levels an update walks: from the leaves' parents up to the top's lowest level
        self._shifts = np.arange(1, self.depth - self._top + 1, dtype=np.int64)[:, None]
        # each level as views, bottom up: (left children, right children, the nodes)
        self._levels = [
            (
                self._sum[2 * lo : 4 * lo : 2],
                self._sum[2 * lo + 1 : 4 * lo : 2],
                self._sum[lo : 2 * lo],
            )
            for lo in (1 << d for d in range(self.depth - 1, -1, -1))
        ]

    @property
    def total(self) -> float:
        """Sum of all leaf priorities."""
        return float(self._sum[1])

    @property
    def min(self) -> float:
        """Smallest priority among the leaves that were set (+inf while none is)."""
        if self._min_stale:
            self._scan_min()
        return float(self._min_value)

    def _scan_min(self) -> None:
        """Find the minimum and its holders by one scan of all leaves."""
        self._min_value = float(self._low.min())
        self._min_count = int(np.count_nonzero(self._low == self._min_value))
        self._min_stale = False

    def get(self, indices: np.ndarray) -> np.ndarray:
        """The priorities of leaves `indices` (a copy, float64)."""
        return self._sum[self.n_leaves + self._check_indices(indices)]

    def priorities(self) -> np.ndarray:
        """A copy of all `capacity` leaf priorities (0 where never set)."""
        return self._sum[self.n_leaves : self.n_leaves + self.capacity].copy()

    def update(self, indices: np.ndarray, priorities: np.ndarray) -> None:
        """Set leaves `indices` to `priorities` (finite, >= 0) and refresh their ancestors.

        An index given more than once takes its last priority (numpy's fancy assignment leaves
        the order of duplicate writes unspecified, so duplicates are dropped explicitly).
        """
        idx = self._check_indices(indices)
        values = np.asarray(priorities, dtype=np.float64).reshape(-1)
        if values.shape != idx.shape:
            raise ValueError(f"{len(idx)} indices but {len(values)} priorities")
        if len(idx) == 0:
            return
        if not (values.min() >= 0 and math.isfinite(values.max())):  # NaN fails both
            raise ValueError("priorities must be finite and >= 0")
        if len(idx) == 1 or (idx[1:] > idx[:-1]).all():  # distinct (as sampled: ascending)
            leaves, last = idx, values
        else:  # the last occurrence of each: np.unique on the reversed array keeps the first
            leaves, first_in_reversed = np.unique(idx[::-1], return_index=True)
            last = values[::-1][first_in_reversed]
        self._track_min(leaves, last)
        nodes = leaves + self.n_leaves
        self._sum[nodes] = last
        # the ancestors below the top levels, bottom up, all found in one shift: (levels, n)
        # node indices; parents may repeat within a level: they get the same value
        for parents in nodes >> self._shifts:
            children = self._pairs.take(parents, axis=0)
            self._sum[parents] = children[:, 0] + children[:, 1]
        self._rebuild(self._top)

    def _track_min(self, leaves: np.ndarray, values: np.ndarray) -> None:
        """Record distinct `leaves`' new `values` in `_low` and keep the minimum's tally."""
        old = self._low.take(leaves)
        self._low[leaves] = values
        low, held = values.min(), self._min_value
        if low < held:
            # no leaf not written now is below it (stale: below the lost minimum)
            self._min_value, self._min_stale = low, False
            self._min_count = int(np.count_nonzero(values == low))
        elif not self._min_stale:  # the common case, low > held and old.min() > held: 2 calls
            if low == held:
                self._min_count += int(np.count_nonzero(values == held))
            if old.min() == held:  # old >= held: held is the smallest set priority
                self._min_count -= int(np.count_nonzero(old == held))
                self._min_stale = self._min_count == 0

    def _rebuild(self, levels: int) -> None:
        """Recompute the inner nodes of the top `levels` levels from the level below them."""
        for lefts, rights, out in self._levels[-levels:] if levels else ():
            np.add(lefts, rights, out=out)

    def find(self, mass: np.ndarray) -> np.ndarray:
        """For each prefix mass u in [0, total), the leaf i with sum(p[:i]) <= u < sum(p[:i+1]).

        Never a zero-priority leaf: a u at or past the total through rounding ends on the last
        leaf that has priority (the rare draws that walked into an empty leaf walk again, this
        time stepping right only into subtrees with mass).
        """
        if not self._sum[1] > 0:
            raise ValueError("cannot sample from a sum-tree whose total priority is 0")
        mass = np.asarray(mass, dtype=np.float64).reshape(-1)
        # the top levels in one search: over the running sum of the nodes `top` levels down
        top = min(self.depth, SEARCH_LEVELS)
        first = 1 << top
        prefix = np.zeros(first + 1, dtype=np.float64)
        np.cumsum(self._sum[first : 2 * first], out=prefix[1:])
        j = np.searchsorted(prefix[1:], mass, side="right")  # the first node ending past u
        np.minimum(j, first - 1, out=j)  # u at or past the total: an empty leaf, walked again
        u = mass - prefix[j]
        node = j + first
        left = np.empty(len(u), dtype=np.float64)
        right = np.empty(len(u), dtype=bool)
        for _ in range(self.depth - top):  # in place, 5 numpy calls a level: sampling's hot loop
            node <<= 1
            self._sum.take(node, out=left)
            np.greater_equal(u, left, out=right)
            left *= right
            u -= left
            node += right
        empty = self._sum[node] == 0
        if empty.any():
            node[empty] = self._find_guarded(mass[empty])
        return node - self.n_leaves

    def _find_guarded(self, mass: np.ndarray) -> np.ndarray:
        """`find`'s walk that steps right only into a subtree with mass: node indices."""
        u = mass.copy()
        node = np.ones(len(u), dtype=np.int64)
        for _ in range(self.depth):
            left = node << 1
            left_sum = self._sum[left]
            right = (u >= left_sum) & (self._sum[left + 1] > 0)
            u -= np.where(right, left_sum, 0.0)
            node = left + right
        return node

    def stratified(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """`batch_size` leaf indices, one uniform draw in each of `batch_size` equal segments of
        the total mass (Schaul et al.'s stratified sampling: lower variance than i.i.d.)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        segment = self._sum[1] / batch_size
        return self.find((np.arange(batch_size) + rng.random(batch_size)) * segment)

    def state_dict(self) -> dict[str, np.ndarray]:
        """The leaf priorities and which leaves are set: the inner nodes are rebuilt on load."""
        return {
            "priorities": self._sum[self.n_leaves : self.n_leaves + self.capacity].copy(),
            "is_set": np.isfinite(self._low[: self.capacity]),
        }

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore from `state_dict()`; the tree equals the saved one bit for bit."""
        priorities = np.asarray(state["priorities"], dtype=np.float64)
        is_set = np.asarray(state["is_set"], dtype=bool)
        if priorities.shape != (self.capacity,) or is_set.shape != (self.capacity,):
            raise ValueError(
                f"sum-tree state has shapes {priorities.shape} and {is_set.shape}, "
                f"expected ({self.capacity},)"
            )
        if not np.isfinite(priorities).all() or (priorities < 0).any():
            raise ValueError("sum-tree state: priorities must be finite and >= 0")
        if (priorities[~is_set] != 0).any():
            raise ValueError("sum-tree state: a leaf that is not set has a priority")
        self._sum[:] = 0.0
        self._low[:] = np.inf
        self._sum[self.n_leaves : self.n_leaves + self.capacity] = priorities
        self._low[: self.capacity] = np.where(is_set, priorities, np.inf)
        self._scan_min()  # the loaded leaves' minimum, before any update compares with it
        self._rebuild(self.depth)

    def _check_indices(self, indices: np.ndarray) -> np.ndarray:
        idx = np.asarray(indices).reshape(-1)
        if idx.dtype.kind not in "iu":
            raise ValueError(f"indices must be integers, got {idx.dtype}")
        idx = idx.astype(np.int64, copy=False)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.capacity):
            raise ValueError(f"indices must lie in [0, {self.capacity})")
        return idx

"""A vectorized sum-tree (with a min-tree beside it) over a fixed number of leaf priorities.

Prioritized replay (Schaul et al. 2016) samples leaf i with probability p_i / sum(p): a draw u
in [0, total) is found by walking from the root, going right (and subtracting the left sum)
whenever u >= the left child's sum. Here a whole batch of draws walks down at once, one numpy
step per tree level (the top levels in one search over the running sum of the nodes below
them), and a batch of priority updates walks up the same way: no Python loop per transition.
The min-tree gives min(p) for the importance-weight normalization.

Layout: a complete binary tree in an array of 2 * L floats (L = the capacity rounded up to a
power of two); the root is node 1, node k has children 2k and 2k + 1, leaf i is node L + i.
Every inner node is always recomputed as (left + right) of its current children, never
adjusted by a delta, so a tree rebuilt from its leaves equals the live one bit for bit.
"""

from __future__ import annotations

import numpy as np

SEARCH_LEVELS = 10  # sampling finds the node among the 2**10 this far down with one search


class SumTree:
    """Sums and minima over `capacity` non-negative float64 leaves; all leaves start empty.

    An empty leaf has priority 0 in the sum-tree (it is never sampled) and +inf in the
    min-tree (it does not count as the minimum).
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.depth = max(int(capacity - 1).bit_length(), 0)  # levels below the root
        self.n_leaves = 1 << self.depth
        self._sum = np.zeros(2 * self.n_leaves, dtype=np.float64)
        self._min = np.full(2 * self.n_leaves, np.inf, dtype=np.float64)
        self._shifts = np.arange(1, self.depth + 1, dtype=np.int64)[:, None]

    @property
    def total(self) -> float:
        """Sum of all leaf priorities."""
        return float(self._sum[1])

    @property
    def min(self) -> float:
        """Smallest priority among the leaves that were set (+inf while none is)."""
        return float(self._min[1])

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
        if not np.isfinite(values).all() or (values < 0).any():
            raise ValueError("priorities must be finite and >= 0")
        if len(idx) == 0:
            return
        # the last occurrence of each index: np.unique on the reversed array keeps the first
        uniq, first_in_reversed = np.unique(idx[::-1], return_index=True)
        nodes = uniq + self.n_leaves
        last = values[::-1][first_in_reversed]
        self._sum[nodes] = last
        self._min[nodes] = last
        # every ancestor of every leaf, bottom up, in one shift: (depth, n) node indices
        parents = nodes >> self._shifts
        lefts = parents << 1
        rights = lefts + 1
        for p, left, right in zip(parents, lefts, rights, strict=True):
            # parents may repeat within a level: they get the same value, in any order
            self._sum[p] = self._sum[left] + self._sum[right]
            self._min[p] = np.minimum(self._min[left], self._min[right])

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
            np.take(self._sum, node, out=left)
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
        leaves = slice(self.n_leaves, self.n_leaves + self.capacity)
        return {
            "priorities": self._sum[leaves].copy(),
            "is_set": np.isfinite(self._min[leaves]),
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
        self._min[:] = np.inf
        leaves = slice(self.n_leaves, self.n_leaves + self.capacity)
        self._sum[leaves] = priorities
        self._min[leaves] = np.where(is_set, priorities, np.inf)
        lo = self.n_leaves
        while lo > 1:  # one level at a time, bottom up: node k from nodes 2k and 2k + 1
            hi, lo = lo, lo >> 1
            self._sum[lo:hi] = self._sum[2 * lo : 2 * hi : 2] + self._sum[2 * lo + 1 : 2 * hi : 2]
            self._min[lo:hi] = np.minimum(
                self._min[2 * lo : 2 * hi : 2], self._min[2 * lo + 1 : 2 * hi : 2]
            )

    def _check_indices(self, indices: np.ndarray) -> np.ndarray:
        idx = np.asarray(indices).reshape(-1)
        if idx.dtype.kind not in "iu":
            raise ValueError(f"indices must be integers, got {idx.dtype}")
        idx = idx.astype(np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.capacity):
            raise ValueError(f"indices must lie in [0, {self.capacity})")
        return idx

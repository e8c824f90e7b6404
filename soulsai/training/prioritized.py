"""Prioritized experience replay's sampling side (Schaul et al. 2016), beside the storage.

The transitions stay in the replay ring buffer; this keeps one priority per ring slot, in a
sum-tree, and follows the buffer's ring position: call `add(n)` with every `add_batch` of n rows
and the indices line up (`ReplayBuffer.add_batch` and `add` drop the same oldest rows when one
batch is larger than the capacity). Per the paper:

    priority      p_i = (|delta_i| + eps) ** alpha        (proportional variant)
    probability   P(i) = p_i / sum_k p_k
    weight        w_i = (N * P(i)) ** -beta / max_j w_j   (max over the whole buffer: p_min)
                      = (p_i / p_min) ** -beta

New transitions enter with the largest priority yet seen (1 at first), so each is sampled at
least about once before its TD error is known, unless a TD error is given (Ape-X computes one
on the actor). beta is annealed to 1 over `beta_anneal_steps` samples (`schedules.per_beta`).
"""

from __future__ import annotations

import json
import math
from typing import NamedTuple

import numpy as np

from soulsai.model.schedules import per_beta
from soulsai.training.sumtree import SumTree


class PrioritizedSample(NamedTuple):
    """Sampled ring indices (int64), their importance weights (float32, max 1) and the beta used."""

    indices: np.ndarray
    weights: np.ndarray
    beta: float


class PrioritizedSampler:
    """Priorities for a ring buffer of `capacity` rows: add, sample, update, save and restore.

    Not thread-safe: the caller serializes calls with the lock that guards the replay buffer.
    """

    def __init__(
        self,
        capacity: int,
        alpha: float = 0.6,
        beta_start: float = 0.4,
        beta_anneal_steps: int = 0,
        eps: float = 1e-6,
        seed: int | None = None,
    ) -> None:
        if not alpha >= 0 or not 0 <= beta_start <= 1 or not eps > 0 or beta_anneal_steps < 0:
            raise ValueError(
                f"need alpha >= 0, 0 <= beta_start <= 1, eps > 0, beta_anneal_steps >= 0; got "
                f"{alpha}, {beta_start}, {eps}, {beta_anneal_steps}"
            )
        self.tree = SumTree(capacity)
        self.capacity = capacity
        self.alpha, self.beta_start, self.beta_anneal_steps = alpha, beta_start, beta_anneal_steps
        self.eps = eps
        self.pos = 0
        self.size = 0
        self.max_priority = 1.0
        self.steps = 0  # sample() calls: the beta schedule's clock
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.size

    @property
    def beta(self) -> float:
        """The exponent the next `sample()` uses by default."""
        return per_beta(self.beta_start, self.steps, self.beta_anneal_steps)

    def priority(self, td_errors: np.ndarray) -> np.ndarray:
        """(|td| + eps) ** alpha, float64; a non-finite TD error is a ValueError."""
        td = np.abs(np.asarray(td_errors, dtype=np.float64).reshape(-1))
        if len(td) and not math.isfinite(td.max()):  # max shows NaN and inf: one reduction
            raise ValueError("TD errors must be finite")
        td += self.eps  # td is a new array (np.abs made it): in place
        return td**self.alpha  # ** as before: numpy's sqrt/square shortcuts for 0.5 and 2

    def add(self, n: int, td_errors: np.ndarray | None = None) -> np.ndarray:
        """Give the next `n` ring slots the max priority (or priorities from `td_errors`);
        returns their indices. Of more than `capacity` rows only the newest are kept."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if td_errors is None:
            priorities = np.full(n, self.max_priority)
        else:
            priorities = self.priority(td_errors)
            if len(priorities) != n:
                raise ValueError(f"{n} rows but {len(priorities)} TD errors")
            if n:
                self.max_priority = max(self.max_priority, float(priorities.max()))
        return self._write(priorities)

    def sample(self, batch_size: int, beta: float | None = None) -> PrioritizedSample:
        """`batch_size` indices drawn with probability P(i) (stratified over the total mass)
        and their weights; beta defaults to the schedule's, whose clock this advances."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty prioritized replay")
        beta = self.beta if beta is None else float(beta)
        self.steps += 1
        indices = self.tree.stratified(batch_size, self.rng)
        weights = (self.tree.get(indices) / self.tree.min) ** -beta
        return PrioritizedSample(indices, weights.astype(np.float32), beta)

    def update(self, indices: np.ndarray, td_errors: np.ndarray) -> None:
        """New priorities from the learner's TD errors for the rows at `indices` (as sampled:
        an index sampled twice takes its last TD error)."""
        priorities = self.priority(td_errors)
        idx = np.asarray(indices).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.size):
            raise ValueError(f"indices must lie in [0, {self.size}) (the filled rows)")
        self.tree.update(idx, priorities)
        if len(priorities):
            self.max_priority = max(self.max_priority, float(priorities.max()))

    def state_dict(self) -> dict[str, np.ndarray]:
        """Priorities, ring position, max priority, the beta clock and the RNG state: plain
        numpy arrays (the RNG state as JSON bytes), so a checkpoint stores them without pickle."""
        state = {f"tree.{k}": v for k, v in self.tree.state_dict().items()}
        state["pos"] = np.array(self.pos, dtype=np.int64)
        state["size"] = np.array(self.size, dtype=np.int64)
        state["max_priority"] = np.array(self.max_priority, dtype=np.float64)
        state["steps"] = np.array(self.steps, dtype=np.int64)
        rng_json = json.dumps(self.rng.bit_generator.state).encode()
        state["rng_state"] = np.frombuffer(rng_json, dtype=np.uint8).copy()
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore from `state_dict()`: bit-exact with the same capacity (the next samples
        are the saved sampler's). With another capacity the rows are reordered oldest first
        and the newest that fit are kept, exactly as `ReplayBuffer.load_state_dict` does."""
        size, pos = int(state["size"]), int(state["pos"])
        max_priority = float(state["max_priority"])
        if not (np.isfinite(max_priority) and max_priority > 0) or not 0 <= pos <= size:
            raise ValueError("prioritized replay state: bad max_priority, pos or size")
        tree_state = {k[5:]: v for k, v in state.items() if k.startswith("tree.")}
        saved = np.asarray(tree_state["priorities"], dtype=np.float64)
        if len(saved) == self.capacity and size <= self.capacity:
            self.tree.load_state_dict(tree_state)
            self.pos, self.size = pos, size
        else:
            if size > len(saved):
                raise ValueError("prioritized replay state: size exceeds the saved priorities")
            filled = saved[:size]
            if not np.isfinite(filled).all() or (filled < 0).any():
                raise ValueError("prioritized replay state: priorities must be finite and >= 0")
            self.tree = SumTree(self.capacity)
            self.pos = self.size = 0
            self._write(np.roll(filled, -pos % size if size else 0))
        self.max_priority = max_priority
        self.steps = int(state["steps"])
        self.rng.bit_generator.state = json.loads(bytes(state["rng_state"]).decode())

    def _write(self, priorities: np.ndarray) -> np.ndarray:
        n = len(priorities)
        if n > self.capacity:  # the same rows ReplayBuffer.add_batch keeps
            self.pos = (self.pos + n - self.capacity) % self.capacity
            priorities, n = priorities[n - self.capacity :], self.capacity
        indices = (self.pos + np.arange(n, dtype=np.int64)) % self.capacity
        self.tree.update(indices, priorities)
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)
        return indices

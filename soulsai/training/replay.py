"""Uniform experience replay: a numpy ring buffer of n-step transitions.

Transitions arrive from the clients already folded into n-step form, so a stored row is
(obs, action, reward, next_obs, discount) with discount = gamma**k * (1 - terminated).
"""

from __future__ import annotations

import json
from typing import NamedTuple

import numpy as np
import torch

_FIELDS = ("obs", "action", "reward", "next_obs", "discount")


class ReplayBatch(NamedTuple):
    """A sampled batch. `discount` is the bootstrap factor gamma**k * (1 - terminated)."""

    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    next_obs: torch.Tensor
    discount: torch.Tensor


class ReplayBuffer:
    """Fixed-capacity ring buffer with uniform sampling (with replacement).

    Not thread-safe: the caller serializes `add_batch`, `sample` and `state_dict` with its own lock.
    """

    def __init__(
        self,
        capacity: int,
        obs_shape: tuple[int, ...],
        obs_dtype: np.dtype | type = np.float32,
        action_shape: tuple[int, ...] = (),
        action_dtype: np.dtype | type = np.int64,
        seed: int | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.obs = np.zeros((capacity, *obs_shape), dtype=obs_dtype)
        self.next_obs = np.zeros((capacity, *obs_shape), dtype=obs_dtype)
        self.action = np.zeros((capacity, *action_shape), dtype=action_dtype)
        self.reward = np.zeros(capacity, dtype=np.float32)
        self.discount = np.zeros(capacity, dtype=np.float32)
        self.pos = 0
        self.size = 0
        self._total_added = 0
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.size

    @property
    def total_added(self) -> int:
        """Transitions ever added, including those since overwritten."""
        return self._total_added

    def add_batch(
        self,
        obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        next_obs: np.ndarray,
        discount: np.ndarray,
    ) -> None:
        """Append a batch of transitions; of more than `capacity` rows only the newest are kept."""
        values = (obs, action, reward, next_obs, discount)
        n = len(obs)
        if any(len(v) != n for v in values):
            raise ValueError(f"batch fields differ in length: {[len(v) for v in values]}")
        if n == 0:
            return
        self._total_added += n
        if n > self.capacity:  # the oldest rows would be overwritten within this batch: skip them
            self.pos = (self.pos + n - self.capacity) % self.capacity
            values = tuple(v[n - self.capacity :] for v in values)
            n = self.capacity
        first = min(n, self.capacity - self.pos)
        for name, value in zip(_FIELDS, values, strict=True):
            array = getattr(self, name)
            array[self.pos : self.pos + first] = value[:first]
            array[: n - first] = value[first:]
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int) -> ReplayBatch:
        """Sample `batch_size` rows uniformly with replacement, as torch tensors."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        idx = self.rng.integers(0, self.size, size=batch_size)
        return ReplayBatch(
            obs=torch.from_numpy(self.obs[idx]).float(),
            action=torch.from_numpy(self.action[idx]).long(),
            reward=torch.from_numpy(self.reward[idx]),
            next_obs=torch.from_numpy(self.next_obs[idx]).float(),
            discount=torch.from_numpy(self.discount[idx]),
        )

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the filled rows, the ring position, counters and the sampler's RNG state.

        Everything is a plain numpy array (the RNG state is its JSON as uint8), so it can be
        stored without pickle, e.g. with `np.savez`.
        """
        state = {name: getattr(self, name)[: self.size].copy() for name in _FIELDS}
        state["pos"] = np.array(self.pos, dtype=np.int64)
        state["size"] = np.array(self.size, dtype=np.int64)
        state["total_added"] = np.array(self._total_added, dtype=np.int64)
        rng_json = json.dumps(self.rng.bit_generator.state).encode()
        state["rng_state"] = np.frombuffer(rng_json, dtype=np.uint8).copy()
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore from `state_dict()`. Exact when the capacity is unchanged.

        With a different capacity the rows are reordered oldest first and the newest that fit
        are kept.
        """
        size, pos = int(state["size"]), int(state["pos"])
        for name in _FIELDS:
            array, value = getattr(self, name), state[name]
            if len(value) != size or value.shape[1:] != array.shape[1:]:
                raise ValueError(
                    f"replay state '{name}' has shape {value.shape}, expected "
                    f"({size}, {', '.join(map(str, array.shape[1:]))})"
                )
        full = size == self.capacity and pos < self.capacity
        partial = size < self.capacity and pos == size
        if full or partial:
            for name in _FIELDS:
                getattr(self, name)[:size] = state[name]
            self.pos, self.size = pos, size
        else:
            shift = -pos % size if size else 0
            self.pos = self.size = 0
            self.add_batch(*(np.roll(state[name], shift, axis=0) for name in _FIELDS))
        self._total_added = int(state["total_added"])
        self.rng.bit_generator.state = json.loads(bytes(state["rng_state"]).decode())

"""Uniform experience replay: a numpy ring buffer of n-step transitions.

Transitions arrive from the clients already folded into n-step form, so a stored row is
(obs, action, reward, next_obs, discount) with discount = gamma**k * (1 - terminated).

Observations are stored as they travel: a bare Box as one array per side (`obs`, `next_obs`),
a Dict/Tuple observation leaf by leaf (`obs.<leaf>`, `next_obs.<leaf>`), each in its compact
wire dtype. With action masks the next observation's valid actions are kept as packed bits
(`next_mask`, one bit per action) and unpacked when sampled.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import torch

from soulsai.model.masks import mask_bytes, unpack_mask
from soulsai.model.obs import ObsLayout
from soulsai.model.obs_wire import field_name

Obs = torch.Tensor | dict[str, torch.Tensor]  # a bare Box's batch, or leaves name -> batch


class ReplayBatch(NamedTuple):
    """A sampled batch. `discount` is the bootstrap factor gamma**k * (1 - terminated);
    `next_mask` the valid actions of `next_obs` (bool (B, n)), None without masks."""

    obs: Obs
    action: torch.Tensor
    reward: torch.Tensor
    next_obs: Obs
    discount: torch.Tensor
    next_mask: torch.Tensor | None = None


class ReplayBuffer:
    """Fixed-capacity ring buffer with uniform sampling (with replacement).

    `layout` (other than a bare Box) stores the observation leaf by leaf instead of one
    `obs_shape` array; `n_mask` > 0 keeps each transition's next mask over that many actions.
    Not thread-safe: the caller serializes `add_batch`, `sample` and `state_dict` with its own lock.
    """

    def __init__(
        self,
        capacity: int,
        obs_shape: tuple[int, ...] = (),
        obs_dtype: np.dtype | type = np.float32,
        action_shape: tuple[int, ...] = (),
        action_dtype: np.dtype | type = np.int64,
        seed: int | None = None,
        layout: ObsLayout | None = None,
        n_mask: int = 0,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.layout = layout if layout is not None and not layout.plain else None
        self.n_mask = n_mask
        arrays: dict[str, np.ndarray] = {}
        for side in ("obs", "next_obs"):
            if self.layout is None:
                arrays[side] = np.zeros((capacity, *obs_shape), dtype=obs_dtype)
                continue
            for leaf in self.layout.leaves:
                name = field_name(side, leaf)
                arrays[name] = np.zeros((capacity, *leaf.shape), dtype=leaf.dtype)
        arrays["action"] = np.zeros((capacity, *action_shape), dtype=action_dtype)
        arrays["reward"] = np.zeros(capacity, dtype=np.float32)
        arrays["discount"] = np.zeros(capacity, dtype=np.float32)
        if n_mask:
            arrays["next_mask"] = np.zeros((capacity, mask_bytes(n_mask)), dtype=np.uint8)
        self.arrays = arrays
        if self.layout is None:  # the names tests and tools have always read
            self.obs, self.next_obs = arrays["obs"], arrays["next_obs"]
        self.action, self.reward, self.discount = (
            arrays["action"],
            arrays["reward"],
            arrays["discount"],
        )
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

    def _side(self, side: str, value: np.ndarray | Mapping[str, np.ndarray]) -> dict:
        """Field name -> rows of one side's observations (an array, or leaves name -> rows)."""
        if self.layout is None:
            return {side: value}
        if not isinstance(value, Mapping):
            raise ValueError(f"{side}: a layout of leaves {self.layout.names} needs a mapping")
        return {field_name(side, leaf): value[leaf.name] for leaf in self.layout.leaves}

    def add_batch(
        self,
        obs: np.ndarray | Mapping[str, np.ndarray],
        action: np.ndarray,
        reward: np.ndarray,
        next_obs: np.ndarray | Mapping[str, np.ndarray],
        discount: np.ndarray,
        next_mask: np.ndarray | None = None,
    ) -> None:
        """Append a batch of transitions; of more than `capacity` rows only the newest are kept.
        `next_mask` is packed bits (B, ceil(n/8)), required exactly when the buffer has masks."""
        values = {
            **self._side("obs", obs),
            "action": action,
            "reward": reward,
            **self._side("next_obs", next_obs),
            "discount": discount,
        }
        if (next_mask is None) != (self.n_mask == 0):
            raise ValueError("next_mask must be given exactly when the buffer keeps masks")
        if next_mask is not None:
            values["next_mask"] = next_mask
        self._add(values)

    def _add(self, values: dict[str, np.ndarray]) -> None:
        n = len(values["reward"])
        if any(len(v) != n for v in values.values()):
            raise ValueError(f"batch fields differ in length: {[len(v) for v in values.values()]}")
        if n == 0:
            return
        self._total_added += n
        if n > self.capacity:  # the oldest rows would be overwritten within this batch: skip them
            self.pos = (self.pos + n - self.capacity) % self.capacity
            values = {k: v[n - self.capacity :] for k, v in values.items()}
            n = self.capacity
        first = min(n, self.capacity - self.pos)
        for name, value in values.items():
            array = self.arrays[name]
            array[self.pos : self.pos + first] = value[:first]
            array[: n - first] = value[first:]
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def _obs_batch(self, side: str, idx: np.ndarray) -> Obs:
        """One side's observations at `idx` for the network: a bare Box as float32; leaves as
        float32 (Box, binary), int64 (categorical, the encoder's indices) or uint8 (images:
        the CNN scales them, on the learner's device)."""
        if self.layout is None:
            return torch.from_numpy(self.arrays[side][idx]).float()
        out = {}
        for leaf in self.layout.leaves:
            rows = self.arrays[field_name(side, leaf)][idx]
            dtype = {"categorical": np.int64, "image": np.uint8}.get(leaf.kind, np.float32)
            out[leaf.name] = torch.from_numpy(rows.astype(dtype, copy=False))
        return out

    def sample(self, batch_size: int) -> ReplayBatch:
        """Sample `batch_size` rows uniformly with replacement, as torch tensors."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        return self.batch_at(self.rng.integers(0, self.size, size=batch_size))

    def batch_at(self, idx: np.ndarray) -> ReplayBatch:
        """The rows at ring indices `idx` (each in [0, len)), as torch tensors: what prioritized
        replay samples (`soulsai.training.prioritized`, whose indices are this ring's)."""
        next_mask = None
        if self.n_mask:
            bits = self.arrays["next_mask"][idx]
            next_mask = torch.from_numpy(unpack_mask(bits, self.n_mask))
        return ReplayBatch(
            obs=self._obs_batch("obs", idx),
            action=torch.from_numpy(self.action[idx]).long(),
            reward=torch.from_numpy(self.reward[idx]),
            next_obs=self._obs_batch("next_obs", idx),
            discount=torch.from_numpy(self.discount[idx]),
            next_mask=next_mask,
        )

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the filled rows, the ring position, counters and the sampler's RNG state.

        Everything is a plain numpy array (the RNG state is its JSON as uint8), so it can be
        stored without pickle, e.g. with `np.savez`.
        """
        state = {name: a[: self.size].copy() for name, a in self.arrays.items()}
        state["pos"] = np.array(self.pos, dtype=np.int64)
        state["size"] = np.array(self.size, dtype=np.int64)
        state["total_added"] = np.array(self._total_added, dtype=np.int64)
        rng_json = json.dumps(self.rng.bit_generator.state).encode()
        state["rng_state"] = np.frombuffer(rng_json, dtype=np.uint8).copy()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from `state_dict()`. Exact when the capacity is unchanged.

        With a different capacity the rows are reordered oldest first and the newest that fit
        are kept. A state of other fields (another observation layout, masks on or off) is a
        ValueError naming them.
        """
        size, pos = int(state["size"]), int(state["pos"])
        want = set(self.arrays)
        have = {k for k in state if k not in ("pos", "size", "total_added", "rng_state")}
        if have != want:
            raise ValueError(
                f"replay state has fields {sorted(have)}, this buffer {sorted(want)} "
                "(another observation layout or env.action_mask?)"
            )
        for name, array in self.arrays.items():
            value = state[name]
            if len(value) != size or value.shape[1:] != array.shape[1:]:
                raise ValueError(
                    f"replay state '{name}' has shape {value.shape}, expected "
                    f"({size}, {', '.join(map(str, array.shape[1:]))})"
                )
        full = size == self.capacity and pos < self.capacity
        partial = size < self.capacity and pos == size
        if full or partial:
            for name, array in self.arrays.items():
                array[:size] = state[name]
            self.pos, self.size = pos, size
        else:
            shift = -pos % size if size else 0
            self.pos = self.size = 0
            self._add({name: np.roll(state[name], shift, axis=0) for name in self.arrays})
        self._total_added = int(state["total_added"])
        self.rng.bit_generator.state = json.loads(bytes(state["rng_state"]).decode())

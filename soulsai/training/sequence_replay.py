"""Sequence replay for algo r2d2: a ring of chunks, linked to their neighbours in the episode.

A slot holds one chunk as it arrived (soulsai.model.r2d2_spec: up to L = r2d2.chunk steps, the
observation after its last step, its start state and burn-in state, its stream and number)
plus the sending client's interned id. A new chunk is linked to the newest chunk of the same
(client, stream) when that one is its predecessor (number one less, not the episode's end,
still in the ring); overwriting a slot unlinks it from both neighbours. The table of stream
tips holds at most `capacity` streams (the oldest tip is forgotten first), so a churn of
stream ids cannot grow memory.

A sampled sequence (`batch_at`) for chunk j of length l:
- burn-in: the last `burn_in` observations of j's predecessor, unrolled (without gradient) from
  j's `burn_state`; with no predecessor (episode start: j's stored state is zero, exact; or the
  predecessor lost) no burn-in, and the unroll starts from j's own stored `state`;
- positions 0..l-1: j's steps (the loss is on these);
- then the first e = min(n - 1, its length) steps of j's successor (for the n-step targets of
  j's last steps), and one more observation: the one after the last real step (the successor's
  observation e, or its `next_obs`; without a successor j's own `next_obs`, which is the true
  final observation when the episode was truncated). `avail` = l + e is its position.
A chunk with a successor is full (only an episode's last chunk is short), so every sequence
has T = L + n positions, padded with zeros after `avail`.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from soulsai.model.masks import mask_bytes, unpack_mask
from soulsai.model.obs import ObsLayout
from soulsai.model.obs_wire import field_name

LINKS = ("prev", "next")


@dataclass
class SequenceBatch:
    """Sampled sequences, numpy. Leaves are keyed by layout leaf name ("" for a bare Box)."""

    burn_obs: dict[str, np.ndarray] | None  # (B, burn_in, ...); None when burn_in is 0
    has_burn: np.ndarray  # (B,) bool: the sequence has a burn-in (a predecessor)
    burn_state: np.ndarray  # (B, S) the state where the burn-in starts
    state: np.ndarray  # (B, S) the chunk's stored start state (used without a burn-in)
    obs: dict[str, np.ndarray]  # (B, T, ...)
    action: np.ndarray  # (B, L) int64
    reward: np.ndarray  # (B, T - 1) float32: the reward of the step at each position
    terminated: np.ndarray  # (B, T - 1) bool
    length: np.ndarray  # (B,) the chunk's valid steps
    avail: np.ndarray  # (B,) the position of the last real observation
    mask: np.ndarray | None  # (B, T, A) bool, the valid actions at each position


class SequenceReplay:
    """`capacity` chunks of `chunk` steps; see the module docstring. Not thread-safe: the
    caller serializes `add`, sampling and `state_dict` with its own lock."""

    def __init__(
        self,
        capacity: int,
        chunk: int,
        n_step: int,
        burn_in: int,
        layout: ObsLayout,
        state_size: int,
        n_actions: int,
        n_mask: int = 0,
        seed: int | None = None,
    ) -> None:
        if capacity < 1 or not 1 <= n_step <= chunk or not 0 <= burn_in <= chunk:
            raise ValueError(f"bad replay shape: {capacity}, {chunk}, {n_step}, {burn_in}")
        self.capacity, self.chunk, self.n_step, self.burn_in = capacity, chunk, n_step, burn_in
        self.layout = layout
        self.n_actions, self.n_mask = n_actions, n_mask
        C, L = capacity, chunk
        a: dict[str, np.ndarray] = {}
        for leaf in layout.leaves:
            a[field_name("obs", leaf)] = np.zeros((C, L, *leaf.shape), leaf.dtype)
            a[field_name("next_obs", leaf)] = np.zeros((C, *leaf.shape), leaf.dtype)
        a["action"] = np.zeros((C, L), np.int64)
        a["reward"] = np.zeros((C, L), np.float32)
        a["terminated"] = np.zeros((C, L), np.uint8)
        if n_mask:
            a["mask"] = np.zeros((C, L, mask_bytes(n_mask)), np.uint8)
            a["next_mask"] = np.zeros((C, mask_bytes(n_mask)), np.uint8)
        a["state"] = np.zeros((C, state_size), np.float32)
        a["burn_state"] = np.zeros((C, state_size), np.float32)
        for name, dtype in (("stream", np.int64), ("index", np.int64), ("length", np.int16)):
            a[name] = np.zeros(C, dtype)
        a["ended"] = np.zeros(C, np.uint8)
        self.wire = tuple(a)  # the fields a chunk arrives with
        a["client"] = np.zeros(C, np.int64)
        a["prev"] = np.full(C, -1, np.int64)
        a["next"] = np.full(C, -1, np.int64)
        self.arrays = a
        self.pos = 0
        self.size = 0
        self.total_added = 0
        self.streams: OrderedDict[tuple[int, int], int] = OrderedDict()  # stream -> its tip
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.size

    # ------------------------------------------------------------------ adding

    def add(self, fields: Mapping[str, np.ndarray], clients: np.ndarray) -> np.ndarray:
        """Store checked chunks (one row each, wire field names) sent by `clients` (int64
        per row); returns their slots (the newest `capacity` if more came at once). They are
        stored in (client, stream, number) order: the intake's batched decode groups rows by
        envelope layout, so a chunk may come before its predecessor within one batch."""
        clients = np.asarray(clients, np.int64)
        order = np.lexsort((fields["index"], fields["stream"], clients))
        fields = {name: np.asarray(fields[name])[order] for name in self.wire}
        clients = clients[order]
        n = len(fields["length"])
        first = max(0, n - self.capacity)
        slots = (self.pos + np.arange(n - first)) % self.capacity
        a = self.arrays
        for s in slots.tolist():
            if s < self.size:
                self._unlink(s)
        for name in self.wire:
            a[name][slots] = fields[name][first:]
        a["client"][slots] = clients[first:]
        a["prev"][slots] = -1
        a["next"][slots] = -1
        for s in slots.tolist():
            self._link(s)
        self.pos = int((self.pos + len(slots)) % self.capacity)
        self.size = min(self.capacity, self.size + len(slots))
        self.total_added += len(slots)
        return slots

    def _unlink(self, s: int) -> None:
        a = self.arrays
        p, q = int(a["prev"][s]), int(a["next"][s])
        if p >= 0:
            a["next"][p] = -1
        if q >= 0:
            a["prev"][q] = -1
        a["prev"][s] = a["next"][s] = -1

    def _link(self, s: int) -> None:
        """Link slot s to the tip of its stream if that is its predecessor; s becomes the tip
        (or the stream is forgotten: its episode ended)."""
        a = self.arrays
        key = (int(a["client"][s]), int(a["stream"][s]))
        tip = self.streams.pop(key, None)
        if (
            tip is not None
            and tip != s
            and int(a["client"][tip]) == key[0]
            and int(a["stream"][tip]) == key[1]
            and int(a["index"][tip]) == int(a["index"][s]) - 1
            and not a["ended"][tip]
            and a["next"][tip] < 0
            and int(a["length"][tip]) == self.chunk
        ):
            a["prev"][s], a["next"][tip] = tip, s
        if not a["ended"][s]:
            self.streams[key] = s
            while len(self.streams) > self.capacity:
                self.streams.popitem(last=False)

    # ------------------------------------------------------------------ sampling

    def sample(self, batch_size: int) -> tuple[np.ndarray, SequenceBatch]:
        """Uniformly drawn slots (with replacement) and their sequences."""
        if self.size == 0:
            raise ValueError("the replay is empty")
        slots = self.rng.integers(0, self.size, batch_size)
        return slots, self.batch_at(slots)

    def _unpack(self, bits: np.ndarray) -> np.ndarray:
        return unpack_mask(bits.reshape(-1, bits.shape[-1]), self.n_mask).reshape(
            *bits.shape[:-1], self.n_mask
        )

    def batch_at(self, slots: np.ndarray) -> SequenceBatch:
        """The sequences of chunks `slots` (see the module docstring), gathered for all of
        them at once (no loop over sequences: this runs under the intake's lock)."""
        a, L, n, b = self.arrays, self.chunk, self.n_step, self.burn_in
        j = np.asarray(slots, np.int64)
        B, T, m = len(j), L + n, n - 1  # m: positions the successor may fill after the chunk
        rows = np.arange(B)
        length = a["length"][j].astype(np.int64)
        succ = a["next"][j]
        has = succ >= 0  # then j is full; the successor's first e steps follow it
        s = np.where(has, succ, j)
        s_len = a["length"][s].astype(np.int64)
        e = np.where(has, np.minimum(m, s_len), 0)
        avail = np.where(has, L + e, length)
        after = (np.arange(m)[None] < e[:, None]) if m else np.zeros((B, 0), bool)  # (B, m)
        # the observation after the last real step, at `avail`: the successor's observation e,
        # or the next_obs of the successor (e reached its length) or of j (no successor)
        nxt = ~has | (e >= s_len)
        src = np.where(has, s, j)
        at = np.minimum(e, L - 1)
        obs: dict[str, np.ndarray] = {}
        for leaf in self.layout.leaves:
            stored, final = a[field_name("obs", leaf)], a[field_name("next_obs", leaf)]
            seq = np.zeros((B, T, *leaf.shape), leaf.dtype)
            seq[:, :L] = stored[j]
            if m:
                tail = stored[s, :m]
                tail[~after] = 0
                seq[:, L : L + m] = tail
            shape = (B,) + (1,) * len(leaf.shape)
            seq[rows, avail] = np.where(nxt.reshape(shape), final[src], stored[src, at])
            obs[leaf.name] = seq
        reward = np.zeros((B, T - 1), np.float32)
        reward[:, :L] = a["reward"][j]
        term = np.zeros((B, T - 1), bool)
        term[:, :L] = a["terminated"][j]
        if m:
            reward[:, L:] = np.where(after, a["reward"][s, :m], 0)
            term[:, L:] = after & (a["terminated"][s, :m] != 0)
        mask = None
        if self.n_mask:
            mask = np.ones((B, T, self.n_mask), bool)
            mask[:, :L] = self._unpack(a["mask"][j])
            if m:
                mask[:, L : L + m] = self._unpack(a["mask"][s, :m]) | ~after[:, :, None]
            bits = np.where(nxt[:, None], a["next_mask"][src], a["mask"][src, at])
            mask[rows, avail] = self._unpack(bits)
        pred = a["prev"][j]
        has_burn = (pred >= 0) & (b > 0)
        burn_obs = None
        if b > 0:
            burn_obs = {}
            for leaf in self.layout.leaves:
                seq = np.zeros((B, b, *leaf.shape), leaf.dtype)
                seq[has_burn] = a[field_name("obs", leaf)][pred[has_burn], L - b :]
                burn_obs[leaf.name] = seq
        return SequenceBatch(
            burn_obs=burn_obs,
            has_burn=has_burn,
            burn_state=a["burn_state"][j].copy(),
            state=a["state"][j].copy(),
            obs=obs,
            action=a["action"][j].copy(),
            reward=reward,
            terminated=term,
            length=length,
            avail=avail,
            mask=mask,
        )

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, np.ndarray]:
        """The filled slots, links included, the ring position, counters and the RNG state
        (plain numpy arrays; the stream tips are rebuilt from the links on load)."""
        state = {name: v[: self.size].copy() for name, v in self.arrays.items()}
        state["pos"] = np.array(self.pos, np.int64)
        state["size"] = np.array(self.size, np.int64)
        state["capacity"] = np.array(self.capacity, np.int64)
        state["total_added"] = np.array(self.total_added, np.int64)
        rng_json = json.dumps(self.rng.bit_generator.state).encode()
        state["rng_state"] = np.frombuffer(rng_json, dtype=np.uint8).copy()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from `state_dict()`: the same capacity, chunk and fields, else ValueError."""
        size, pos, cap = int(state["size"]), int(state["pos"]), int(state["capacity"])
        if cap != self.capacity or not 0 <= size <= cap or not 0 <= pos < max(cap, 1):
            raise ValueError(
                f"it holds {size} of {cap} chunks at {pos}; this replay has {self.capacity} "
                "slots (dqn.buffer_size / r2d2.chunk must not change)"
            )
        extra = {"pos", "size", "capacity", "total_added", "rng_state"}
        have = {k for k in state if k not in extra}
        if have != set(self.arrays):
            raise ValueError(f"fields {sorted(have ^ set(self.arrays))} do not match")
        for name, target in self.arrays.items():
            value = np.asarray(state[name])
            if value.shape != (size, *target.shape[1:]):
                raise ValueError(f"{name} has shape {value.shape}")
            target[:size] = value
        for name in LINKS:
            links = self.arrays[name][:size]
            if ((links < -1) | (links >= size)).any():
                raise ValueError(f"{name} links point outside the filled slots")
        self.pos, self.size = pos, size
        self.total_added = int(state["total_added"])
        self.rng.bit_generator.state = json.loads(bytes(state["rng_state"]).decode())
        self.streams.clear()
        order = np.arange(size) if size < cap else (pos + np.arange(cap)) % cap
        a = self.arrays
        for s in order.tolist():  # oldest first: the newest chunk of a stream is its tip
            key = (int(a["client"][s]), int(a["stream"][s]))
            self.streams.pop(key, None)
            if not a["ended"][s]:
                self.streams[key] = s
        while len(self.streams) > self.capacity:
            self.streams.popitem(last=False)

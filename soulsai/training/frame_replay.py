"""Frame-store replay: each frame is kept once, stacks and n-step pairs are rebuilt on sampling.

Clients send *frame rows* (soulsai.client.frames, docs/protocol.md "Frames"): a stream's rows
are its episodes' frames in order, each episode's true final frame after its last step. Streams
and the links between rows (`prev`, `next`) are soulsai.training.frame_streams'. An observation
is `k` frames: the stack ending at a row (k > 1, env.atari.frame_stack), or the row's frame
itself (k = 1: a bare image observation, which needs no history and no `prev`).

A row's serial is its arrival number (the `total` rows ever added before it); it sits at
`serial % capacity` and is live while `serial >= total - capacity`. Sampling draws live rows
with a resolved `next` and walks `prev` k - 1 times from the row (obs) and from `next`
(next_obs), staying put at PAD: the same padding the client's stacker used, so the learner
sees exactly the stacks the policy acted on. A draw whose walk meets MISSING or a row since
overwritten is drawn again.

Memory per row: the frame plus 2 x 8 bytes of links, the action, reward and discount (and the
packed next mask): 7,081 bytes for an 84x84 frame, 1.004 x the frame; 43,225 bytes for a
90x160x3 one, 1.0006 x (obs + next_obs pairs: 2 x). `planned_bytes` says it without
allocating.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from soulsai.model.masks import mask_bytes, unpack_mask
from soulsai.training.frame_streams import (
    FINAL,
    FIRST,
    MISSING,
    PAD,
    PENDING,
    StreamTable,
    link_rows,
)
from soulsai.training.replay import ReplayBatch

__all__ = ["FINAL", "FIRST", "MISSING", "PAD", "PENDING", "FrameReplay"]
REDRAWS = 16  # rounds of drawing again for draws whose stacks cannot be rebuilt


class FrameReplay:
    """Fixed-capacity ring of frame rows with uniform sampling of rebuilt transitions.

    Not thread-safe: the caller serializes `add_rows`, `sample` and `state_dict`.
    """

    def __init__(
        self,
        capacity: int,
        frame_shape: tuple[int, ...],
        k: int,
        n_actions: int,
        frame_dtype: np.dtype | type = np.uint8,
        n_mask: int = 0,
        seed: int | None = None,
    ) -> None:
        if capacity < 1 or k < 1:
            raise ValueError(f"capacity and k must be >= 1, got {capacity} and {k}")
        self.capacity, self.k, self.n_mask = capacity, k, n_mask
        self.frame_shape = tuple(frame_shape)
        self.arrays = {
            name: np.zeros((capacity, *shape), dtype)
            for name, (shape, dtype) in self.row_layout(
                frame_shape, n_actions, frame_dtype, n_mask
            ).items()
        }
        self.arrays["next"][:] = MISSING
        self.frames, self.prev, self.next = (self.arrays[n] for n in ("frame", "prev", "next"))
        self.total = 0  # rows ever added: the next row's serial
        self.linked = 0  # live rows whose transition's next row has arrived
        self.streams = StreamTable()  # (client, stream id) -> what links the next batch
        self.rng = np.random.default_rng(seed)

    @staticmethod
    def row_layout(
        frame_shape: tuple[int, ...],
        n_actions: int,
        frame_dtype: np.dtype | type = np.uint8,
        n_mask: int = 0,
    ) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Name -> (per-row shape, dtype) of the ring's arrays."""
        layout = {
            "frame": (tuple(frame_shape), np.dtype(frame_dtype)),
            "prev": ((), np.dtype(np.int64)),
            "next": ((), np.dtype(np.int64)),
            "action": ((), np.min_scalar_type(max(n_actions - 1, 0))),
            "reward": ((), np.dtype(np.float32)),
            "discount": ((), np.dtype(np.float32)),
        }
        if n_mask:
            layout["next_mask"] = ((mask_bytes(n_mask),), np.dtype(np.uint8))
        return layout

    @classmethod
    def planned_bytes(
        cls,
        capacity: int,
        frame_shape: tuple[int, ...],
        n_actions: int,
        frame_dtype: np.dtype | type = np.uint8,
        n_mask: int = 0,
    ) -> int:
        """The bytes a store of `capacity` rows allocates, computed without allocating."""
        layout = cls.row_layout(frame_shape, n_actions, frame_dtype, n_mask)
        return capacity * sum(math.prod(s) * d.itemsize for s, d in layout.values())

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())

    def __len__(self) -> int:
        """Transitions that can be sampled (about: a few at the ring's tail may not rebuild)."""
        return self.linked

    @property
    def total_added(self) -> int:
        return self.total

    # ------------------------------------------------------------------ adding

    def add_rows(
        self,
        client: np.ndarray,
        stream: np.ndarray,
        seq: np.ndarray,
        flags: np.ndarray,
        frame: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        steps: np.ndarray,
        discount: np.ndarray,
        next_mask: np.ndarray | None = None,
    ) -> None:
        """Store a batch of frame rows (any order; a stream's rows are put in `seq` order).

        `client` (int64 per row) says which client sent each row; a stream is its client's
        `stream` id (links: soulsai.training.frame_streams.link_rows). Rows keep their
        arrival order in the ring (a contiguous copy: gathering 7 kB rows costs several times
        more).
        """
        m = len(seq)
        if m == 0:
            return
        if (next_mask is None) != (self.n_mask == 0):
            raise ValueError("next_mask must be given exactly when the store keeps masks")
        links = link_rows(
            self.streams, self.total, self.capacity, client, stream, seq, flags, steps
        )
        prev_in, nxt_in = links.prev, links.next
        keep = min(m, self.capacity)  # of more rows than the ring holds, only the newest stay
        start = (self.total + m - keep) % self.capacity
        spans = [(start, min(keep, self.capacity - start))]  # the ring's slots, at most two runs
        if spans[0][1] < keep:
            spans.append((0, keep - spans[0][1]))
        columns = {"frame": frame, "action": action, "reward": reward, "discount": discount}
        if next_mask is not None:
            columns["next_mask"] = next_mask
        done = m - keep  # rows of the batch written so far (the oldest never are)
        linked = 0  # applied at once: `len` may be read without the caller's lock (stats)
        for slot, count in spans:
            rows = slice(done, done + count)
            ring = slice(slot, slot + count)
            linked -= int(np.count_nonzero(self.next[ring] >= 0))
            for name, value in columns.items():
                self.arrays[name][ring] = value[rows]
            self.prev[ring], self.next[ring] = prev_in[rows], nxt_in[rows]
            linked += int(np.count_nonzero(nxt_in[rows] >= 0))
            done += count
        self.linked += linked
        self.total += m
        for src, dst in links.resolved:
            if src >= self.total - self.capacity:
                self.next[src % self.capacity] = dst
                self.linked += 1

    # ------------------------------------------------------------------ sampling

    def _stack(self, newest: np.ndarray, floor: int) -> tuple[np.ndarray, np.ndarray]:
        """Serials of the k frames ending at `newest` (B,), oldest first, and which rebuild."""
        lo = max(floor, 0)
        out = np.empty((len(newest), self.k), dtype=np.int64)
        ok = newest >= lo
        cur = np.where(ok, newest, lo)
        out[:, -1] = cur
        for j in range(self.k - 2, -1, -1):
            p = self.prev[cur % self.capacity]
            ok &= (p == PAD) | (p >= lo)
            cur = np.where(p >= lo, p, cur)
            out[:, j] = cur
        return out, ok

    def draw(self, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Serials of `batch_size` uniformly drawn transitions: (row, obs stack, next stack)."""
        floor = self.total - self.capacity
        lo = max(floor, 0)
        if self.linked == 0 or self.total == lo:
            raise ValueError("cannot sample: no complete transition in the frame store")
        rows = np.empty(batch_size, dtype=np.int64)
        obs = np.empty((batch_size, self.k), dtype=np.int64)
        nxt = np.empty((batch_size, self.k), dtype=np.int64)
        todo = np.arange(batch_size)
        for _ in range(REDRAWS):
            s = self.rng.integers(lo, self.total, size=len(todo))
            n = self.next[s % self.capacity]
            o_stack, o_ok = self._stack(s, floor)
            n_stack, n_ok = self._stack(n, floor)
            ok = (n >= 0) & o_ok & n_ok
            got = todo[ok]
            rows[got], obs[got], nxt[got] = s[ok], o_stack[ok], n_stack[ok]
            todo = todo[~ok]
            if len(todo) == 0:
                return rows, obs, nxt
        done = np.setdiff1d(np.arange(batch_size), todo)
        if len(done) == 0:  # a mostly broken store (lost rows, hostile links): look at all
            good, o_all, n_all = self.prune()
            if len(good) == 0:
                raise ValueError("cannot sample: no transition in the frame store rebuilds")
            pick = self.rng.integers(0, len(good), size=batch_size)
            return good[pick], o_all[pick], n_all[pick]
        fill = self.rng.choice(done, size=len(todo))  # a mostly broken store: repeat good draws
        rows[todo], obs[todo], nxt[todo] = rows[fill], obs[fill], nxt[fill]
        return rows, obs, nxt

    def prune(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unlink every live transition whose stacks do not rebuild (so `len` counts only
        those that do) and return the rest as `complete` does. O(capacity): for a store
        where random draws keep failing."""
        s, o_stack, n_stack, ok = self._scan()
        self.next[s[~ok] % self.capacity] = MISSING
        self.linked = int(ok.sum())
        return s[ok], o_stack[ok], n_stack[ok]

    def _scan(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every live linked row, its stacks, and whether they rebuild."""
        floor = self.total - self.capacity
        s = np.arange(max(floor, 0), self.total, dtype=np.int64)
        s = s[self.next[s % self.capacity] >= 0]
        o_stack, o_ok = self._stack(s, floor)
        n_stack, n_ok = self._stack(self.next[s % self.capacity], floor)
        return s, o_stack, n_stack, o_ok & n_ok

    def complete(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every live transition whose stacks rebuild: serials (row, obs stack, next stack), as
        `draw` returns them (for tests and tools; O(capacity))."""
        s, o_stack, n_stack, ok = self._scan()
        return s[ok], o_stack[ok], n_stack[ok]

    def stacks(self, serials: np.ndarray) -> np.ndarray:
        """The frames at `serials` (B, k) as stacks (B, k, *frame_shape)."""
        return self.frames[serials % self.capacity]

    def observations(self, serials: np.ndarray) -> np.ndarray:
        """The observations of stacks `serials` (B, k): (B, k, *frame_shape) stacks, or with
        k = 1 the frames themselves (B, *frame_shape), the shape of the env's observation."""
        if self.k == 1:
            return self.frames[serials[:, 0] % self.capacity]
        return self.stacks(serials)

    def sample(self, batch_size: int) -> ReplayBatch:
        """A uniform batch: obs and next_obs as uint8 stacks (B, k, *frame), or frames
        (B, *frame) with k = 1 (`observations`), as torch tensors."""
        rows, obs, nxt = self.draw(batch_size)
        pos = rows % self.capacity
        next_mask = None
        if self.n_mask:
            bits = self.arrays["next_mask"][pos]
            next_mask = torch.from_numpy(unpack_mask(bits, self.n_mask))
        return ReplayBatch(
            obs=torch.from_numpy(self.observations(obs)),
            action=torch.from_numpy(self.arrays["action"][pos].astype(np.int64)),
            reward=torch.from_numpy(self.arrays["reward"][pos]),
            next_obs=torch.from_numpy(self.observations(nxt)),
            discount=torch.from_numpy(self.arrays["discount"][pos]),
            next_mask=next_mask,
        )

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, np.ndarray]:
        """The live rows oldest first, counters, the streams' links and the RNG state, all
        plain numpy arrays (stored without pickle)."""
        size = min(self.total, self.capacity)
        pos = np.arange(self.total - size, self.total) % self.capacity
        state = {f"row.{name}": a[pos] for name, a in self.arrays.items()}
        state["total"] = np.array(self.total, dtype=np.int64)
        state["frame_k"] = np.array(self.k, dtype=np.int64)
        state.update(self.streams.state_dict())
        rng_json = json.dumps(self.rng.bit_generator.state).encode()
        state["rng_state"] = np.frombuffer(rng_json, dtype=np.uint8).copy()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from `state_dict()`; with another capacity the newest rows that fit stay.
        A state of other row fields, frame shape or k is a ValueError naming them."""
        want = {f"row.{n}" for n in self.arrays}
        have = {k for k in state if k.startswith("row.")}
        if have != want:
            raise ValueError(f"frame store state has {sorted(have)}, this store {sorted(want)}")
        if int(state["frame_k"]) != self.k:
            raise ValueError(
                f"frame store state stacks {int(state['frame_k'])} frames, not {self.k}"
            )
        total = int(state["total"])
        size = len(state["row.frame"])
        for name, a in self.arrays.items():
            v = state[f"row.{name}"]
            if len(v) != size or v.shape[1:] != a.shape[1:] or v.dtype != a.dtype:
                raise ValueError(f"frame store state 'row.{name}' is {v.dtype}{v.shape}")
        if size > total:
            raise ValueError(f"frame store state holds {size} rows of {total} ever added")
        keep = min(size, self.capacity)
        serials = np.arange(total - keep, total)
        for name, a in self.arrays.items():
            a[serials % self.capacity] = np.asarray(state[f"row.{name}"])[size - keep :]
        self.total = total
        floor = total - self.capacity
        live_next = self.next[serials % self.capacity]
        self.linked = int(np.count_nonzero(live_next >= max(floor, 0)))
        self.streams.load_state_dict(state)
        self.rng.bit_generator.state = json.loads(bytes(state["rng_state"]).decode())

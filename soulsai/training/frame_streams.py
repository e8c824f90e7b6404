"""The frame store's streams: which rows of a batch of frame rows link to which.

A stream is keyed by (client, stream id): the client number the intake derives from the
envelope's client id, so another client that reuses (or guesses) a stream id starts a stream
of its own instead of splicing rows into someone else's episodes. Per row the store keeps
`prev` (the serial of the stream's previous row in the same episode, PAD at an episode's first
frame, MISSING where a row was lost) and, for a row that starts a transition, `next` (the
serial of the row `steps` later in the stream: the newest frame of next_obs; PENDING until that
row arrives, MISSING if it never can). `link_rows` finds them for one batch; `StreamTable`
remembers what links the next batch to this one (soulsai.training.frame_replay keeps the rows).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

PAD = -1  # prev: this row is its episode's first frame (the stack repeats it)
MISSING = -2  # prev/next: the linked row was lost (a gap in the stream) or never comes
PENDING = -3  # next: the row `steps` on has not arrived yet
FIRST, FINAL = 1, 2  # flags bits (soulsai.client.frames)
MAX_STREAMS = 1 << 16  # streams tracked; the least recently seen is forgotten beyond this
MAX_PENDING = 128  # transitions one stream may leave waiting for their next frame (> n_step)
UNKNOWN_CLIENT = -1  # the client of a stream restored from a state without clients


class _Stream:
    """What the store remembers of one stream between batches."""

    __slots__ = ("last_seq", "last_serial", "pending")

    def __init__(self) -> None:
        self.last_seq = -2  # no row yet: nothing continues it
        self.last_serial = MISSING
        self.pending: list[tuple[int, int]] = []  # (serial, seq of its next row)


class StreamTable:
    """The streams seen lately, least recently seen first (at most MAX_STREAMS)."""

    def __init__(self) -> None:
        self.streams: OrderedDict[tuple[int, int], _Stream] = OrderedDict()

    def __len__(self) -> int:
        return len(self.streams)

    def get(self, sid: tuple[int, int]) -> _Stream:
        """Stream `sid` = (client, stream id), new if unknown; now the most recently seen."""
        st = self.streams.get(sid)
        if st is None:
            st = self.streams[sid] = _Stream()
            if len(self.streams) > MAX_STREAMS:
                self.streams.popitem(last=False)
        else:
            self.streams.move_to_end(sid)
        return st

    def state_dict(self) -> dict[str, np.ndarray]:
        """Ids, clients, last rows and pending links as plain int64 arrays."""
        ids = list(self.streams)
        pend = [
            (i, src, want) for i, s in enumerate(self.streams.values()) for src, want in s.pending
        ]
        return {
            "stream.id": np.array([s for _, s in ids], dtype=np.int64),
            "stream.client": np.array([c for c, _ in ids], dtype=np.int64),
            "stream.last": np.array(
                [(s.last_seq, s.last_serial) for s in self.streams.values()], dtype=np.int64
            ).reshape(-1, 2),
            "stream.pending": np.array(pend, dtype=np.int64).reshape(-1, 3),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from `state_dict()`. A state from before streams were keyed by client gets
        client -1, which no client is given (their streams' next rows start anew)."""
        self.streams.clear()
        ids, last = state["stream.id"], state["stream.last"]
        clients = state.get("stream.client", np.full(len(ids), UNKNOWN_CLIENT, np.int64))
        keys = zip(clients.tolist(), ids.tolist(), strict=True)
        for key, (last_seq, last_serial) in zip(keys, last.tolist(), strict=True):
            st = self.get((int(key[0]), int(key[1])))
            st.last_seq, st.last_serial = last_seq, last_serial
        streams = list(self.streams.values())
        for i, src, want in state["stream.pending"].tolist():
            if 0 <= i < len(streams):
                streams[i].pending.append((src, want))


@dataclass
class Links:
    """One batch's links, per row in arrival order, and earlier rows' links it resolves."""

    prev: np.ndarray  # int64 serial or PAD / MISSING
    next: np.ndarray  # int64 serial or MISSING / PENDING
    resolved: list[tuple[int, int]]  # (serial of an earlier row, the serial of its next row)


def link_rows(
    table: StreamTable,
    total: int,
    capacity: int,
    client: np.ndarray,
    stream: np.ndarray,
    seq: np.ndarray,
    flags: np.ndarray,
    steps: np.ndarray,
) -> Links:
    """Links of a batch of `m` rows whose serials will be `total .. total + m - 1` (arrival
    order) in a ring of `capacity`; updates `table`.

    A row continues its stream's previous row when its seq is one more; a row that neither
    continues its stream nor starts an episode links to MISSING. A transition row (`steps` >= 1,
    not FINAL) links to the row `steps` on in its stream, now or when that arrives (at most
    MAX_PENDING waiting per stream: a hostile stream's oldest never resolve).
    """
    m = len(seq)
    # links are found in (client, stream, seq) order
    order = np.lexsort((seq, stream, client))
    client, stream = client[order], stream[order]
    seq, flags = seq[order], flags[order]
    steps = steps[order].astype(np.int64)
    serial = total + order  # each sorted row's serial
    rank = np.empty(m, dtype=np.int64)  # arrival index -> sorted position
    rank[order] = np.arange(m)
    first = (flags & FIRST) != 0
    is_trans = ((flags & FINAL) == 0) & (steps >= 1)
    new_group = np.ones(m, dtype=bool)
    new_group[1:] = (stream[1:] != stream[:-1]) | (client[1:] != client[:-1])
    # prev: the row before in this batch, when it is the same stream's seq - 1
    follows = np.zeros(m, dtype=bool)
    follows[1:] = ~new_group[1:] & (seq[1:] == seq[:-1] + 1)
    prev = np.full(m, MISSING, dtype=np.int64)
    prev[1:] = np.where(follows[1:], serial[:-1], MISSING)
    # next: the row `steps` on, found in this batch if the stream's rows are contiguous
    nxt = np.full(m, MISSING, dtype=np.int64)
    target = seq + steps
    j = np.minimum(np.arange(m) + steps, m - 1)
    here = is_trans & (stream[j] == stream) & (client[j] == client) & (seq[j] == target)
    nxt[here] = serial[j[here]]
    group_starts = np.flatnonzero(new_group)
    group_ends = np.append(group_starts[1:], m)
    floor_after = total + m - capacity  # serials below are overwritten after this batch
    resolved: list[tuple[int, int]] = []
    for a, b in zip(group_starts.tolist(), group_ends.tolist(), strict=True):
        st = table.get((int(client[a]), int(stream[a])))
        if st.last_seq == seq[a] - 1:
            prev[a] = st.last_serial
        last = int(seq[b - 1])
        waiting: list[tuple[int, int]] = []
        if st.pending:  # earlier rows waiting for a row of this batch (or a later one)
            seqs = seq[a:b]
            for src, want in st.pending:
                if want > last:
                    waiting.append((src, want))
                    continue
                i = int(np.searchsorted(seqs, want))
                if i < len(seqs) and seqs[i] == want and src >= floor_after:
                    resolved.append((src, int(serial[a + i])))
        beyond = is_trans[a:b] & ~here[a:b] & (target[a:b] > last)
        if beyond.any():
            idx = np.flatnonzero(beyond) + a
            nxt[idx] = PENDING
            waiting += zip(serial[idx].tolist(), target[idx].tolist(), strict=True)
        if len(waiting) > MAX_PENDING:  # a hostile stream: its oldest never resolve
            for src, _ in waiting[:-MAX_PENDING]:
                if src >= total:
                    nxt[rank[src - total]] = MISSING
            waiting = waiting[-MAX_PENDING:]
        st.pending = waiting
        st.last_seq, st.last_serial = last, int(serial[b - 1])
    prev[first] = PAD
    prev_in, nxt_in = np.empty_like(prev), np.empty_like(nxt)  # back to arrival order
    prev_in[order], nxt_in[order] = prev, nxt
    return Links(prev_in, nxt_in, resolved)

"""Reading the episode stream so that no record is lost and none is counted twice.

- The cursor is the stream id of the last record written to episodes.jsonl, so a restarted
  node continues right after what is on disk.
- A Redis that was restarted without its data, or replaced (say, from an older snapshot or
  with a clock behind the old one), has a stream whose ids may lie *below* the saved cursor:
  reading after the cursor would then skip every new record. When the stream is missing or
  its last id is below the cursor, reading restarts from the beginning ("0-0").
- Re-reading is safe because each record has a key (client id, the client's own episode
  count, the client's end-of-episode time); keys of the recent records are remembered and a
  record seen before is skipped. The same check drops the duplicate that a client's retry
  produces when Redis stored a batch but the reply was lost.
- The clients number their episodes, so a gap in one client's numbers is an episode that
  never arrived (trimmed from the stream while this node was down, or dropped by the client):
  counted as `missing`, never silently.
- A stream whose ids ran out cannot take a record any more: anyone may XADD an entry with an
  explicit id, and one near 2^64 leaves no id for the clients' `XADD *`. An id beyond any
  clock (`usable_id`) ends the reading at the entry before it; once everything before it is
  read, the stream is deleted and the clients' next XADD starts a fresh one (their outboxes
  keep refused records and resend them). Records written after such an id are lost with it
  and show up as `missing`.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from typing import Any

from soulsai.transport.telemetry_link import TelemetryLink

log = logging.getLogger(__name__)

START = "0-0"
MAX_USABLE_MS = 1 << 47  # about the year 6429: no clock writes stream ids beyond this
MAX_USABLE_SEQ = 1 << 63


def usable_id(stream_id: str) -> bool:
    """False for an id that no clock makes and that leaves (almost) no ids after it."""
    try:
        ms, seq = parse_id(stream_id)
    except ValueError:
        return False
    return ms < MAX_USABLE_MS and seq < MAX_USABLE_SEQ


def parse_id(stream_id: str) -> tuple[int, int]:
    ms, _, seq = str(stream_id).partition("-")
    return int(ms), int(seq or 0)


def record_key(rec: dict[str, Any]) -> tuple[str, int | None, float]:
    """What makes an episode record unique, on the wire and in episodes.jsonl."""
    seq = rec.get("client_episode")
    return str(rec.get("client_id")), (int(seq) if seq is not None else None), float(rec["time"])


class SeenRecords:
    """Keys of the last `window` records, plus each client's last episode number (gaps)."""

    def __init__(self, window: int) -> None:
        self.window = window
        self._order: deque[tuple] = deque()
        self._keys: set[tuple] = set()
        self._last_seq: dict[str, int] = {}
        self.missing = 0
        self.duplicates = 0

    def add(self, rec: dict[str, Any]) -> bool:
        """Remember `rec`; False (and counted) if it was seen before."""
        key = record_key(rec)
        if key in self._keys:
            self.duplicates += 1
            return False
        self._keys.add(key)
        self._order.append(key)
        if len(self._order) > self.window:
            self._keys.discard(self._order.popleft())
        client, seq, _ = key
        if seq is not None:
            last = self._last_seq.get(client)
            if last is not None and seq > last + 1:
                self.missing += seq - last - 1
            # seq <= last: the client restarted under the same id and counts from 1 again
            self._last_seq[client] = seq
        return True

    def load(self, records: Iterable[dict[str, Any]]) -> None:
        for rec in records:
            self.add(rec)
        self.duplicates = 0


class StreamCursor:
    """The position in the episode stream, checked against the stream itself."""

    def __init__(self, link: TelemetryLink, cursor: str = START) -> None:
        self.link = link
        self.cursor = cursor or START
        self.resets = 0
        self.repairs = 0

    def check(self) -> None:
        """Start over from the beginning if the stream cannot contain what follows the cursor
        any more (Redis restarted empty or replaced). Warn about trimmed records. Repair a
        stream whose ids ran out once nothing is left to read before the bad id."""
        bounds = self.link.stream_bounds()
        if bounds is not None and not usable_id(bounds[1]):
            if not self.link.read_episodes(self.cursor, count=1, block_ms=None):
                self.repair(bounds[1])
            return  # else `read` stops at the bad id and repairs when it gets there
        if self.cursor == START:
            return
        if bounds is None:
            log.warning("episode stream is gone (Redis restarted empty?): reading from the start")
            self._reset()
            return
        first, last = bounds
        if parse_id(last) < parse_id(self.cursor):
            log.warning(
                "episode stream ends at %s, before this node's position %s (Redis restarted "
                "or replaced): reading it from the start, skipping records already written",
                last,
                self.cursor,
            )
            self._reset()
        elif first is not None and parse_id(first) > parse_id(self.cursor):
            log.warning(
                "episode stream starts at %s, after this node's position %s: records in "
                "between were trimmed (telemetry.stream_maxlen) and are lost",
                first,
                self.cursor,
            )

    def _reset(self) -> None:
        self.cursor = START
        self.resets += 1

    def read(self, count: int, block_ms: int | None) -> list[tuple[str, Any]]:
        """Entries after the cursor (`block_ms` None: do not wait). The caller moves `cursor`
        past each entry it handled, so an error half-way through a batch loses nothing.

        Entries stop before the first unusable id; reaching one repairs the stream."""
        entries = self.link.read_episodes(self.cursor, count=count, block_ms=block_ms)
        for i, (entry_id, _) in enumerate(entries):
            if not usable_id(entry_id):
                if i == 0:
                    self.repair(entry_id)
                return entries[:i]
        return entries

    def repair(self, bad_id: str) -> None:
        """Delete a stream with an unusable id (everything before it was read) and read the
        fresh one the clients create from its start."""
        dropped = self.link.drop_episode_stream()
        log.warning(
            "episode stream holds id %s, which no clock makes (written by hand?) and which "
            "leaves clients no ids: deleted it with %d entries; clients start a fresh one",
            bad_id,
            dropped,
        )
        self.repairs += 1
        self._reset()

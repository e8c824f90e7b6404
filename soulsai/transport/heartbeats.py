"""Reading the clients' heartbeat keys without letting a client role starve the reader.

Anyone holding the client role may SET any key under `<prefix>:client:*`: a value of
hundreds of megabytes, a key without an expiry, or a flood of fake ones. So one read is
bounded in every direction: at most `MAX_SCANS` SCAN calls and `MAX_HEARTBEATS` keys, at
most `MAX_BEAT_BYTES` of each value (GETRANGE, never GET), and only keys with an expiry no
longer than any honest client sets (`client.heartbeat_timeout` is at most 600 s) count.
Keys that fail a check (no expiry, a longer one, a value too big, another type, a name too
long) are deleted, so a flood is cleared within a few rounds.

The reading happens in a thread of its own (`HeartbeatWatch`): a node's main loop only takes
the latest snapshot and never waits on it.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import redis

from soulsai.transport.keys import Keys

log = logging.getLogger(__name__)

MAX_HEARTBEATS = 1000  # live heartbeats read per round; beyond that the count stops
MAX_SCANS = 64  # SCAN calls per round
SCAN_COUNT = 500  # hint per SCAN call
MAX_BEAT_BYTES = 1024  # an honest heartbeat's JSON is about 150 bytes
MAX_BEAT_TTL_MS = 600_000  # client.heartbeat_timeout's upper bound
MAX_ID_BYTES = 256  # client ids are host-pid-hex or a short --client-id
READ_EVERY = 1.0  # seconds between rounds of a HeartbeatWatch


def _valid(name_len: int, ttl: Any, raw: Any) -> bool:
    return (
        name_len <= MAX_ID_BYTES
        and isinstance(ttl, int)
        and 0 < ttl <= MAX_BEAT_TTL_MS
        and isinstance(raw, bytes)
        and len(raw) <= MAX_BEAT_BYTES
    )


def _parse(raw: bytes) -> dict:
    try:
        info = json.loads(raw) if raw else {}
    except (ValueError, RecursionError):
        return {}
    return info if isinstance(info, dict) else {}


def read_heartbeats(r: redis.Redis, keys: Keys) -> dict[str, dict]:
    """Client id -> its heartbeat's JSON (or {} if unreadable), read with bounded work; keys
    that no honest client writes are deleted on the way. Raises redis errors for the caller."""
    names: list[bytes] = []
    cursor = 0
    for _ in range(MAX_SCANS):
        cursor, batch = r.scan(cursor, match=keys.heartbeat_pattern, count=SCAN_COUNT)
        names += batch
        if cursor == 0 or len(names) >= MAX_HEARTBEATS:
            break
    names = names[:MAX_HEARTBEATS]
    if not names:
        return {}
    prefix = len(keys.heartbeat("").encode())
    pipe = r.pipeline(transaction=False)
    for name in names:
        pipe.pttl(name)
        pipe.getrange(name, 0, MAX_BEAT_BYTES)  # at most MAX_BEAT_BYTES + 1 bytes
    replies = pipe.execute(raise_on_error=False)
    out: dict[str, dict] = {}
    bad: list[bytes] = []
    for i, name in enumerate(names):
        ttl, raw = replies[2 * i], replies[2 * i + 1]
        if ttl == -2:
            continue  # expired since the SCAN
        if not _valid(len(name) - prefix, ttl, raw):
            bad.append(name)
            continue
        out[name[prefix:].decode(errors="replace")] = _parse(raw)
    if bad:
        r.delete(*bad)
        log.warning(
            "deleted %d key(s) under %s that no client writes (no or a long expiry, too big, "
            "or not a string)",
            len(bad),
            keys.heartbeat_pattern,
        )
    return out


class HeartbeatWatch:
    """Reads heartbeats every `interval` seconds in a daemon thread; `latest()` is the last
    snapshot. The first call of `latest()` reads once in the caller's thread (so a caller
    that cannot reach Redis sees the error), then starts the thread."""

    def __init__(self, r: redis.Redis, keys: Keys, interval: float = READ_EVERY) -> None:
        self.r = r
        self.keys = keys
        self.interval = interval
        self._latest: dict[str, dict] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def latest(self) -> dict[str, dict]:
        with self._lock:
            if self._latest is None:
                self._latest = read_heartbeats(self.r, self.keys)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="heartbeats", daemon=True)
                self._thread.start()
            return self._latest

    def _run(self) -> None:
        failures = 0
        while not self._stop.wait(self.interval):
            try:
                beats = read_heartbeats(self.r, self.keys)
            except (redis.RedisError, OSError) as e:
                failures += 1  # Redis away or refusing: keep the last snapshot, try again
                if failures == 1:
                    log.warning("cannot read client heartbeats (%s); retrying", type(e).__name__)
                continue
            failures = 0
            with self._lock:
                self._latest = beats

    def close(self) -> None:
        self._stop.set()

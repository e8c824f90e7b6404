"""The base of the role links (client_link.py, trainer_link.py, telemetry_link.py): what every
role reads, the errors that mean "Redis is away for now", and the helpers for values read back.
Only transport/ imports redis.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from soulsai.transport.heartbeats import HeartbeatWatch
from soulsai.transport.keys import Keys

# Errors a caller should treat as "Redis is away for now": retry later, lose nothing. Refusals
# that pass by themselves count too: Redis at its `maxmemory` (OOM), a replica that became
# read-only (READONLY), an ACL being edited (NOPERM). None of them may end a node.
TRANSIENT = (
    redis.ConnectionError,
    redis.TimeoutError,
    OSError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.NoPermissionError,
)


def as_str(value: Any) -> str | None:
    """A Redis reply as text (None stays None)."""
    if value is None:
        return None
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class Link:
    """What every role does with Redis: model id, heartbeats, liveness, stats, broadcasts."""

    def __init__(self, r: redis.Redis, keys: Keys) -> None:
        self.r = r
        self.keys = keys
        self._beats: HeartbeatWatch | None = None

    def model_id(self) -> int | None:
        raw = as_str(self.r.get(self.keys.model_id))
        return int(raw) if raw is not None and raw.lstrip("-").isdigit() else None

    def client_heartbeats(self) -> dict[str, dict]:
        """Client id -> heartbeat JSON of the live clients, as last read by a background thread
        (heartbeats.py: bounded reads, at most a second old); the first call reads at once."""
        if self._beats is None:
            self._beats = HeartbeatWatch(self.r, self.keys)
        return self._beats.latest()

    def trainer_alive(self) -> bool:
        return bool(self.r.exists(self.keys.trainer_alive))

    def broadcast(self, command: bytes) -> None:
        """Publish `command` (`commands.encode_command`) to every client: pause and resume from
        the training node, shutdown from `soulsai train`."""
        self.r.publish(self.keys.commands, command)

    def stats(self, which: str) -> dict[str, str]:
        key = self.keys.trainer_stats if which == "trainer" else self.keys.telemetry_stats
        return {as_str(k): as_str(v) for k, v in self.r.hgetall(key).items()}

    def close(self) -> None:
        if self._beats is not None:
            self._beats.close()
        self.r.close()


def as_int(value: Any, default: int = 0) -> int:
    """An integer from a stats field anyone with the password could have overwritten."""
    try:
        return int(float(value))
    except (TypeError, ValueError, OverflowError):
        return default


def wait_for(fn, timeout: float, interval: float = 0.2) -> Any:
    """Call `fn` until it returns something truthy or `timeout` passes (then return None)."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)

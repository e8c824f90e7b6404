"""The telemetry node's link (also `soulsai quicksave`'s): the episode stream with a cursor,
stats, and commands to the training node with their replies."""

from __future__ import annotations

import time
from typing import Any

import redis

from soulsai.transport.links import Link, as_str


class TelemetryLink(Link):
    def read_episodes(self, cursor: str, count: int, block_ms: int) -> list[tuple[str, Any]]:
        """Entries after `cursor` as (id, raw field map); the caller keeps the cursor."""
        got = self.r.xread({self.keys.episodes: cursor}, count=count, block=block_ms)
        if not got:
            return []
        return [(as_str(eid), fields) for eid, fields in got[0][1]]

    def run_info(self) -> dict[str, str]:
        return {as_str(k): as_str(v) for k, v in self.r.hgetall(self.keys.run).items()}

    def set_stats(self, stats: dict[str, Any]) -> None:
        self.r.hset(self.keys.telemetry_stats, mapping={k: str(v) for k, v in stats.items()})

    def trainer_env_steps(self) -> int:
        raw = as_str(self.r.hget(self.keys.trainer_stats, "env_steps"))
        return int(raw) if raw and raw.isdigit() else 0

    def send_trainer_command(self, command: bytes) -> None:
        self.r.lpush(self.keys.trainer_commands, command)

    def stream_bounds(self) -> tuple[str | None, str] | None:
        """(id of the oldest entry or None if empty, last generated id) of the episode stream;
        None when the stream does not exist (a new or flushed Redis)."""
        try:
            info = self.r.xinfo_stream(self.keys.episodes)
        except redis.ResponseError:  # no such key
            return None
        first = info.get("first-entry")
        return (as_str(first[0]) if first else None), str(as_str(info.get("last-generated-id")))

    def client_ids(self) -> set[str]:
        """Ids of the clients with a live heartbeat (bounded reads, see `client_heartbeats`)."""
        return set(self.client_heartbeats())

    def drop_episode_stream(self) -> int:
        """Delete the episode stream (one whose ids ran out); returns how many entries it held.
        Clients' next XADD creates a fresh one."""
        pipe = self.r.pipeline(transaction=True)
        pipe.xlen(self.keys.episodes)
        pipe.delete(self.keys.episodes)
        return int(pipe.execute()[0])

    def wait_reply(self, token: str, timeout: float) -> bytes | None:
        """The training node's answer to the command sent with `"reply": token`, or None when
        none came within `timeout` or the node stopped (its liveness key is gone)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            # short blocking reads: the connection's socket timeout must not fire first
            got = self.r.blpop([self.keys.reply(token)], timeout=max(1, min(2, int(left))))
            if got:
                self.r.delete(self.keys.reply(token))
                raw = got[1]
                return raw if isinstance(raw, bytes) else str(raw).encode()
            if not self.trainer_alive():
                return None
        return None

    def withdraw_trainer_command(self, command: bytes) -> bool:
        """Take back a command the training node has not read yet; False if it has."""
        return bool(self.r.lrem(self.keys.trainer_commands, 1, command))  # type: ignore[arg-type]

"""What each role does with Redis, as plain methods. Only transport/ imports redis.

- ClientLink: a sampling client's view (config and weights in, experience and episodes out).
- TrainerLink: the training node's view (experience in, weights/config/stats out, commands).
- TelemetryLink: the telemetry node's view (episode stream with a cursor, stats, commands).
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from soulsai.errors import ConfigError, ProtocolError
from soulsai.transport.commands import encode_command
from soulsai.transport.heartbeats import HeartbeatWatch
from soulsai.transport.keys import Keys
from soulsai.transport.resp import Parts, PartsPacker, command_head, read_bulk

log = logging.getLogger(__name__)

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
# Any command Redis refused (the above, a key of the wrong type, an exhausted stream): a
# client's sender keeps what it holds and retries too, saying why.
REFUSED = (redis.ResponseError,)
MAX_CONFIG_BYTES = 1 << 20  # the published config is a few kilobytes of JSON
CLIENT_INDEX_BOUND = 1 << 16  # client indexes (epsilon ladder, seeds) wrap around here


def _str(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


@dataclass
class Delivery:
    """What one `ClientLink.deliver` round stored: each command's reply is checked on its own,
    so a refused part is resent alone and nothing that arrived is sent twice."""

    queued: int = 0  # queue length before the trim (0 without samples)
    samples_ok: bool = True
    episodes_ok: list[bool] = field(default_factory=list)
    error: Exception | None = None  # the first refusal, if any


class _Link:
    def __init__(self, r: redis.Redis, keys: Keys) -> None:
        self.r = r
        self.keys = keys
        self._beats: HeartbeatWatch | None = None

    def model_id(self) -> int | None:
        raw = _str(self.r.get(self.keys.model_id))
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
        return {_str(k): _str(v) for k, v in self.r.hgetall(key).items()}

    def close(self) -> None:
        if self._beats is not None:
            self._beats.close()
        self.r.close()


class ClientLink(_Link):
    def register(self) -> int:
        """A fresh index for this client (epsilon ladder, seeds), below CLIENT_INDEX_BOUND.

        INCR, not INCRBY (redis-py's `incr`): the client role is granted INCR alone. A counter
        someone pushed to the end of int64 (or set to a non-number) cannot be reset by the
        client role: the index is then drawn at random, with one log line.
        """
        try:
            return (int(self.r.execute_command("INCR", self.keys.client_seq)) - 1) % (
                CLIENT_INDEX_BOUND
            )
        except redis.ResponseError as e:
            if isinstance(e, TRANSIENT):
                raise
            index = secrets.randbelow(CLIENT_INDEX_BOUND)
            log.warning(
                "%s is unusable (%s); taking index %d at random", self.keys.client_seq, e, index
            )
            return index

    def fetch_config(self) -> bytes | None:
        """The published config JSON (None before the first publish), read bounded: a value
        over MAX_CONFIG_BYTES is refused without reading more of it."""
        raw = self.r.getrange(self.keys.config, 0, MAX_CONFIG_BYTES)
        if not raw:
            return None
        if len(raw) > MAX_CONFIG_BYTES:
            raise ProtocolError(
                "too_large", f"the published config is over {MAX_CONFIG_BYTES} bytes"
            )
        return raw

    def fetch_weights(self, max_bytes: int = 1 << 30) -> bytes | memoryview | None:
        """The weights blob (None before the first publish), read off the socket into one buffer.

        Its size is asked first (STRLEN): a blob over `max_bytes` raises ProtocolError without
        a byte of it read, and the read itself is bounded (GETRANGE).

        redis-py passes a reply through hiredis's buffer into a bytes object: two more copies of
        a blob that can be 40 MB, made while holding the GIL, so the env loop's thread waits.
        Here the kernel copies straight into the result, with the GIL released. A connection
        this cannot read directly (not a socket, data already waiting) takes the plain GET.
        """
        pool = self.r.connection_pool
        conn = pool.get_connection()
        try:
            got = conn.retry.call_with_retry(
                lambda: self._get_blob(conn, self.keys.weights, max_bytes),
                lambda _: conn.disconnect(),
            )
        except BaseException:
            conn.disconnect()  # a reply may be half read: the connection cannot be reused
            raise
        finally:
            pool.release(conn)
        if isinstance(got, int) or (got is not None and len(got) > max_bytes):
            size = got if isinstance(got, int) else len(got)
            raise ProtocolError("too_large", f"weights of {size} bytes > {max_bytes}")
        return got

    @staticmethod
    def _get_blob(conn: Any, key: str, max_bytes: int) -> bytes | memoryview | int | None:
        """The value under `key`, or its size (an int) when that is over `max_bytes`."""
        if getattr(conn, "_sock", None) is None:
            conn.connect()
        conn.send_command("STRLEN", key)
        size = int(conn.read_response())
        if size > max_bytes:
            return size
        if size == 0:  # missing (None) or empty
            conn.send_command("GET", key)
            return conn.read_response()
        sock = getattr(conn, "_sock", None)
        plain = not isinstance(sock, socket.socket) or conn.can_read(timeout=0)
        # a value that grew since STRLEN is cut at max_bytes + 1 bytes: still refused
        conn.send_command("GETRANGE", key, 0, max_bytes)
        return conn.read_response() if plain else read_bulk(sock)

    def heartbeat(self, client_id: str, info: dict, ttl: float) -> None:
        self.r.set(self.keys.heartbeat(client_id), json.dumps(info), px=int(ttl * 1000))

    def push(
        self, samples: list[bytes], episodes: list[bytes], stream_maxlen: int, max_queue: int
    ) -> int:
        """`deliver`, raising its first refusal; returns the queue length before the trim."""
        done = self.deliver(samples, episodes, stream_maxlen, max_queue)
        if done.error is not None:
            raise done.error
        return done.queued

    def deliver(
        self, samples: list[bytes], episodes: list[bytes], stream_maxlen: int, max_queue: int
    ) -> Delivery:
        """One round trip for a whole outbox: the samples (LPUSH, then LTRIM) and each episode
        record (XADD). Raises TRANSIENT errors (Redis away: nothing is known to have arrived);
        a command Redis refused is reported in the result, part by part, and the caller
        resends only those parts.

        The experience list is trimmed to its newest `max_queue` messages in the same round
        trip, so a slow or stopped training node can never fill Redis's memory. `queued` is how
        many messages the queue held before that trim: those beyond `max_queue`, the oldest,
        were dropped.
        """
        samples_key, crlf = self.keys.samples.encode(), b"\r\n"
        parts: list[bytes] = []
        if samples:
            parts.append(command_head(2 + len(samples), b"LPUSH", samples_key))
            for blob in samples:
                parts += (b"$%d\r\n" % len(blob), blob, crlf)
            parts.append(command_head(4, b"LTRIM", samples_key, b"0", b"%d" % (max_queue - 1)))
        if episodes:  # XADD <stream> MAXLEN ~ <n> * m <record>
            head = command_head(
                8, b"XADD", self.keys.episodes.encode(), b"MAXLEN", b"~", b"%d" % stream_maxlen,
                b"*", b"m",
            )  # fmt: skip
            for blob in episodes:
                parts += (head, b"$%d\r\n" % len(blob), blob, crlf)
        replies = self._round_trip(parts, (2 if samples else 0) + len(episodes))
        out = Delivery()
        errors = [x for x in replies if isinstance(x, redis.ResponseError)]
        out.error = errors[0] if errors else None
        if samples:
            pushed, replies = replies[0], replies[2:]  # a refused LTRIM leaves them delivered
            out.samples_ok = not isinstance(pushed, redis.ResponseError)
            out.queued = int(pushed) if out.samples_ok else 0
        out.episodes_ok = [not isinstance(x, redis.ResponseError) for x in replies]
        return out

    def _round_trip(self, parts: list[bytes], n_replies: int) -> list[Any]:
        """Send commands packed by hand and read their replies, on one pooled connection; an
        error reply is returned in its place (every reply is read, so the connection stays
        usable).

        redis-py's pipeline spends about 8 us of CPU per command building and parsing it; by
        hand it is about 1.5 us. A client ending short episodes sends thousands of XADDs a
        second from a thread that shares its core (and the GIL) with the env loop.
        """
        pool = self.r.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command([b"".join(parts)])  # one send: a syscall per part is slower
            replies: list[Any] = []
            for _ in range(n_replies):
                try:
                    replies.append(conn.read_response())
                except redis.ResponseError as e:  # this reply was read whole: go on
                    replies.append(e)
            return replies
        except BaseException:
            conn.disconnect()  # replies may be left unread: the connection cannot be reused
            raise
        finally:
            pool.release(conn)

    def throttled(self) -> bool:
        return bool(self.r.exists(self.keys.throttle))

    def subscribe(self) -> redis.client.PubSub:
        ps = self.r.pubsub(ignore_subscribe_messages=True)
        ps.subscribe(self.keys.model_channel, self.keys.commands)
        return ps


class TrainerLink(_Link):
    def __init__(self, r: redis.Redis, keys: Keys) -> None:
        super().__init__(r, keys)
        self._blob_r: redis.Redis | None = None

    def _blob_client(self) -> redis.Redis:
        """A second connection to the same server, made for multi-megabyte values.

        With hiredis installed, redis-py packs every command with hiredis, which copies a 4 MB
        argument slowly (5 to 20 ms on the development machine, against 0.3 ms for a plain
        copy). redis-py's own packer hands a large argument to the socket as it is.
        """
        if self._blob_r is None:
            pool = self.r.connection_pool
            packer = PartsPacker(6000, pool.get_encoder().encode)
            self._blob_r = redis.Redis(
                connection_pool=redis.ConnectionPool(
                    connection_class=pool.connection_class,
                    **{**pool.connection_kwargs, "command_packer": packer},
                )
            )
        return self._blob_r

    def close(self) -> None:
        if self._blob_r is not None:
            self._blob_r.close()
        super().close()

    def pop_samples(self, count: int, block: float) -> tuple[list[bytes], int]:
        """Up to `count` envelopes, oldest first, and how many stay queued after them (read in
        the same round trip); blocks up to `block` seconds when the queue is empty."""
        pipe = self.r.pipeline(transaction=False)
        pipe.rpop(self.keys.samples, count)
        pipe.llen(self.keys.samples)
        got, left = pipe.execute()
        if got:
            return list(got), int(left)
        if block <= 0:
            return [], 0
        item = self.r.brpop([self.keys.samples], timeout=block)
        return ([item[1]] if item else []), 0

    def queued_samples(self) -> int:
        return int(self.r.llen(self.keys.samples))

    def publish_weights(self, blob: bytes | Sequence[memoryview], model_id: int) -> None:
        """Weights, their model id and the notice to clients, in one transaction (one round
        trip). The blob, whole or in parts (`encode_weights_parts`), goes to the socket as it
        is: no copy is made of it on the way."""
        value = blob if isinstance(blob, (bytes, bytearray, memoryview)) else Parts(blob)
        pipe = self._blob_client().pipeline(transaction=True)
        pipe.set(self.keys.weights, value)  # type: ignore[arg-type]  # Parts: our packer
        pipe.set(self.keys.model_id, model_id)
        pipe.publish(self.keys.model_channel, str(model_id))
        try:
            pipe.execute()
        except redis.ResponseError as e:
            if "bulk length" not in str(e):
                raise
            parts = value if isinstance(value, Parts) else (value,)
            size = sum(memoryview(p).nbytes for p in parts)
            raise ConfigError(
                f"the weights ({size} bytes) are longer than Redis takes (its proto-max-bulk-len):"
                " raise it and training.max_weights_bytes (docs/deployment.md)"
            ) from None

    def publish_config(self, config_json: str, run_info: dict[str, str]) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.set(self.keys.config, config_json)
        pipe.delete(self.keys.run)
        pipe.hset(self.keys.run, mapping=run_info)
        pipe.execute()

    def set_stats(self, stats: dict[str, Any], alive_ttl: float = 10.0) -> bool:
        """Publish the counters and renew the liveness key (`trainer_alive`).

        Returns False when the published config or weights are gone (Redis restarted without
        persistence, or someone deleted them): the node must publish them again.
        """
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(self.keys.trainer_stats, mapping={k: str(v) for k, v in stats.items()})
        pipe.set(self.keys.trainer_alive, 1, px=int(alive_ttl * 1000))
        pipe.exists(self.keys.config, self.keys.weights)
        return int(pipe.execute()[-1]) == 2

    def clear_alive(self) -> None:
        """A clean stop: the training node is gone now, not only after the expiry."""
        self.r.delete(self.keys.trainer_alive)

    def pop_commands(self, count: int = 16) -> list[bytes]:
        return list(self.r.rpop(self.keys.trainer_commands, count) or [])

    def reply(self, token: str, answer: bytes, ttl: float = 300.0) -> None:
        """Answer a command that asked for it; kept `ttl` seconds for a late reader."""
        pipe = self.r.pipeline(transaction=True)
        pipe.lpush(self.keys.reply(token), answer)
        pipe.pexpire(self.keys.reply(token), int(ttl * 1000))
        pipe.execute()

    def set_throttle(self, on: bool, ttl: float = 3.0) -> None:
        """Pause (or resume) the clients: a key with an expiry plus a notification."""
        pipe = self.r.pipeline(transaction=False)
        if on:
            pipe.set(self.keys.throttle, 1, px=int(ttl * 1000))
        else:
            pipe.delete(self.keys.throttle)
        pipe.publish(self.keys.commands, encode_command("pause" if on else "resume"))
        pipe.execute()


class TelemetryLink(_Link):
    def read_episodes(self, cursor: str, count: int, block_ms: int) -> list[tuple[str, Any]]:
        """Entries after `cursor` as (id, raw field map); the caller keeps the cursor."""
        got = self.r.xread({self.keys.episodes: cursor}, count=count, block=block_ms)
        if not got:
            return []
        return [(_str(eid), fields) for eid, fields in got[0][1]]

    def run_info(self) -> dict[str, str]:
        return {_str(k): _str(v) for k, v in self.r.hgetall(self.keys.run).items()}

    def set_stats(self, stats: dict[str, Any]) -> None:
        self.r.hset(self.keys.telemetry_stats, mapping={k: str(v) for k, v in stats.items()})

    def trainer_env_steps(self) -> int:
        raw = _str(self.r.hget(self.keys.trainer_stats, "env_steps"))
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
        return (_str(first[0]) if first else None), str(_str(info.get("last-generated-id")))

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

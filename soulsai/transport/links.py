"""What each role does with Redis, as plain methods. Only transport/ imports redis.

- ClientLink: a sampling client's view (config and weights in, experience and episodes out).
- TrainerLink: the training node's view (experience in, weights/config/stats out, commands).
- TelemetryLink: the telemetry node's view (episode stream with a cursor, stats, commands).
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import redis
from redis.connection import PythonRespSerializer

from soulsai.transport.keys import Keys

# Errors a caller should treat as "Redis is away for now": retry later, lose nothing.
TRANSIENT = (redis.ConnectionError, redis.TimeoutError, OSError)
# A command Redis refused (out of memory, a read-only replica, no permission): a client's
# sender keeps what it holds and retries too, saying why.
REFUSED = (redis.ResponseError,)


def _str(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class _Link:
    def __init__(self, r: redis.Redis, keys: Keys) -> None:
        self.r = r
        self.keys = keys

    def model_id(self) -> int | None:
        raw = _str(self.r.get(self.keys.model_id))
        return int(raw) if raw is not None and raw.lstrip("-").isdigit() else None

    def connected_clients(self) -> int:
        return sum(1 for _ in self.r.scan_iter(match=self.keys.heartbeat_pattern, count=1000))

    def client_heartbeats(self) -> dict[str, dict]:
        out = {}
        prefix = len(self.keys.heartbeat(""))
        names = list(self.r.scan_iter(match=self.keys.heartbeat_pattern, count=1000))
        for key, raw in zip(names, self.r.mget(names) if names else [], strict=True):
            try:
                info = json.loads(raw) if raw and len(raw) < 4096 else {}
            except (ValueError, RecursionError):
                info = {}
            out[_str(key)[prefix:]] = info if isinstance(info, dict) else {}
        return out

    def trainer_alive(self) -> bool:
        return bool(self.r.exists(self.keys.trainer_alive))

    def stats(self, which: str) -> dict[str, str]:
        key = self.keys.trainer_stats if which == "trainer" else self.keys.telemetry_stats
        return {_str(k): _str(v) for k, v in self.r.hgetall(key).items()}

    def close(self) -> None:
        self.r.close()


class ClientLink(_Link):
    def register(self) -> int:
        """A fresh index for this client (epsilon ladder, seeds)."""
        return int(self.r.incr(self.keys.client_seq)) - 1

    def fetch_config(self) -> bytes | None:
        return self.r.get(self.keys.config)

    def fetch_weights(self) -> bytes | memoryview | None:
        """The weights blob (None before the first publish), read off the socket into one buffer.

        redis-py passes a reply through hiredis's buffer into a bytes object: two more copies of
        a blob that can be 40 MB, made while holding the GIL, so the env loop's thread waits.
        Here the kernel copies straight into the result, with the GIL released. A connection
        this cannot read directly (not a socket, data already waiting) takes the plain GET.
        """
        pool = self.r.connection_pool
        conn = pool.get_connection()
        try:
            return conn.retry.call_with_retry(
                lambda: self._get_blob(conn, self.keys.weights), lambda _: conn.disconnect()
            )
        except BaseException:
            conn.disconnect()  # a reply may be half read: the connection cannot be reused
            raise
        finally:
            pool.release(conn)

    @staticmethod
    def _get_blob(conn: Any, key: str) -> bytes | memoryview | None:
        if getattr(conn, "_sock", None) is None:
            conn.connect()
        sock = getattr(conn, "_sock", None)
        if not isinstance(sock, socket.socket) or conn.can_read(timeout=0):
            conn.send_command("GET", key)
            return conn.read_response()
        conn.send_command("GET", key)
        return _read_bulk(sock)

    def heartbeat(self, client_id: str, info: dict, ttl: float) -> None:
        self.r.set(self.keys.heartbeat(client_id), json.dumps(info), px=int(ttl * 1000))

    def push(
        self, samples: list[bytes], episodes: list[bytes], stream_maxlen: int, max_queue: int
    ) -> int:
        """One round trip for a whole outbox; raises TRANSIENT (Redis away) or REFUSED (a
        command refused) errors for the caller to retry.

        The experience list is trimmed to its newest `max_queue` messages in the same round
        trip, so a slow or stopped training node can never fill Redis's memory. Returns how
        many messages the queue held before that trim (0 without samples): those beyond
        `max_queue`, the oldest, were dropped.
        """
        samples_key, crlf = self.keys.samples.encode(), b"\r\n"
        parts: list[bytes] = []
        if samples:
            parts.append(_head(2 + len(samples), b"LPUSH", samples_key))
            for blob in samples:
                parts += (b"$%d\r\n" % len(blob), blob, crlf)
            parts.append(_head(4, b"LTRIM", samples_key, b"0", b"%d" % (max_queue - 1)))
        if episodes:  # XADD <stream> MAXLEN ~ <n> * m <record>
            head = _head(
                8, b"XADD", self.keys.episodes.encode(), b"MAXLEN", b"~", b"%d" % stream_maxlen,
                b"*", b"m",
            )  # fmt: skip
            for blob in episodes:
                parts += (head, b"$%d\r\n" % len(blob), blob, crlf)
        replies = self._round_trip(parts, (2 if samples else 0) + len(episodes))
        return int(replies[0]) if samples else 0

    def _round_trip(self, parts: list[bytes], n_replies: int) -> list[Any]:
        """Send commands packed by hand and read their replies, on one pooled connection.

        redis-py's pipeline spends about 8 us of CPU per command building and parsing it; by
        hand it is about 1.5 us. A client ending short episodes sends thousands of XADDs a
        second from a thread that shares its core (and the GIL) with the env loop.
        """
        pool = self.r.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command([b"".join(parts)])  # one send: a syscall per part is slower
            return [conn.read_response() for _ in range(n_replies)]
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
            packer = _PartsPacker(6000, pool.get_encoder().encode)
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
        value = blob if isinstance(blob, (bytes, bytearray, memoryview)) else _Parts(blob)
        pipe = self._blob_client().pipeline(transaction=True)
        pipe.set(self.keys.weights, value)  # type: ignore[arg-type]  # _Parts: our packer
        pipe.set(self.keys.model_id, model_id)
        pipe.publish(self.keys.model_channel, str(model_id))
        pipe.execute()

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

    def broadcast(self, command: bytes) -> None:
        self.r.publish(self.keys.commands, command)

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
        pipe.publish(self.keys.commands, json.dumps({"cmd": "pause" if on else "resume"}))
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
        """Ids of the clients whose heartbeat key exists."""
        n = len(self.keys.heartbeat(""))
        keys = self.r.scan_iter(match=self.keys.heartbeat_pattern, count=1000)
        return {str(_str(k))[n:] for k in keys}

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


class _Parts(tuple):
    """One command argument made of several buffers, sent back to back."""


class _PartsPacker(PythonRespSerializer):
    """redis-py's own command packer, which passes a large argument to the socket as it is, and
    sends a `_Parts` argument as one value without joining its buffers."""

    def pack(self, *args: Any) -> list:
        if not any(isinstance(a, _Parts) for a in args):
            return super().pack(*args)
        out: list = [b"*%d\r\n" % len(args)]
        for arg in args:
            if isinstance(arg, _Parts):
                out.append(b"$%d\r\n" % sum(memoryview(p).nbytes for p in arg))
                out += [memoryview(p).cast("B") for p in arg]
                out.append(b"\r\n")
            else:
                data = self.encode(arg)
                out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        return out


def _head(argc: int, *args: bytes) -> bytes:
    """The start of a Redis command in RESP: its argument count and its first arguments; the
    caller appends the rest."""
    return b"*%d\r\n" % argc + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def _read_bulk(sock: socket.socket) -> memoryview | None:
    """One RESP bulk-string reply (`$<n>`, CRLF, n bytes, CRLF; `$-1` or `_` for none) read into a
    buffer of its exact size. Only this reply is pending, so whatever arrives belongs to it."""
    head = b""
    while b"\r\n" not in head:
        if len(head) > 64:
            raise redis.InvalidResponse(f"not a bulk reply: {head[:32]!r}")
        chunk = sock.recv(65536)
        if not chunk:
            raise redis.ConnectionError("Redis closed the connection during a reply")
        head += chunk
    line, rest = head.split(b"\r\n", 1)
    if line.startswith(b"-"):
        raise redis.ResponseError(line[1:].decode(errors="replace"))
    if line in (b"$-1", b"_"):  # nil in RESP2, null in RESP3
        return None
    if not (line.startswith(b"$") and line[1:].isdigit()):
        raise redis.InvalidResponse(f"not a bulk reply: {line[:32]!r}")
    n = int(line[1:])
    got = len(rest)
    if got > n + 2:
        raise redis.InvalidResponse("more data than the reply announced")
    # not zero-filled (a bytearray would be): the socket writes every byte, the CRLF included
    out = np.empty(n + 2, np.uint8).data
    out[:got] = rest
    # a TLS socket takes no flags; on a plain one, MSG_WAITALL saves calls when it blocks
    flags = 0 if isinstance(sock, ssl.SSLSocket) else socket.MSG_WAITALL
    while got < n + 2:
        k = sock.recv_into(out[got:], n + 2 - got, flags)
        if k == 0:
            raise redis.ConnectionError("Redis closed the connection during a reply")
        got += k
    if out[n:] != b"\r\n":
        raise redis.InvalidResponse("bulk reply does not end with CRLF")
    return out[:n]


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

"""A sampling client's link: config and weights in, experience and episodes out."""

from __future__ import annotations

import json
import logging
import secrets
import socket
from dataclasses import dataclass, field
from typing import Any

import redis

from soulsai.errors import ProtocolError
from soulsai.transport.links import TRANSIENT, Link
from soulsai.transport.resp import command_head, read_bulk

log = logging.getLogger("soulsai.transport.links")  # the name its log lines always had

MAX_CONFIG_BYTES = 1 << 20  # the published config is a few kilobytes of JSON
CLIENT_INDEX_BOUND = 1 << 16  # client indexes (epsilon ladder, seeds) wrap around here


@dataclass
class Delivery:
    """What one `ClientLink.deliver` round stored: each command's reply is checked on its own,
    so a refused part is resent alone and nothing that arrived is sent twice."""

    queued: int = 0  # queue length before the trim (0 without samples)
    samples_ok: bool = True
    episodes_ok: list[bool] = field(default_factory=list)
    error: Exception | None = None  # the first refusal, if any


class ClientLink(Link):
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

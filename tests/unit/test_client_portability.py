"""The sampling client runs on Windows (SoulsGym is Windows only), which CI cannot test: the
client's modules use no POSIX-only call, and the one socket flag Windows refuses on a socket
with a timeout stays off there."""

from __future__ import annotations

import re
import socket
import sys
import threading
from pathlib import Path

import pytest

from soulsai.transport import resp

PKG = Path(__file__).resolve().parents[2] / "soulsai"
# What a client process loads. transport/embedded.py (the private redis-server of `soulsai
# train`) and transport/acl.py (`soulsai acl`) are server-side tools and may use POSIX calls.
CLIENT_PATH = [
    *sorted((PKG / "client").rglob("*.py")),
    *sorted((PKG / "envs").rglob("*.py")),
    *sorted((PKG / "config").rglob("*.py")),
    *sorted(p for p in (PKG / "model").glob("*.py") if p.name != "nets.py"),
    *sorted(
        p for p in (PKG / "transport").rglob("*.py") if p.name not in ("embedded.py", "acl.py")
    ),
    *sorted((PKG / "cli").glob("*.py")),
    *(PKG / name for name in ("errors.py", "logs.py", "__init__.py", "__main__.py")),
]
POSIX_ONLY = re.compile(
    r"os\.(killpg|setsid|setpgrp|getpgid|fork|forkpty|getuid|geteuid|getgid|nice|sync|"
    r"mkfifo|statvfs|getloadavg|sched_\w+)\b"
    r"|signal\.(SIGKILL|SIGHUP|SIGUSR1|SIGUSR2|SIGQUIT|SIGCHLD|SIGALRM|SIGPIPE|pause|alarm|"
    r"setitimer|pthread_kill)\b"
    r"|^\s*(import|from)\s+(fcntl|resource|pwd|grp|termios|pty|posix)\b"
    r"|os\.(wait4|WNOHANG|pipe2|posix_\w+|O_NOFOLLOW|O_CLOEXEC)\b"
    r"|select\.(poll|epoll|kqueue)\b|MSG_(NOSIGNAL|DONTWAIT)\b|[\"']/(dev|proc)/"
    r"|start_new_session|preexec_fn|AF_UNIX|get_context\(\s*[\"']fork",
    re.MULTILINE,
)


def test_client_path_uses_no_posix_only_call() -> None:
    found = [
        f"{path.relative_to(PKG.parent)}:{text[: m.start()].count(chr(10)) + 1}: {m.group(0)}"
        for path in CLIENT_PATH
        for text in [path.read_text(encoding="utf-8")]
        for m in POSIX_ONLY.finditer(text)
    ]
    assert found == []


class RecordingSocket:
    """A real socket that remembers the flags each recv_into was given."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.flags: list[int] = []

    def recv(self, n: int) -> bytes:  # the header, in small pieces: the body is left over
        return self.sock.recv(min(n, 8))

    def recv_into(self, buf, n: int, flags: int = 0) -> int:  # noqa: ANN001
        self.flags.append(flags)
        return self.sock.recv_into(buf, n, flags & ~socket.MSG_WAITALL)


@pytest.mark.parametrize("platform", ["win32", "linux"])
def test_read_bulk_asks_for_msg_waitall_only_where_a_timed_socket_takes_it(
    platform: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows fails recv with MSG_WAITALL on a socket that has a timeout (Python makes it
    non-blocking inside; WSAEOPNOTSUPP), and the client's weights are read from one."""
    payload = bytes(range(256)) * 64
    a, b = socket.socketpair()
    a.settimeout(5.0)
    sender = threading.Thread(
        target=lambda: b.sendall(b"$%d\r\n" % len(payload) + payload + b"\r\n")
    )
    sender.start()
    sock = RecordingSocket(a)
    try:
        monkeypatch.setattr(sys, "platform", platform)
        got = resp.read_bulk(sock)  # type: ignore[arg-type]
        monkeypatch.undo()
    finally:
        sender.join()
        a.close()
        b.close()
    assert bytes(got) == payload
    want = 0 if platform == "win32" else socket.MSG_WAITALL
    assert set(sock.flags) == {want}

"""The child processes of `soulsai train` and `soulsai server` (local.py): a free port for each
server, a child with its log, and stopping them all (SIGTERM, a grace period, then SIGKILL of
the process group)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
            return True
        except OSError:
            return False


def pick_port(port: int) -> int:
    """`port` when free, else a free one (0 stays 0: off)."""
    if port == 0 or port_free(port):
        return port
    return free_port()


def free_port() -> int:
    """A port the system calls free now (another process may still take it before it is bound)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


@dataclass
class Child:
    """A process of the stack, where its output goes, and a client's restart bookkeeping."""

    name: str
    proc: subprocess.Popen
    log_path: Path
    critical: bool = True
    args: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    fast_deaths: int = 0  # consecutive deaths soon after a start
    restart_at: float | None = None
    port_retries: int = 0  # starts on a new port after the picked one was taken meanwhile

    def tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def stop_processes(
    procs: Sequence[tuple[str, subprocess.Popen]],
    timeout: float,
    say: Callable[[str], None] = print,
) -> list[str]:
    """SIGTERM every running process, give them `timeout` seconds together, then SIGKILL
    whatever still runs (with its process group when it leads one, so nothing it started is
    left behind), saying which. Returns the names of the processes killed. A Ctrl-C (or
    SIGTERM, which `soulsai train` turns into one) while waiting kills the rest at once and
    is raised again after, so the caller can hurry too."""
    for _, proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    start = time.monotonic()
    killed: list[str] = []
    try:
        for _, proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, start + timeout - time.monotonic()))
    finally:
        for name, proc in procs:
            if proc.poll() is None:
                _kill(proc)
                killed.append(name)
                waited = time.monotonic() - start
                say(f"{name} (pid {proc.pid}) still running {waited:.0f} s after SIGTERM: killed")
        for _, proc in procs:
            proc.wait()
    return killed


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL a process that has not been reaped (so its pid is still its own), and its
    process group when it leads one (children start in their own session)."""
    if hasattr(os, "killpg"):
        try:
            if os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, signal.SIGKILL)
                return
        except ProcessLookupError:
            return
    proc.kill()

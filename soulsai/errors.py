"""One base error for the package; the CLI turns each into a one-line message and an exit code."""

from __future__ import annotations


class SoulsaiError(Exception):
    """Base of every expected failure. `exit_code` is what the CLI exits with."""

    exit_code = 1


class ConfigError(SoulsaiError):
    """Bad configuration or usage: names the key and the file. Nothing has been started."""

    exit_code = 2


class ConnectionFailed(SoulsaiError):
    """Redis unreachable, wrong password, or a malformed secret file."""

    exit_code = 1


class ProtocolError(SoulsaiError):
    """A message from the network failed validation. `reason` is a short counter label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class CheckpointError(SoulsaiError):
    """A checkpoint is missing, damaged or belongs to another env or algorithm."""

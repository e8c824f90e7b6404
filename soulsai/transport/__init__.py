"""Everything that touches Redis: key names, the wire codec, connections and role links."""

from __future__ import annotations

from typing import TypeVar

from soulsai.transport.client_link import ClientLink
from soulsai.transport.connection import RedisTarget, connect
from soulsai.transport.keys import Keys
from soulsai.transport.telemetry_link import TelemetryLink
from soulsai.transport.trainer_link import TrainerLink

L = TypeVar("L", ClientLink, TrainerLink, TelemetryLink)


def open_link(cls: type[L], target: RedisTarget, prefix: str, wait: float = 0.0) -> L:
    """Connect (retrying up to `wait` seconds) and wrap the client in a role link."""
    return cls(connect(target, wait=wait), Keys(prefix))


__all__ = ["ClientLink", "Keys", "RedisTarget", "TelemetryLink", "TrainerLink", "open_link"]

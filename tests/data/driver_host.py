"""What a driver uses of the node shell, in process: the driver tests' stand-in host."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from types import SimpleNamespace
from typing import Any


class Host(SimpleNamespace):
    """The shell's attributes come as keywords; learning, publishing and the finite-policy
    check do nothing (the tests read the driver, not what the shell would do next)."""

    def learned(self) -> None:
        pass

    def finite_policy(self) -> None:
        return None

    def publish(self, state: Any = None) -> None:
        pass


def dqn_host(cfg: Any) -> Host:
    """A host at the start of a run (one client, nothing accepted, model 0) for `cfg`."""
    return Host(
        cfg=cfg,
        lock=threading.RLock(),
        data_ready=threading.Event(),
        accepted=0,
        model_id=0,
        clients=1,
        env_steps=0,
        log=logging.getLogger("test"),
        intake=SimpleNamespace(rejected=Counter(), drained_at=0.0, queued_steps=lambda: 0.0),
    )

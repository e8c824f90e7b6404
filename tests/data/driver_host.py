"""What a driver uses of the node shell, in process: the driver tests' stand-in host."""

from __future__ import annotations

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

"""Logging helpers shared by every role."""

from __future__ import annotations

import logging
import time
from collections import Counter


class RateLimitedLog:
    """At most one line per `interval` seconds per reason; says how many were suppressed."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[str, float] = {}
        self._quiet: Counter[str] = Counter()

    def warning(self, reason: str, msg: str) -> None:
        now = time.monotonic()
        if now - self._last.get(reason, -1e9) >= self.interval:
            extra = (
                f" (+{self._quiet[reason]} more since last report)" if self._quiet[reason] else ""
            )
            self.logger.warning("%s%s", msg, extra)
            self._last[reason] = now
            self._quiet[reason] = 0
        else:
            self._quiet[reason] += 1

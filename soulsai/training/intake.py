"""Sample intake: drain Redis in batches with blocking reads, validate, hand over.

Runs in its own thread so the learner's gradient steps never stop Redis from being drained.
Every envelope is decoded and checked against the experience spec before it touches a
buffer; rejects are counted per reason and logged at a limited rate.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

from soulsai.errors import ProtocolError
from soulsai.transport.codec import Experience, ExperienceSpec, decode_experiences
from soulsai.transport.links import TRANSIENT, TrainerLink

log = logging.getLogger(__name__)


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


class Intake:
    """Pops envelopes, validates them, and calls `accept(experience)` for the good ones.

    `current_model` returns the newest model id; samples older than `max_delay` ids (or from a
    model id that does not exist yet) are rejected as stale / future.
    """

    def __init__(
        self,
        link: TrainerLink,
        spec: ExperienceSpec,
        accept: Callable[[Experience], None],
        current_model: Callable[[], int],
        max_delay: int,
        pop_count: int,
        stop: threading.Event,
        accept_many: Callable[[list[Experience]], None] | None = None,
    ) -> None:
        self.link = link
        self.spec = spec
        self.accept = accept
        self.accept_many = accept_many
        self.current_model = current_model
        self.max_delay = max_delay
        self.pop_count = pop_count
        self.stop = stop
        self.rejected: Counter[str] = Counter()
        self.env_steps = 0  # every decoded transition is an env step, stale or not
        self.messages = 0
        self.paused = threading.Event()
        self._log = RateLimitedLog(log)
        self._thread = threading.Thread(target=self._run, name="intake", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        backoff = 0.1
        while not self.stop.is_set():
            if self.paused.is_set():
                self.stop.wait(0.05)
                continue
            try:
                raws = self.link.pop_samples(self.pop_count, block=0.5)
                backoff = 0.1
            except TRANSIENT as e:
                self._log.warning(
                    "redis", f"intake cannot read Redis ({type(e).__name__}); retrying"
                )
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if raws:
                self.handle_many(raws)

    def handle(self, raw: bytes) -> bool:
        """Decode, validate and accept one envelope; True when accepted."""
        return self.handle_many([raw]) == 1

    def handle_many(self, raws: list[bytes]) -> int:
        """Decode and validate a batch of envelopes together, accept the good ones (through
        `accept_many` in one call when the node has it); returns how many were accepted."""
        self.messages += len(raws)
        newest = self.current_model()
        good: list[Experience] = []
        for exp in decode_experiences(raws, self.spec):
            if isinstance(exp, ProtocolError):
                self._reject(exp.reason, str(exp))
                continue
            self.env_steps += exp.n
            if exp.model_id > newest:
                self._reject("future_model", f"model id {exp.model_id} > newest {newest}")
            elif newest - exp.model_id > self.max_delay:
                self._reject("stale_model", f"model id {exp.model_id} lags newest {newest}", exp.n)
            else:
                good.append(exp)
        if good:
            if self.accept_many is not None:
                self.accept_many(good)
            else:
                for exp in good:
                    self.accept(exp)
        return len(good)

    def _reject(self, reason: str, detail: str, count: int = 1) -> None:
        self.rejected[reason] += count
        if reason != "stale_model":
            self._log.warning(reason, f"rejected experience message: {detail}")

"""Experience and episodes on their way to Redis: a bounded queue and a sender thread.

The env loop only appends; the sender wakes every `interval` seconds and ships everything
queued in one round trip. It is not woken per message: on a client with one core
every wake-up takes the CPU (and the GIL) from the env loop, and a round trip costs far more
than the messages in it. `eager` outboxes (PPO's: each message is a whole rollout fragment,
and the training node's iteration waits for the last one) wake the sender per message
instead. When Redis is away, or refuses the commands (out of memory, read-only), the sender
keeps what it holds and retries with backoff; only when the queue is full is the oldest
experience dropped (and counted). Episode records are kept.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from soulsai.transport.links import REFUSED, TRANSIENT, ClientLink

log = logging.getLogger(__name__)


class Outbox:
    def __init__(
        self,
        link: ClientLink,
        max_messages: int,
        stream_maxlen: int,
        max_queue: int,
        interval: float = 0.05,
        eager: bool = False,
    ) -> None:
        self.link = link
        self.max_queue = max_queue
        self.trimmed = 0  # queued messages in Redis dropped because the queue was full
        self.max_messages = max_messages
        self.stream_maxlen = stream_maxlen
        self._samples: deque[bytes] = deque()
        self._episodes: deque[bytes] = deque()
        self.interval = interval
        self.eager = eager
        self._lock = threading.Lock()
        self._wake = threading.Event()  # set to stop waiting: closing, or an eager put
        self._closing = False
        self.sent_samples = 0
        self.sent_episodes = 0
        self.dropped = 0
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)
        self._thread.start()

    def put_samples(self, blob: bytes) -> None:
        with self._lock:
            self._samples.append(blob)
            while len(self._samples) > self.max_messages:
                self._samples.popleft()
                self.dropped += 1
        if self.eager:
            self._wake.set()

    def put_episode(self, blob: bytes) -> None:
        with self._lock:
            self._episodes.append(blob)

    def pending(self) -> int:
        with self._lock:
            return len(self._samples) + len(self._episodes)

    def _run(self) -> None:
        backoff = 0.05
        while True:
            self._wake.wait(self.interval)
            if not self._closing:
                self._wake.clear()  # before taking the queue: a later put wakes the next round
            with self._lock:
                if not self._samples and not self._episodes:
                    if self._closing:
                        return
                    continue
                samples = list(self._samples)
                episodes = list(self._episodes)
                dropped_before = self.dropped
            try:
                queued = self.link.push(samples, episodes, self.stream_maxlen, self.max_queue)
            except (*TRANSIENT, *REFUSED) as e:
                self.failures += 1
                if self.failures == 1 or self.failures % 20 == 0:
                    log.warning(
                        "cannot send to Redis (%s: %s); keeping %d messages, retrying",
                        type(e).__name__,
                        str(e)[:200],
                        len(samples) + len(episodes),
                    )
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                if self._closing and self._give_up:
                    return
                continue
            backoff = 0.05
            self.trimmed += max(0, queued - self.max_queue)
            with self._lock:
                # Remove what was sent; drops may have taken some of it from the left meanwhile.
                for _ in range(max(0, len(samples) - (self.dropped - dropped_before))):
                    self._samples.popleft()
                for _ in range(len(episodes)):
                    self._episodes.popleft()
            self.sent_samples += len(samples)
            self.sent_episodes += len(episodes)

    _give_up = False

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (up to `timeout` seconds), then stop the sender."""
        self._closing = True
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._give_up = True
            self._thread.join(3.0)

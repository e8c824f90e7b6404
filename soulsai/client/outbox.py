"""Experience and episodes on their way to Redis: a bounded queue and a sender thread.

The env loop only appends; the sender wakes every `interval` seconds and ships everything
queued in one round trip. It is not woken per message: on a client with one core
every wake-up takes the CPU (and the GIL) from the env loop, and a round trip costs far more
than the messages in it. `eager` outboxes (PPO's: each message is a whole rollout fragment,
and the training node's iteration waits for the last one) wake the sender per message
instead. When Redis is away, or refuses the commands (out of memory, read-only), the sender
keeps what it holds and retries with backoff; only when the queue is full is the oldest
experience dropped (and counted). Each command's reply is checked on its own: what Redis
stored leaves the queue, only what it refused is sent again (no duplicates when, say, the
episode stream refuses its XADDs while the samples' LPUSH went through). The queue is bounded
in messages and in bytes (`max_bytes`), episode records also to `stream_maxlen` (what the stream
keeps); beyond that the oldest experience goes first, then the oldest episode records, each
counted and said once in the log.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from soulsai.transport.client_link import ClientLink, Delivery
from soulsai.transport.links import TRANSIENT

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
        max_bytes: int = 256 << 20,
    ) -> None:
        self.link = link
        self.max_queue = max_queue
        self.trimmed = 0  # queued messages in Redis dropped because the queue was full
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._bytes = 0  # held in _samples and _episodes
        self.dropped_episodes = 0
        self._full_logged = False
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
        self._streak = 0  # failed rounds in a row
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)
        self._thread.start()

    def put_samples(self, blob: bytes) -> None:
        with self._lock:
            self._samples.append(blob)
            self._bytes += len(blob)
            while len(self._samples) > self.max_messages:
                self._bytes -= len(self._samples.popleft())
                self.dropped += 1
            self._bound_bytes()
        if self.eager:
            self._wake.set()

    def put_episode(self, blob: bytes) -> None:
        """Queue an episode record; beyond `stream_maxlen` held (more than the stream keeps:
        a refusing stream must not make each round resend millions) the oldest goes."""
        with self._lock:
            self._episodes.append(blob)
            self._bytes += len(blob)
            while len(self._episodes) > self.stream_maxlen:
                self._bytes -= len(self._episodes.popleft())
                self.dropped_episodes += 1
            self._bound_bytes()

    def _bound_bytes(self) -> None:
        """Drop the oldest experience, then the oldest episode records, until the queue fits
        in `max_bytes` (the newest item always stays). Called with the lock held."""
        if self._bytes <= self.max_bytes:
            return
        if not self._full_logged:
            self._full_logged = True
            log.warning(
                "outbox holds over %d bytes (client.outbox_max_bytes): dropping the oldest "
                "experience until Redis takes messages again",
                self.max_bytes,
            )
        while self._bytes > self.max_bytes and len(self._samples) > 1:
            self._bytes -= len(self._samples.popleft())
            self.dropped += 1
        while self._bytes > self.max_bytes and len(self._episodes) > 1:
            self._bytes -= len(self._episodes.popleft())
            self.dropped_episodes += 1

    def pending(self) -> int:
        with self._lock:
            return len(self._samples) + len(self._episodes)

    def pending_bytes(self) -> int:
        with self._lock:
            return self._bytes

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
                dropped_before = (self.dropped, self.dropped_episodes)
            try:
                done = self.link.deliver(samples, episodes, self.stream_maxlen, self.max_queue)
            except TRANSIENT as e:  # Redis away: nothing is known to have arrived
                self._failed(e, len(samples) + len(episodes))
                backoff = self._wait(backoff)
                if self._closing and self._give_up:
                    return
                continue
            self._settle(samples, episodes, done, dropped_before)
            if done.error is not None:  # a refused part stays queued and is resent alone
                self._failed(done.error, self.pending())
                backoff = self._wait(backoff)
                if self._closing and self._give_up:
                    return
                continue
            backoff = 0.05
            if self._streak:
                log.info("Redis takes messages again")
            self._streak = 0
            self._full_logged = False

    def _settle(
        self, samples: list[bytes], episodes: list[bytes], done: Delivery, before: tuple[int, int]
    ) -> None:
        """Take what Redis stored out of the queue; keep what it refused, in order. `before`:
        the drop counters when the round's messages were taken (drops remove from the left,
        so the first ones of the round may be gone already)."""
        with self._lock:
            if done.samples_ok:
                self.trimmed += max(0, done.queued - self.max_queue)
                for _ in range(max(0, len(samples) - (self.dropped - before[0]))):
                    self._samples.popleft()
                self.sent_samples += len(samples)
            gone = self.dropped_episodes - before[1]
            refused = [
                blob
                for i, (blob, ok) in enumerate(zip(episodes, done.episodes_ok, strict=True))
                if not ok and i >= gone
            ]
            newer = list(self._episodes)[max(0, len(episodes) - gone) :]
            self._episodes = deque(refused + newer)
            self._bytes = sum(map(len, self._samples)) + sum(map(len, self._episodes))  # recount
            self.sent_episodes += sum(done.episodes_ok)

    def _failed(self, error: Exception, held: int) -> None:
        self.failures += 1
        self._streak += 1
        if self._streak == 1 or self._streak % 20 == 0:
            log.warning(
                "cannot send to Redis (%s: %s); keeping %d messages, retrying",
                type(error).__name__,
                str(error)[:200],
                held,
            )

    def _wait(self, backoff: float) -> float:
        time.sleep(backoff)
        return min(backoff * 2, 2.0)

    _give_up = False

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (up to `timeout` seconds), then stop the sender."""
        self._closing = True
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._give_up = True
            self._thread.join(3.0)

"""The client's control thread: new weights, heartbeats and server commands.

Weights are downloaded and decoded here, into a fresh policy object; the env loop only swaps
a reference, so a broadcast never stalls the env. A missed pub/sub notification is caught by
polling the model id; a dropped connection is re-opened with backoff.

Sampling is allowed (`may_sample`) unless the training node asks for a pause (throttle) or
Redis has been out of reach for longer than `offline_grace` seconds: whatever a client samples
then would be stale by the time it arrives, so it stops stepping (a game client stops pressing
keys) and resumes by itself once Redis answers and a model is published again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from soulsai.errors import ProtocolError
from soulsai.transport.client_link import ClientLink
from soulsai.transport.commands import decode_command
from soulsai.transport.links import TRANSIENT
from soulsai.transport.weights import decode_weights, weights_metadata

log = logging.getLogger(__name__)

CLIENT_COMMANDS = frozenset({"shutdown", "pause", "resume"})
MAX_DRAIN = 64  # pub/sub messages handled in one go before heartbeats and polls get a turn


class Control:
    def __init__(
        self,
        link: ClientLink,
        client_id: str,
        expected: dict[str, tuple[int, ...]],
        make_policy: Callable[[dict[str, Any]], Any],
        *,
        heartbeat_interval: float,
        heartbeat_timeout: float,
        poll_interval: float,
        max_bytes: int,
        status: Callable[[], dict],
        stop: threading.Event,
        offline_grace: float = 30.0,
    ) -> None:
        self.link = link
        self.client_id = client_id
        self.expected = expected
        self.make_policy = make_policy
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.poll_interval = poll_interval
        self.max_bytes = max_bytes
        self.status = status
        self.stop = stop
        self.model_id = -1
        self.meta: dict[str, Any] = {}
        self.latest: tuple[int, Any, dict] | None = None  # (model_id, policy, meta) to swap in
        self.rejected_weights = 0
        self.shutdown_requested = False
        self.offline_grace = offline_grace
        self.may_sample = threading.Event()  # cleared while paused: throttled or offline
        self.may_sample.set()
        self.throttled = False  # the training node asks for a pause
        self.offline = False  # Redis out of reach for longer than offline_grace
        self.offline_pauses = 0
        self._thread = threading.Thread(target=self._run, name="control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def load_current(self) -> bool:
        """Fetch and decode the current weights now; True when a policy is ready."""
        try:
            blob = self.link.fetch_weights(self.max_bytes)  # refused unread beyond max_bytes
            if blob is None:
                return False
            # the model we already run (a late or repeated notice): no need to decode it again
            if weights_metadata(blob, self.max_bytes)["model_id"] == self.model_id:
                return True
            tensors, meta = decode_weights(blob, self.expected, self.max_bytes)
        except ProtocolError as e:
            self.rejected_weights += 1
            log.warning("rejected weights from the server: %s", e)
            return False
        mid = meta["model_id"]  # an int: the codec checked it
        self.latest = (mid, self.make_policy(tensors), meta)
        self.model_id = mid
        self.meta = meta
        return True

    def _run(self) -> None:
        pubsub = None
        next_beat = next_poll = 0.0
        backoff = 0.1
        lost_at: float | None = None  # when the connection was lost (None: connected)
        while not self.stop.is_set():
            try:
                if pubsub is None:
                    pubsub = self.link.subscribe()
                now = time.monotonic()
                if now >= next_beat:
                    self.link.heartbeat(self.client_id, self.status(), self.heartbeat_timeout)
                    next_beat = now + self.heartbeat_interval
                if now >= next_poll:
                    current = self.link.model_id()
                    if current not in (None, self.model_id):
                        self.load_current()
                    self._set_paused(self.link.throttled())
                    if self.offline and current is not None:  # Redis and a trainer are back
                        self.offline = False
                        log.info("Redis is back and a model is published: sampling again")
                        self._apply()
                    next_poll = now + min(self.poll_interval, 0.5)
                # everything queued, then one download: a burst of notices costs one GET
                new_model, handled = False, 0
                msg = pubsub.get_message(timeout=0.2)
                while msg is not None:
                    new_model |= self._handle(msg)
                    handled += 1
                    msg = pubsub.get_message(timeout=0.0) if handled < MAX_DRAIN else None
                if new_model:
                    self.load_current()
                backoff, lost_at = 0.1, None
            except TRANSIENT as e:
                now = time.monotonic()
                if lost_at is None:
                    lost_at = now
                    log.warning("control connection lost (%s); retrying", type(e).__name__)
                self.throttled = False  # no one can lift a pause we cannot hear
                if not self.offline and now - lost_at >= self.offline_grace:
                    self.offline = True
                    self.offline_pauses += 1
                    log.warning(
                        "Redis out of reach for %.0fs (client.offline_grace): pausing sampling "
                        "until it is back",
                        now - lost_at,
                    )
                self._apply()  # within the grace: keep sampling into the outbox
                pubsub, next_poll = None, 0.0
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
        if pubsub is not None:
            with contextlib.suppress(TRANSIENT):
                pubsub.close()

    def _handle(self, msg: dict) -> bool:
        """Act on one pub/sub message; True when it announces a model other than ours."""
        channel = msg.get("channel")
        channel = channel.decode() if isinstance(channel, bytes) else channel
        if channel == self.link.keys.model_channel:
            data = msg.get("data")
            try:
                announced = int(data)
            except (TypeError, ValueError):
                return False
            return announced != self.model_id
        if channel == self.link.keys.commands:
            try:
                cmd = decode_command(msg.get("data"), CLIENT_COMMANDS)
            except ProtocolError:
                return False  # commands meant for other roles share the channel
            if cmd["cmd"] in ("pause", "resume"):
                self._set_paused(cmd["cmd"] == "pause")
            elif cmd["cmd"] == "shutdown":
                log.info("server asked to shut down")
                self.shutdown_requested = True
                self.stop.set()
                self.may_sample.set()
        return False

    def _set_paused(self, paused: bool) -> None:
        self.throttled = paused
        self._apply()

    def _apply(self) -> None:
        if (self.throttled or self.offline) and not self.stop.is_set():
            self.may_sample.clear()
        else:
            self.may_sample.set()

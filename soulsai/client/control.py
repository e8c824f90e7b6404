"""The client's control thread: new weights, heartbeats and server commands.

Weights are downloaded and decoded here, into a fresh policy object; the env loop only swaps
a reference, so a broadcast never stalls the env. A missed pub/sub notification is caught by
polling the model id; a dropped connection is re-opened with backoff.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from soulsai.errors import ProtocolError
from soulsai.transport.codec import decode_command, decode_weights, weights_metadata
from soulsai.transport.links import TRANSIENT, ClientLink

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
        self.may_sample = threading.Event()  # cleared while the training node asks for a pause
        self.may_sample.set()
        self._thread = threading.Thread(target=self._run, name="control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def load_current(self) -> bool:
        """Fetch and decode the current weights now; True when a policy is ready."""
        blob = self.link.fetch_weights()
        if blob is None:
            return False
        try:
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
        while not self.stop.is_set():
            try:
                if pubsub is None:
                    pubsub = self.link.subscribe()
                now = time.monotonic()
                if now >= next_beat:
                    self.link.heartbeat(self.client_id, self.status(), self.heartbeat_timeout)
                    next_beat = now + self.heartbeat_interval
                if now >= next_poll:
                    if self.link.model_id() not in (None, self.model_id):
                        self.load_current()
                    self._set_paused(self.link.throttled())
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
                backoff = 0.1
            except TRANSIENT as e:
                self.may_sample.set()  # without a server, keep sampling into the outbox
                log.warning(
                    "control connection lost (%s); retrying in %.1fs", type(e).__name__, backoff
                )
                pubsub = None
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
        if paused:
            self.may_sample.clear()
        else:
            self.may_sample.set()

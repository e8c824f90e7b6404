"""The DQN replay ratio as objects the learner asks, not arithmetic spread through the node.

`ReplayRatio` says how many gradient steps the learner owes for what the intake accepted:
`replay_ratio / batch_size` per transition, nothing before learning starts, nothing for what a
resumed checkpoint brought or what was forgiven. `PauseGate` says when to pause the clients
(the learner owes `max_update_debt` steps) and when to let them sample again (at half), and
which samples come from clients that ignore a pause. Their arithmetic is pure: the caller passes
the counters and the clock, so it is tested without Redis; `PauseGate.steer` and `release` apply
it through the trainer link, once for every driver that throttles. The idea is Acme's rate
limiter between inserts and samples; the shape here is our own.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from soulsai.transport.links import TRANSIENT

# An honest client stops within a poll of the throttle key (0.5 s) of a pause. Samples pushed
# after Redis's queue was seen empty more than PAUSE_GRACE into a pause come from clients that
# ignore it, and so do samples more than PAUSE_FLOOD into a pause whose queue never emptied:
# their updates are forgiven, not owed.
PAUSE_GRACE = 2.0
PAUSE_FLOOD = 30.0
PAUSE_RENEW = 1.0  # seconds between renewals of a pause (the throttle key expires after 3 s)


class ReplayRatio:
    """Gradient steps owed for accepted transitions, and what is settled (paid or forgiven).

    `base` counts accepted transitions that owe nothing (warm-up, a resumed checkpoint's,
    forgiven ones); `start_updates` the learner updates the node started with. `accepted` and
    `updates` are the node's running totals, passed in by the caller.
    """

    def __init__(
        self, replay_ratio: float, batch_size: int, max_update_debt: int, throttle: bool
    ) -> None:
        self.replay_ratio = replay_ratio
        self.batch_size = batch_size
        self.max_update_debt = max_update_debt
        self.throttle = throttle
        self.base = 0.0
        self.start_updates = 0
        self.forgiven = 0.0  # accepted transitions whose updates were forgiven

    def steps_for(self, transitions: float) -> float:
        """Gradient steps that `transitions` accepted transitions owe."""
        return transitions * self.replay_ratio / self.batch_size

    def paid(self, updates: int) -> int:
        """Updates done since the node started (or resumed)."""
        return updates - self.start_updates

    def debt(self, accepted: int, updates: int) -> float:
        """Gradient steps owed for what was accepted (and not forgiven), less those paid."""
        return self.steps_for(accepted - self.base) - self.paid(updates)

    def owed(self, accepted: int, updates: int, learning: bool) -> int:
        """Whole gradient steps the learner should take now.

        Before learning starts nothing is owed, and what arrives meanwhile never will be.
        Paused clients stop new samples, but what they sent before they saw the pause still
        arrives: it is owed too, so the ratio holds. With throttling off, debt beyond
        `max_update_debt` is forgiven instead (the learner cannot catch up by pausing anyone).
        """
        if not learning:
            self.base = accepted
            return 0
        owed = self.debt(accepted, updates)
        if not self.throttle and owed > self.max_update_debt:
            self.forgive((owed - self.max_update_debt) * self.batch_size / self.replay_ratio)
            owed = self.max_update_debt
        return int(owed)

    def pending(self, accepted: int, updates: int, queued_steps: float, learning: bool) -> int:
        """Steps owed counting what still waits in Redis's queue: it will be owed once popped,
        and a growing queue means the clients outrun the learner (what the pause looks at)."""
        if not learning:
            return 0
        return int(self.debt(accepted, updates) + self.steps_for(queued_steps))

    def forgive(self, transitions: float) -> None:
        """Owe nothing for `transitions` accepted transitions."""
        self.base += transitions
        self.forgiven += transitions

    def settled(self, updates: int) -> float:
        """Accepted transitions whose updates are paid or forgiven (for ClientShares)."""
        return self.base + self.paid(updates) * self.batch_size / self.replay_ratio

    def restart(self, accepted: int, updates: int) -> None:
        """A resumed node: what the checkpoint counted owes nothing, its updates are not ours."""
        self.base = accepted
        self.start_updates = updates


class PauseGate:
    """Pause the clients while `max_update_debt` steps are owed; let them go at half of it.

    `decide` says what the throttle key should be now (None: leave it); the caller sets it in
    Redis and, when that worked, calls `applied`. A pause is renewed every `renew` seconds so
    that the key outlives no dead trainer by long.
    """

    def __init__(
        self,
        max_update_debt: int,
        grace: float = PAUSE_GRACE,
        flood: float = PAUSE_FLOOD,
        renew: float = PAUSE_RENEW,
    ) -> None:
        self.max_update_debt = max_update_debt
        self.grace = grace
        self.flood = flood
        self.renew = renew
        self.paused = False
        self.paused_at = 0.0  # monotonic time the current pause began
        self.renew_at = 0.0
        self.count = 0  # pauses set, renewals included
        self._lock = threading.Lock()  # the learner loop and the intake thread both steer

    def wants_pause(self, owed: int) -> bool:
        """Pause at `max_update_debt` owed steps; once paused, stay so above half of it."""
        if owed >= self.max_update_debt:
            return True
        return self.paused and owed > self.max_update_debt // 2

    def decide(self, owed: int, now: float) -> bool | None:
        """The throttle state to set now, or None when the key is as it should be."""
        want = self.wants_pause(owed)
        if want == self.paused and not (want and now >= self.renew_at):
            return None
        return want

    def applied(self, on: bool, now: float) -> None:
        """Redis holds the throttle state `on` as of `now`."""
        if on and not self.paused:
            self.paused_at = now
        self.paused = on
        self.renew_at = now + self.renew
        self.count += int(on)

    def steer(self, owed: Callable[[], int], set_throttle: Callable[[bool], Any]) -> None:
        """Set the throttle key (`set_throttle`, the trainer link's) to what `decide` says for
        the updates `owed()` reports now, one caller at a time; Redis away: the next call tries."""
        with self._lock:
            now = time.monotonic()
            want = self.decide(owed(), now)
            if want is None:
                return
            try:
                set_throttle(want)
            except TRANSIENT:
                return
            self.applied(want, now)

    def release(self, set_throttle: Callable[[bool], Any]) -> None:
        """Let paused clients sample again (the node stops)."""
        if self.paused:
            with contextlib.suppress(*TRANSIENT):
                set_throttle(False)

    def ignored(self, drained_at: float, now: float) -> bool:
        """True when samples arriving now were sent by clients that ignore the pause: pushed
        after Redis's queue was seen empty well into it, or long after it began."""
        if drained_at - self.paused_at > self.grace:
            return True
        return now - self.paused_at > self.flood

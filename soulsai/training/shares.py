"""Each client's share of the replay debt: no client id may owe more than its cap.

The DQN node owes `replay_ratio / batch_size` updates per accepted transition and pauses every
client while it owes too many. Without a per-client bound, one client could push a few huge
envelopes (20 x 4096 transitions) and pause all the others for minutes. A client's unsettled
transitions (accepted, their updates not yet paid or forgiven) are capped: what the learner
settles is credited to every client, and a client at its cap has the rest of its envelopes
dropped (counted as `over_share`). Client ids are not authenticated, so a forger with many ids
gets many shares; the cap still bounds what each message and id can do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

MAX_TRACKED = 65536  # client ids with unsettled transitions kept at most (forged ids: forget all)


class ClientShares:
    """Admit transitions per client id within `cap` unsettled ones (0: no cap).

    `settled()` is the node's running total of settled transitions (paid or forgiven);
    `active()` is False before learning starts, when nothing is owed and nothing is capped.
    Used by the intake thread only.
    """

    def __init__(
        self, cap: float, settled: Callable[[], float], active: Callable[[], bool]
    ) -> None:
        self.cap = cap
        self._settled = settled
        self._active = active
        self._unsettled: dict[str, float] = {}  # only clients that owe something
        self._last: float | None = None

    def admit(self, client_ids: Sequence[str] | np.ndarray, counts: np.ndarray) -> np.ndarray:
        """How many of each envelope's `counts` transitions to keep (the first ones)."""
        counts = np.asarray(counts, np.int64)
        if self.cap <= 0 or not self._active():
            self._unsettled.clear()
            self._last = None
            return counts
        self._credit()
        allowed = counts.copy()
        for i, (cid, n) in enumerate(zip(client_ids, counts.tolist(), strict=True)):
            owed = self._unsettled.get(cid, 0.0)
            take = min(n, max(0, int(self.cap - owed)))
            allowed[i] = take
            if take:
                if len(self._unsettled) >= MAX_TRACKED and cid not in self._unsettled:
                    self._unsettled.clear()
                self._unsettled[cid] = owed + take
        return allowed

    def _credit(self) -> None:
        """Credit what was settled since the last call to every client."""
        now = self._settled()
        paid = 0.0 if self._last is None else now - self._last
        self._last = now
        if paid > 0:
            self._unsettled = {c: v - paid for c, v in self._unsettled.items() if v > paid}

"""n-step return folding on the client, one accumulator per env copy.

A transition that starts at step t and spans k steps carries
reward = sum_{i<k} gamma**i * r_{t+i} and next_obs = s_{t+k}; the learner bootstraps with
gamma**k * Q(s_{t+k}) unless `terminated` is set. Truncated episodes bootstrap from their final
observation, so only a real termination sets `terminated`.
"""

from __future__ import annotations

from collections import deque
from typing import Any, NamedTuple


class NStepTransition(NamedTuple):
    """A folded transition of `steps` (1..n) environment steps."""

    obs: Any
    action: Any
    reward: float
    next_obs: Any
    terminated: bool
    steps: int


class NStepAccumulator:
    """Turns a stream of 1-step transitions of one env copy into n-step transitions.

    While an episode runs, every push after the first n-1 emits the transition that started
    n steps back. When the episode ends (terminated or truncated) all pending transitions are
    emitted, each spanning the steps up to the end, and the accumulator starts empty again.
    """

    def __init__(self, n: int, gamma: float) -> None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.n = n
        self.gamma = gamma
        self._pending: deque[tuple[Any, Any, float]] = deque()  # (obs, action, reward)

    def __len__(self) -> int:
        return len(self._pending)

    def push(
        self,
        obs: Any,
        action: Any,
        reward: float,
        next_obs: Any,
        terminated: bool,
        truncated: bool,
    ) -> list[NStepTransition]:
        """Add one env step; return the n-step transitions that are complete now (maybe none)."""
        self._pending.append((obs, action, float(reward)))
        if terminated or truncated:
            out: list[NStepTransition] = []
            ret = 0.0
            for k, (o, a, r) in enumerate(reversed(self._pending), start=1):
                ret = r + self.gamma * ret
                out.append(NStepTransition(o, a, ret, next_obs, bool(terminated), k))
            self._pending.clear()
            out.reverse()
            return out
        if len(self._pending) < self.n:
            return []
        ret = 0.0
        for _, _, r in reversed(self._pending):
            ret = r + self.gamma * ret
        o, a, _ = self._pending.popleft()
        return [NStepTransition(o, a, ret, next_obs, False, self.n)]

    def reset(self) -> None:
        """Drop pending steps (the env was recreated mid-episode)."""
        self._pending.clear()

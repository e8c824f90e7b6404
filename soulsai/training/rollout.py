"""PPO's rollout storage: the fragments of one model id, turned into a training batch by GAE.

Each experience message holds whole fragments (see `ppo_experience_spec`): rows of one env copy
in time order, with the value the client's model gave each observation and `next_value`, the
value of the observation that followed. That makes every message self-contained, so GAE runs
per message, in any order, and is exact: nothing is bootstrapped from a guess.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

REWARD_CLIP = 10.0  # scaled rewards are clipped to +-this (as gymnasium's NormalizeReward users do)


class RolloutBatch(NamedTuple):
    """One iteration's training data (torch tensors, first dimension = transitions)."""

    obs: torch.Tensor
    actions: torch.Tensor
    logprobs: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    values: torch.Tensor


def compute_gae(
    rewards: np.ndarray,
    values: np.ndarray,
    next_values: np.ndarray,
    terminated: np.ndarray,
    ends: np.ndarray,
    gamma: float,
    gae_lambda: float,
) -> tuple[np.ndarray, np.ndarray]:
    """GAE(lambda) advantages and returns (= advantages + values) over rows in time order.

    delta_t = r_t + gamma * V(s_{t+1}) * (1 - terminated_t) - V(s_t)
    A_t     = delta_t + gamma * lambda * A_{t+1},   with A_{t+1} := 0 where ends_t is set.

    `ends_t` marks rows whose trajectory does not continue into row t+1 (episode end or
    fragment end); nothing follows the last row. A truncated episode still bootstraps from
    `next_values` (the value of its final observation); only termination stops bootstrapping.
    """
    n = len(rewards)
    advantages = np.zeros(n, dtype=np.float32)
    lastgaelam = 0.0
    for t in reversed(range(n)):
        if ends[t]:
            lastgaelam = 0.0
        delta = rewards[t] + gamma * next_values[t] * (1.0 - terminated[t]) - values[t]
        lastgaelam = delta + gamma * gae_lambda * lastgaelam
        advantages[t] = lastgaelam
    returns = advantages + values.astype(np.float32)
    return advantages, returns


class RolloutBuffer:
    """The accepted fragments of the current model id, turned into one `RolloutBatch`.

    Not thread-safe: the caller serializes `add` and `take` with its own lock.
    """

    def __init__(self, gamma: float, gae_lambda: float) -> None:
        self.gamma = gamma
        self.gae_lambda = gae_lambda
        self._parts: list[dict[str, np.ndarray]] = []
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, fields: dict[str, np.ndarray]) -> None:
        self._parts.append(fields)
        self.size += len(fields["reward"])

    def take(self) -> list[dict[str, np.ndarray]]:
        """Everything added so far; the buffer starts empty again."""
        parts, self._parts, self.size = self._parts, [], 0
        return parts

    def compute_returns_and_advantage(
        self, parts: list[dict[str, np.ndarray]], reward_scale: float = 1.0
    ) -> RolloutBatch:
        """GAE per message (each is self-contained), rewards multiplied by `reward_scale` first."""
        advantages, returns = [], []
        for f in parts:
            rewards = f["reward"].astype(np.float32) * reward_scale
            if reward_scale != 1.0:
                rewards = np.clip(rewards, -REWARD_CLIP, REWARD_CLIP)
            ends = (f["terminated"] | f["truncated"] | f["last"]).astype(bool)
            adv, ret = compute_gae(
                rewards,
                f["value"],
                f["next_value"],
                f["terminated"].astype(np.float32),
                ends,
                self.gamma,
                self.gae_lambda,
            )
            advantages.append(adv)
            returns.append(ret)

        def cat(name: str) -> torch.Tensor:
            return torch.from_numpy(np.concatenate([f[name] for f in parts]))

        return RolloutBatch(
            obs=cat("obs"),
            actions=cat("action"),
            logprobs=cat("logprob"),
            advantages=torch.from_numpy(np.concatenate(advantages)),
            returns=torch.from_numpy(np.concatenate(returns)),
            values=cat("value"),
        )

"""PPO's rollout storage: the fragments of one model id, turned into a training batch by GAE.

Each experience message holds whole fragments (see `ppo_experience_spec`): rows of one env copy
in time order, with the value the client's model gave each observation and `next_value`, the
value of the observation that followed. That makes every message self-contained, so GAE runs
per message, in any order, and is exact: nothing is bootstrapped from a guess.

Observations are kept as the wire brought them, leaf by leaf (`obs` for a bare Box, `obs.<key>`
for a Dict's leaves), and so are the valid-action masks (`mask`, bool, already unpacked and
checked by the driver) when the run uses them. With a recurrent policy each message also holds
`initial_state` (n_fragments, S), its fragments' initial states as the driver reassembled them;
the batch keeps them with the rows marking episode starts inside fragments (`episode_starts`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from soulsai.model.obs import ObsLayout
from soulsai.model.obs_wire import from_fields
from soulsai.training.device import to_device

REWARD_CLIP = 10.0  # scaled rewards are clipped to +-this (as gymnasium's NormalizeReward users do)


ObsBatch = torch.Tensor | dict[str, torch.Tensor]  # a bare Box's tensor, or leaves by name


class RolloutBatch(NamedTuple):
    """One iteration's training data (torch tensors, first dimension = transitions): the
    observations (one tensor for a bare Box, else one per leaf) and, when the run masks
    actions, the valid-action masks (bool (N, n_actions)) the actions were sampled under.
    Recurrent runs: `states` (n_fragments, S) the fragments' initial states, the rows being
    the fragments one after another, and `starts` (bool (N,)) the rows an episode starts at
    inside a fragment (the core's state is zeroed before them)."""

    obs: ObsBatch
    actions: torch.Tensor
    logprobs: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    values: torch.Tensor
    masks: torch.Tensor | None = None
    states: torch.Tensor | None = None
    starts: torch.Tensor | None = None


def index_obs(obs: ObsBatch, idx: torch.Tensor) -> ObsBatch:
    """The rows `idx` of a batch of observations (every leaf alike)."""
    if isinstance(obs, dict):
        return {name: leaf[idx] for name, leaf in obs.items()}
    return obs[idx]


def obs_to(obs: ObsBatch, device: torch.device) -> ObsBatch:
    return to_device(obs, device)  # pinned and asynchronous on a CUDA device


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


def episode_starts(terminated: np.ndarray, truncated: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Rows (in time order, fragment after fragment) at which an episode starts inside a
    fragment: the row before ended its episode and was not its fragment's last. A fragment's
    first row is never one: its initial state already says where it starts."""
    ended = (np.asarray(terminated, bool) | np.asarray(truncated, bool)) & ~np.asarray(last, bool)
    starts = np.zeros(len(ended), dtype=bool)
    starts[1:] = ended[:-1]
    return starts


class RolloutBuffer:
    """The accepted fragments of the current model id, turned into one `RolloutBatch`.

    Not thread-safe: the caller serializes `add` and `take` with its own lock.
    """

    def __init__(self, gamma: float, gae_lambda: float, layout: ObsLayout | None = None) -> None:
        self.gamma = gamma
        self.gae_lambda = gae_lambda
        self.layout = layout  # None: the observation is the one field "obs"
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

        recurrent = bool(parts) and "initial_state" in parts[0]
        starts = None
        if recurrent:
            starts = np.concatenate(
                [episode_starts(f["terminated"], f["truncated"], f["last"]) for f in parts]
            )
        return RolloutBatch(
            obs=_tensors(self.observations(parts)),
            actions=cat("action"),
            logprobs=cat("logprob"),
            advantages=torch.from_numpy(np.concatenate(advantages)),
            returns=torch.from_numpy(np.concatenate(returns)),
            values=cat("value"),
            masks=cat("mask") if parts and "mask" in parts[0] else None,
            states=cat("initial_state") if recurrent else None,
            starts=None if starts is None else torch.from_numpy(starts),
        )

    def observations(
        self, parts: list[dict[str, np.ndarray]]
    ) -> np.ndarray | dict[str, np.ndarray]:
        """The observations of `parts`, concatenated: the array of a bare Box (or of any space
        when no layout was given), else the layout's leaves by name."""
        if self.layout is None or self.layout.plain:
            return np.concatenate([f["obs"] for f in parts])
        names = [name for name in parts[0] if name == "obs" or name.startswith("obs.")]
        merged = {name: np.concatenate([f[name] for f in parts]) for name in names}
        return from_fields(self.layout, merged)


def _tensors(obs: np.ndarray | dict[str, np.ndarray]) -> ObsBatch:
    if isinstance(obs, dict):
        return {name: torch.from_numpy(a) for name, a in obs.items()}
    return torch.from_numpy(obs)

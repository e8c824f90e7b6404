"""The experience message of each algorithm, derived from the env's spaces.

Clients encode exactly these fields; the training node validates against the same spec.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from soulsai.errors import ConfigError
from soulsai.transport.codec import ExperienceSpec, FieldSpec


def space_field(space: gym.Space, what: str) -> FieldSpec:
    """FieldSpec for one item of `space` (Box: its dtype and shape; Discrete: an int64)."""
    if isinstance(space, gym.spaces.Box):
        return FieldSpec(space.dtype, tuple(space.shape))
    if isinstance(space, gym.spaces.Discrete):
        return FieldSpec(np.int64, (), low=int(space.start), high=int(space.start + space.n - 1))
    raise ConfigError(f"env: {what} space {type(space).__name__} is not supported (Box, Discrete)")


def dqn_experience_spec(
    obs_space: gym.Space, action_space: gym.Space, n_step: int, max_batch: int, max_bytes: int
) -> ExperienceSpec:
    """n-step transitions: obs, action, n-step reward, obs k steps later, terminated, k."""
    if not isinstance(action_space, gym.spaces.Discrete):
        raise ConfigError(f"env: DQN needs a Discrete action space, got {action_space}")
    obs = space_field(obs_space, "observation")
    return ExperienceSpec(
        fields={
            "obs": obs,
            "action": FieldSpec(np.int64, (), low=0, high=int(action_space.n) - 1),
            "reward": FieldSpec(np.float32),
            "next_obs": obs,
            "terminated": FieldSpec(np.uint8, (), low=0, high=1),
            "steps": FieldSpec(np.uint8, (), low=1, high=n_step),
        },
        max_batch=max_batch,
        max_bytes=max_bytes,
    )


def ppo_experience_spec(
    obs_space: gym.Space, action_space: gym.Space, max_batch: int, max_bytes: int
) -> ExperienceSpec:
    """Rollout fragments: per row one env step of one env copy, rows of a copy in time order.

    GAE is exact from these fields alone: `next_value` is V(s_{t+1}) under the same model (the
    value of the true final observation on truncation, of the observation after the fragment's
    last step at its end), and a trajectory continues into the next row unless `terminated`,
    `truncated` or `last` is set.
    """
    if isinstance(action_space, gym.spaces.Discrete):
        action = FieldSpec(np.int64, (), low=0, high=int(action_space.n) - 1)
    elif isinstance(action_space, gym.spaces.Box):
        action = FieldSpec(np.float32, tuple(action_space.shape))  # the raw Gaussian sample
    else:
        raise ConfigError(
            f"env: PPO needs a Discrete or Box action space, got {type(action_space).__name__}"
        )
    flag = FieldSpec(np.uint8, (), low=0, high=1)
    return ExperienceSpec(
        fields={
            "obs": space_field(obs_space, "observation"),
            "action": action,
            "reward": FieldSpec(np.float32),
            "terminated": flag,
            "truncated": flag,
            "last": flag,
            "logprob": FieldSpec(np.float32),
            "value": FieldSpec(np.float32),
            "next_value": FieldSpec(np.float32),
            "disc_return": FieldSpec(np.float32),
        },
        max_batch=max_batch,
        max_bytes=max_bytes,
    )

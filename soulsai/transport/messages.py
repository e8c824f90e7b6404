"""The messages of each algorithm, derived from the config and the env's spaces.

Experience: clients encode exactly these fields; the training node validates against the same
spec. Weights: the tensor names and shapes a valid model carries (the network's state_dict),
worked out without torch, so that a client machine needs numpy only.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np

from soulsai.config.schema import DQNConfig, PPOConfig
from soulsai.errors import ConfigError
from soulsai.transport.codec import ExperienceSpec, FieldSpec

# The observation normalizer shipped with the weights: (obs - mean) / sqrt(var + NORM_EPS),
# clipped to +-NORM_CLIP. The training node's torch module and the clients' numpy use these.
NORM_EPS = 1e-8
NORM_CLIP = 10.0


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
    else:  # the raw Gaussian sample
        action = FieldSpec(np.float32, action_shape(action_space))
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


def action_shape(action_space: gym.Space) -> tuple[int, ...]:
    """Shape of one PPO action: () for Discrete, the Box's shape; other spaces: ConfigError."""
    if isinstance(action_space, gym.spaces.Discrete):
        return ()
    if isinstance(action_space, gym.spaces.Box):
        return tuple(action_space.shape)
    raise ConfigError(
        f"env: PPO needs a Discrete or Box action space, got {type(action_space).__name__}"
    )


Shapes = dict[str, tuple[int, ...]]


def _normalizer_shapes(obs_shape: tuple[int, ...]) -> Shapes:
    return {"obs_norm.mean": obs_shape, "obs_norm.var": obs_shape, "obs_norm.count": ()}


def _linears(prefix: str, first: int, sizes: list[int]) -> Shapes:
    """Linear layers of an nn.Sequential that interleaves activations: indices first,
    first + 2, ...; `sizes` are the features in, then out of each layer."""
    shapes: Shapes = {}
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        shapes[f"{prefix}.{first + 2 * i}.weight"] = (n_out, n_in)
        shapes[f"{prefix}.{first + 2 * i}.bias"] = (n_out,)
    return shapes


def dqn_weight_shapes(cfg: DQNConfig, obs_shape: tuple[int, ...], n_actions: int) -> Shapes:
    """The state_dict of soulsai.nets.QNetwork: normalizer, then mlp = Flatten, Linear, ReLU,
    ..., Linear (so its Linear layers sit at odd indices)."""
    sizes = [math.prod(obs_shape), *cfg.hidden, n_actions]
    return {**_normalizer_shapes(tuple(obs_shape)), **_linears("mlp", 1, sizes)}


def ppo_weight_shapes(cfg: PPOConfig, obs_space: gym.Space, action_space: gym.Space) -> Shapes:
    """The state_dict of soulsai.nets.ActorCritic for this config and these spaces."""
    obs_shape = tuple(obs_space.shape or ())
    if isinstance(action_space, gym.spaces.Discrete):
        action_dim = int(action_space.n)
    else:
        action_dim = math.prod(action_shape(action_space))
    n_in, hidden = math.prod(obs_shape), list(cfg.hidden)
    shapes = _normalizer_shapes(obs_shape)
    if cfg.shared_network:
        shapes |= _linears("torso", 0, [n_in, *hidden])
        shapes |= _linears("actor", 0, [hidden[-1], action_dim])
        shapes |= _linears("critic", 0, [hidden[-1], 1])
    else:
        shapes |= _linears("actor", 0, [n_in, *hidden, action_dim])
        shapes |= _linears("critic", 0, [n_in, *hidden, 1])
    if not isinstance(action_space, gym.spaces.Discrete):
        shapes["log_std"] = (action_dim,)
    return shapes

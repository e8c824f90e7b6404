"""The messages of each algorithm, derived from the config and the env's spaces.

Experience: clients encode exactly these fields; the training node validates against the same
spec. Weights: the tensor names and shapes a valid model carries (the network's state_dict),
worked out without torch, so that a client machine needs numpy only.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np

from soulsai.config.schema import DQNConfig, PPOConfig
from soulsai.errors import ConfigError
from soulsai.transport.codec import ExperienceSpec, FieldSpec

# The observation normalizer shipped with the weights: (obs - mean) / sqrt(var + NORM_EPS),
# clipped to +-NORM_CLIP. The training node's torch module and the clients' numpy use these.
NORM_EPS = 1e-8
NORM_CLIP = 10.0


# Defaults of training.max_abs_obs / training.max_abs_reward (see config_d.yaml): what no
# honest env sends, and far enough from float32's 3.4e38 that sums, squares and running
# variances of bounded values stay finite.
MAX_ABS_OBS = 1e6
MAX_ABS_REWARD = 1e6


def box_bounds(space: gym.spaces.Box, max_abs: float) -> tuple[float | None, float | None]:
    """(low, high) every element of a received observation of `space` must lie within.

    One pair per leaf (two reductions per field on the intake's hot path): the lowest and
    highest of the Box's bounds, each side widened by the Box's widest interval, since envs
    overstep their declared bounds a little (LunarLander's angle is not wrapped). A side with
    an infinite bound, or one beyond +-`max_abs` (some envs declare float32's max), is
    +-`max_abs`. An integer Box whose dtype cannot leave the bounds needs no check.
    """
    lo = np.asarray(space.low, np.float64).reshape(-1)
    hi = np.asarray(space.high, np.float64).reshape(-1)
    if lo.size == 0:
        return -max_abs, max_abs
    lo_ok = bool(np.isfinite(lo).all() and np.abs(lo).max() <= max_abs)
    hi_ok = bool(np.isfinite(hi).all() and np.abs(hi).max() <= max_abs)
    width = float((hi - lo).max()) if lo_ok and hi_ok else 0.0
    low = float(lo.min()) - width if lo_ok else -max_abs
    high = float(hi.max()) + width if hi_ok else max_abs
    if np.issubdtype(space.dtype, np.integer):
        info = np.iinfo(space.dtype)
        if low <= info.min and high >= info.max:
            return None, None
    return low, high


def space_field(space: gym.Space, what: str, max_abs: float = MAX_ABS_OBS) -> FieldSpec:
    """FieldSpec for one item of `space` (Box: its dtype and shape, values within
    `box_bounds`; Discrete: an int64 in range)."""
    if isinstance(space, gym.spaces.Box):
        low, high = box_bounds(space, max_abs)
        return FieldSpec(space.dtype, tuple(space.shape), low=low, high=high)
    if isinstance(space, gym.spaces.Discrete):
        return FieldSpec(np.int64, (), low=int(space.start), high=int(space.start + space.n - 1))
    raise ConfigError(f"env: {what} space {type(space).__name__} is not supported (Box, Discrete)")


def _magnitude(limit: float, dtype: Any = np.float32, shape: tuple[int, ...] = ()) -> FieldSpec:
    return FieldSpec(dtype, shape, low=-limit, high=limit)


def dqn_experience_spec(
    obs_space: gym.Space,
    action_space: gym.Space,
    n_step: int,
    max_batch: int,
    max_bytes: int,
    max_abs_obs: float = MAX_ABS_OBS,
    max_abs_reward: float = MAX_ABS_REWARD,
) -> ExperienceSpec:
    """n-step transitions: obs, action, n-step reward, obs k steps later, terminated, k.

    Observations lie within `box_bounds(obs_space, max_abs_obs)`; the reward, a discounted sum
    of at most `n_step` rewards, within +-`n_step * max_abs_reward`.
    """
    if not isinstance(action_space, gym.spaces.Discrete):
        raise ConfigError(f"env: DQN needs a Discrete action space, got {action_space}")
    obs = space_field(obs_space, "observation", max_abs_obs)
    return ExperienceSpec(
        fields={
            "obs": obs,
            "action": FieldSpec(np.int64, (), low=0, high=int(action_space.n) - 1),
            "reward": _magnitude(n_step * max_abs_reward),
            "next_obs": obs,
            "terminated": FieldSpec(np.uint8, (), low=0, high=1),
            "steps": FieldSpec(np.uint8, (), low=1, high=n_step),
        },
        max_batch=max_batch,
        max_bytes=max_bytes,
    )


def ppo_experience_spec(
    obs_space: gym.Space,
    action_space: gym.Space,
    max_batch: int,
    max_bytes: int,
    max_abs_obs: float = MAX_ABS_OBS,
    max_abs_reward: float = MAX_ABS_REWARD,
    gamma: float = 0.99,
) -> ExperienceSpec:
    """Rollout fragments: per row one env step of one env copy, rows of a copy in time order.

    GAE is exact from these fields alone: `next_value` is V(s_{t+1}) under the same model (the
    value of the true final observation on truncation, of the observation after the fragment's
    last step at its end), and a trajectory continues into the next row unless `terminated`,
    `truncated` or `last` is set.

    Bounds: observations as for DQN; rewards +-`max_abs_reward`; values and discounted returns
    +-`max_abs_reward / (1 - gamma)` (the largest discounted return; 1 - gamma taken as at
    least 1e-3); log-probabilities and raw Gaussian actions +-`max_abs_obs`.
    """
    if isinstance(action_space, gym.spaces.Discrete):
        action = FieldSpec(np.int64, (), low=0, high=int(action_space.n) - 1)
    else:  # the raw Gaussian sample
        action = _magnitude(max_abs_obs, np.float32, action_shape(action_space))
    flag = FieldSpec(np.uint8, (), low=0, high=1)
    max_return = max_abs_reward / max(1.0 - gamma, 1e-3)
    return ExperienceSpec(
        fields={
            "obs": space_field(obs_space, "observation", max_abs_obs),
            "action": action,
            "reward": _magnitude(max_abs_reward),
            "terminated": flag,
            "truncated": flag,
            "last": flag,
            "logprob": _magnitude(max_abs_obs),
            "value": _magnitude(max_return),
            "next_value": _magnitude(max_return),
            "disc_return": _magnitude(max_return),
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

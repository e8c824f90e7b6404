"""Acting policies built from checkpoints, one builder per algorithm (for `soulsai evaluate`).

A builder takes (config, checkpoint state, observation space, action space) and returns an
`EvalPolicy`: a batch of observations in (the array of a bare Box, else the leaves of the
config's observation layout by name), optionally the valid-action mask (bool (B, n)), a batch of
env actions out, deterministic (greedy Q for DQN, the mean action for PPO; among valid actions
when masked). A policy with memory (recurrent PPO) also has `reset()`, which the caller
calls when an episode starts. `POLICIES` is the fixed table of builders: an algorithm
adds its entry here; nothing is imported by a name from the config.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from soulsai.config import Config
from soulsai.errors import CheckpointError
from soulsai.training.algorithms.ppo import ppo_deterministic
from soulsai.training.algorithms.r2d2 import r2d2_greedy


class EvalPolicy(Protocol):
    def __call__(self, obs: Any, mask: np.ndarray | None = None) -> np.ndarray: ...


PolicyBuilder = Callable[[Config, dict[str, Any], gym.Space, gym.Space], EvalPolicy]


def build_policy(
    cfg: Config, state: dict[str, Any], obs_space: gym.Space, act_space: gym.Space
) -> EvalPolicy:
    """The deterministic policy of a checkpoint `state` trained with `cfg`."""
    builder = POLICIES.get(cfg.algo)
    if builder is None:
        raise CheckpointError(f"no policy builder registered for algo {cfg.algo!r}")
    return builder(cfg, state, obs_space, act_space)


def dqn_greedy(
    cfg: Config, state: dict[str, Any], obs_space: gym.Space, act_space: gym.Space
) -> EvalPolicy:
    """Greedy actions of the checkpoint's online Q-network (the weights clients act with), on
    the observation layout of `cfg.env`; among the valid actions when given a mask."""
    from soulsai.model.masks import masked_greedy
    from soulsai.model.numpy_q import dqn_policy
    from soulsai.model.obs import env_layout
    from soulsai.model.shapes import dqn_weight_shapes

    if not isinstance(act_space, gym.spaces.Discrete):
        raise CheckpointError(f"DQN acts in a discrete action space, not {act_space}")
    tensors = state.get("policy") or state["learner"]["online"]
    layout = env_layout(cfg.env, obs_space)
    want = dqn_weight_shapes(
        cfg.dqn, layout, int(act_space.n), cfg.env.discrete_obs, cfg.env.embedding_dim
    )
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if got != want:
        raise CheckpointError(
            "the checkpoint's Q-network does not match its config (dqn.hidden, dqn.dueling, "
            "dqn.noisy, dqn.n_quantiles, env.obs_keys, "
            f"env.discrete_obs, env spaces): {sorted(set(got.items()) ^ set(want.items()))[:4]}"
        )
    # greedy on the quantile mean; a noisy head with its means only (deterministic)
    q = dqn_policy(
        tensors, cfg.dqn, layout, int(act_space.n), cfg.env.discrete_obs, use_noise=False
    )
    start = int(act_space.start)

    def act(obs: Any, mask: np.ndarray | None = None) -> np.ndarray:
        values = q.q_values(obs)
        greedy = values.argmax(axis=1) if mask is None else masked_greedy(values, mask)
        return greedy.astype(np.int64) + start

    return act


POLICIES: dict[str, PolicyBuilder] = {
    "dqn": dqn_greedy,
    "ppo": ppo_deterministic,
    "r2d2": r2d2_greedy,
}

"""Acting policies built from checkpoints, one builder per algorithm (for `soulsai evaluate`).

A builder takes (config, checkpoint state, observation space, action space) and returns an
`EvalPolicy`: a batch of observations in, a batch of env actions out, deterministic (greedy Q
for DQN, the mean action for PPO). `POLICIES` is the fixed table of builders: an algorithm
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


class EvalPolicy(Protocol):
    def __call__(self, obs: np.ndarray) -> np.ndarray: ...


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
    """Greedy actions of the checkpoint's online Q-network (the weights clients act with)."""
    from soulsai.model.numpy_q import NumpyQPolicy
    from soulsai.model.shapes import dqn_weight_shapes

    if not isinstance(act_space, gym.spaces.Discrete):
        raise CheckpointError(f"DQN acts in a discrete action space, not {act_space}")
    tensors = state.get("policy") or state["learner"]["online"]
    want = dqn_weight_shapes(cfg.dqn, tuple(obs_space.shape or ()), int(act_space.n))
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if got != want:
        raise CheckpointError(
            "the checkpoint's Q-network does not match its config "
            f"(dqn.hidden, env spaces): {sorted(set(got.items()) ^ set(want.items()))[:4]}"
        )
    q = NumpyQPolicy(tensors, cfg.dqn.normalize_obs)
    start = int(act_space.start)

    def act(obs: np.ndarray) -> np.ndarray:
        return q.q_values(obs).argmax(axis=1).astype(np.int64) + start

    return act


POLICIES: dict[str, PolicyBuilder] = {"dqn": dqn_greedy, "ppo": ppo_deterministic}

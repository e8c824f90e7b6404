"""Acting policies built from checkpoints, one builder per algorithm (for `soulsai evaluate`).

A builder takes (config, checkpoint state, observation space, action space) and returns an
`EvalPolicy`: a batch of observations in, a batch of env actions out, deterministic (greedy Q
for DQN, the mean action for PPO). An algorithm registers its builder with
`@register_policy("<algo>")` in `soulsai.training.algorithms.<algo>` or here; `build_policy`
imports that module when nothing is registered for the algorithm yet.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from soulsai.config import Config
from soulsai.errors import CheckpointError


class EvalPolicy(Protocol):
    def __call__(self, obs: np.ndarray) -> np.ndarray: ...


PolicyBuilder = Callable[[Config, dict[str, Any], gym.Space, gym.Space], EvalPolicy]
_BUILDERS: dict[str, PolicyBuilder] = {}


def register_policy(algo: str) -> Callable[[PolicyBuilder], PolicyBuilder]:
    def deco(fn: PolicyBuilder) -> PolicyBuilder:
        _BUILDERS[algo] = fn
        return fn

    return deco


def build_policy(
    cfg: Config, state: dict[str, Any], obs_space: gym.Space, act_space: gym.Space
) -> EvalPolicy:
    """The deterministic policy of a checkpoint `state` trained with `cfg`."""
    if cfg.algo not in _BUILDERS:
        module = f"soulsai.training.algorithms.{cfg.algo}"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
    if cfg.algo not in _BUILDERS:
        raise CheckpointError(f"no policy builder registered for algo {cfg.algo!r}")
    return _BUILDERS[cfg.algo](cfg, state, obs_space, act_space)


@register_policy("dqn")
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

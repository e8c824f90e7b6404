"""The table of client-side algorithms: `cfg.algo` -> its actor (one entry per algorithm).

Each actor is a module of its own (dqn_actor.py, ppo_actor.py) written to the Actor contract
of actor_base.py; adding an algorithm adds one module and one entry here.
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np

from soulsai.client.actor_base import Actor, VectorSpaces
from soulsai.client.dqn_actor import DQNActor
from soulsai.client.ppo_actor import PPOActor
from soulsai.client.r2d2_actor import R2D2Actor
from soulsai.config import Config


def make_actor(cfg: Config, env: VectorSpaces, index: int, rng: np.random.Generator) -> Actor:
    """The actor for `cfg.algo` (a key of ACTORS), for the spaces of `env` (one copy's)."""
    return ACTORS[cfg.algo](cfg, env.single_observation_space, env.single_action_space, index, rng)


# cfg.algo -> the client side of that algorithm (a fixed table: one entry per algorithm)
ACTORS: dict[str, Callable[[Config, gym.Space, gym.Space, int, np.random.Generator], Actor]] = {
    "dqn": DQNActor,
    "ppo": PPOActor,
    "r2d2": R2D2Actor,
}

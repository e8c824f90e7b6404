"""Partially observable tasks that need memory: the checks for recurrent policies.

Importing the module (`env.imports: [soulsai.envs.memory]`) registers:
- `soulsai/CartPoleNoVel-v1`: CartPole-v1 with the velocities removed from the observation
  (cart position and pole angle only; RL-Zoo's CartPoleNoVel-v1), 500 steps, solved at 475.
  A feed-forward policy sees no motion; a recurrent one infers it from successive frames.
- `soulsai/Recall-v0`: a cue (one of `n_cues`, one-hot) is shown at the first step, then
  `delay` blank observations, then a query (the last feature set); the action taken on the
  query ends the episode with reward 1 if it names the cue, else 0. Actions before the query do
  nothing. A policy without memory scores 1 / n_cues on average; one that remembers scores 1.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control.cartpole import CartPoleEnv


class CartPoleNoVelEnv(CartPoleEnv):
    """CartPole whose observation is (cart position, pole angle): no velocities."""

    def __init__(self, render_mode: str | None = None) -> None:
        super().__init__(render_mode=render_mode)
        high = np.array([self.x_threshold * 2, self.theta_threshold_radians * 2], np.float32)
        self.observation_space = gym.spaces.Box(-high, high, dtype=np.float32)

    @staticmethod
    def _positions(full: np.ndarray) -> np.ndarray:
        return np.array([full[0], full[2]], dtype=np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        full, info = super().reset(seed=seed, options=options)
        return self._positions(full), info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        full, reward, terminated, truncated, info = super().step(action)
        return self._positions(full), float(reward), terminated, truncated, info


class RecallEnv(gym.Env):
    """Remember the cue of the first observation until the query comes (see the module)."""

    metadata = {"render_modes": []}

    def __init__(self, n_cues: int = 2, delay: int = 4) -> None:
        if n_cues < 2 or delay < 0:
            raise ValueError("Recall needs n_cues >= 2 and delay >= 0")
        self.n_cues, self.delay = n_cues, delay
        self.observation_space = gym.spaces.Box(0.0, 1.0, (n_cues + 1,), np.float32)
        self.action_space = gym.spaces.Discrete(n_cues)
        self.cue = 0
        self.t = 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.n_cues + 1, np.float32)
        if self.t == 0:
            obs[self.cue] = 1.0
        elif self.t == self.delay + 1:
            obs[-1] = 1.0  # the query
        return obs

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.cue = int(self.np_random.integers(self.n_cues))
        self.t = 0
        return self._obs(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self.t == self.delay + 1:  # the action on the query ends the episode
            correct = int(action) == self.cue
            return self._obs(), float(correct), True, False, {"correct": float(correct)}
        self.t += 1
        return self._obs(), 0.0, False, False, {}


def _register() -> None:
    specs = (
        ("soulsai/CartPoleNoVel-v1", "CartPoleNoVelEnv", 500, 475.0),
        ("soulsai/Recall-v0", "RecallEnv", 1000, 1.0),
    )
    for env_id, cls, steps, threshold in specs:
        if env_id not in gym.registry:
            gym.register(
                id=env_id,
                entry_point=f"soulsai.envs.memory:{cls}",
                max_episode_steps=steps,
                reward_threshold=threshold,
            )


_register()

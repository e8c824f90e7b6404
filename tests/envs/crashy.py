"""CrashyCartPole-v0: CartPole whose step raises every CRASH_EVERY steps, like a game client
that falls over now and then. The count is per process, so re-created envs keep crashing."""

from __future__ import annotations

import gymnasium as gym
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

CRASH_EVERY = 300
_steps = 0


class CrashyCartPole(CartPoleEnv):
    def step(self, action):  # type: ignore[override]
        global _steps
        _steps += 1
        if _steps % CRASH_EVERY == 0:
            raise RuntimeError(f"the game crashed (step {_steps})")
        return super().step(action)


if "CrashyCartPole-v0" not in gym.registry:
    gym.register("CrashyCartPole-v0", entry_point=CrashyCartPole, max_episode_steps=500)

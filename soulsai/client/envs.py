"""Build the Gymnasium env a client samples from: imports, wrappers, copies, a real-time delay."""

from __future__ import annotations

import importlib
import time
from typing import Any

import gymnasium as gym

from soulsai.config.schema import EnvConfig
from soulsai.errors import ConfigError


class StepDelay(gym.Wrapper):
    """Sleeps after every step: stands in for a game that runs in real time."""

    def __init__(self, env: gym.Env, delay: float) -> None:
        super().__init__(env)
        self.delay = delay

    def step(self, action: Any) -> Any:
        out = self.env.step(action)
        time.sleep(self.delay)
        return out


def import_env_modules(cfg: EnvConfig) -> None:
    """Import `env.imports` so that packages such as soulsgym register their env ids."""
    for name in cfg.imports:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"config error: env.imports: cannot import {name!r}: {e}") from None


def _resolve(path: str) -> Any:
    module, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(f"config error: env.wrappers: cannot find {path!r}") from None


def make_single_env(cfg: EnvConfig) -> gym.Env:
    """One env copy with the configured wrappers (and the step delay, outermost)."""
    import_env_modules(cfg)
    try:
        env = gym.make(cfg.id, **cfg.kwargs)
    except gym.error.Error as e:
        raise ConfigError(f"config error: env.id {cfg.id!r}: {e}") from None
    except TypeError as e:
        raise ConfigError(f"config error: env.kwargs for {cfg.id!r}: {e}") from None
    for w in cfg.wrappers:
        env = _resolve(w.name)(env, **w.kwargs)
    if cfg.step_delay > 0:
        env = StepDelay(env, cfg.step_delay)
    return env


def make_vector_env(cfg: EnvConfig) -> gym.vector.VectorEnv:
    """`env.num_envs` copies stepped in this process; a finished copy resets in the same step
    (its last observation is in info["final_obs"]), so n-step targets see the true final obs."""
    return gym.vector.SyncVectorEnv(
        [lambda: make_single_env(cfg) for _ in range(cfg.num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )


def env_spaces(cfg: EnvConfig) -> tuple[gym.Space, gym.Space]:
    """Observation and action space of one copy (the training node needs them)."""
    env = make_single_env(cfg)
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()

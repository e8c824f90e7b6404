"""Build the Gymnasium env a client samples from: imports, wrappers, copies, a real-time delay."""

from __future__ import annotations

import importlib
import time
from typing import Any

import gymnasium as gym
import numpy as np

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


class LocalVectorEnv:
    """`num_envs` copies stepped one after another in this process, batched like a Gymnasium
    vector env. A copy that ends an episode resets in the same step: the returned observation
    is the new episode's first, the true final one is in infos["final_obs"][i] (and the last
    info dict in infos["final_info"][i]), so n-step targets and GAE bootstrap correctly.

    Gymnasium's SyncVectorEnv does the same with space checks, deep copies and info merging
    on every step; for the one-game-per-machine case this is the client's hottest loop.
    """

    def __init__(self, cfg: EnvConfig) -> None:
        self.envs = [make_single_env(cfg) for _ in range(cfg.num_envs)]
        self.num_envs = cfg.num_envs
        self.single_observation_space = self.envs[0].observation_space
        self.single_action_space = self.envs[0].action_space
        self._obs_dtype = self.single_observation_space.dtype
        self._obs_shape = (self.num_envs, *self.single_observation_space.shape)

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict]:
        obs = [
            env.reset(seed=None if seed is None else seed + i)[0] for i, env in enumerate(self.envs)
        ]
        return np.stack(obs).astype(self._obs_dtype, copy=False), {}

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        n = self.num_envs
        out = np.empty(self._obs_shape, dtype=self._obs_dtype)  # fresh: callers keep rows
        rewards = np.empty(n, dtype=np.float64)
        terms = np.empty(n, dtype=bool)
        truncs = np.empty(n, dtype=bool)
        infos: dict[str, Any] = {}
        for i, env in enumerate(self.envs):
            obs, rewards[i], terms[i], truncs[i], info = env.step(actions[i])
            if terms[i] or truncs[i]:
                infos.setdefault("final_obs", [None] * n)[i] = np.array(obs, self._obs_dtype)
                infos.setdefault("final_info", [None] * n)[i] = info
                obs, _ = env.reset()
            out[i] = obs
        return out, rewards, terms, truncs, infos

    def close(self) -> None:
        for env in self.envs:
            env.close()


def make_vector_env(cfg: EnvConfig) -> LocalVectorEnv:
    """The client's env: `env.num_envs` copies of the configured env, batched."""
    return LocalVectorEnv(cfg)


def env_spaces(cfg: EnvConfig) -> tuple[gym.Space, gym.Space]:
    """Observation and action space of one copy (the training node needs them)."""
    env = make_single_env(cfg)
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()

"""Building the configured Gymnasium env (imports, wrappers, a real-time delay) and reading its
spaces: shared by the clients, the training node and `soulsai evaluate`."""

from __future__ import annotations

import importlib
import logging
import time
from typing import Any

import gymnasium as gym

from soulsai.config.schema import EnvConfig
from soulsai.envs.atari import make_atari, register_ale
from soulsai.envs.soulsgym_spaces import known_spaces
from soulsai.errors import ConfigError

log = logging.getLogger(__name__)


class StepDelay(gym.Wrapper):
    """Sleeps after every step: stands in for a game that runs in real time."""

    def __init__(self, env: gym.Env, delay: float) -> None:
        super().__init__(env)
        self.delay = delay

    def step(self, action: Any) -> Any:
        out = self.env.step(action)
        time.sleep(self.delay)
        return out


def _where(cfg: EnvConfig, key: str) -> str:
    """The local config file that set `env.<key>` (errors name it)."""
    return cfg.sources.get(key) or "the local config"


def _reason(e: BaseException) -> str:
    text = str(e).splitlines()[0][:200] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def import_env_modules(cfg: EnvConfig) -> None:
    """Import `env.imports` so that packages such as soulsgym register their env ids.

    `cfg` must hold this machine's own env.imports (soulsai/config/trust.py): never a list
    that came from Redis or a run folder.
    """
    for i, name in enumerate(cfg.imports):
        try:
            importlib.import_module(name)
        except Exception as e:  # an import runs code: whatever it raises is this key's fault
            raise ConfigError(
                f"config error in {_where(cfg, 'imports')}: key 'env.imports[{i}]' = {name!r}: "
                f"cannot import it ({_reason(e)})"
            ) from None


def _wrap(env: gym.Env, cfg: EnvConfig, i: int) -> gym.Env:
    """Apply `env.wrappers[i]`; any failure (no such module or class, a wrong keyword, the
    wrapper's own check) is one ConfigError naming the wrapper and the file that set it."""
    w = cfg.wrappers[i]
    module, _, attr = w.name.rpartition(".")
    try:
        wrapper = getattr(importlib.import_module(module), attr)
        return wrapper(env, **w.kwargs)
    except Exception as e:
        env.close()
        raise ConfigError(
            f"config error in {_where(cfg, 'wrappers')}: key 'env.wrappers[{i}]' "
            f"({w.name}): {_reason(e)}"
        ) from None


def make_single_env(cfg: EnvConfig, training: bool = True) -> gym.Env:
    """One env copy: `env.atari`'s preprocessing (episodic life and reward clipping only when
    `training`; `soulsai evaluate` plays whole games), the configured wrappers, and the step
    delay outermost."""
    import_env_modules(cfg)
    kwargs = dict(cfg.kwargs)
    if cfg.atari is not None:
        register_ale(cfg)
        kwargs.setdefault("frameskip", 1)  # AtariPreprocessing skips (and max-pools) frames
    try:
        env = gym.make(cfg.id, **kwargs)
    except gym.error.Error as e:
        raise ConfigError(f"config error: env.id {cfg.id!r}: {e}") from None
    except TypeError as e:
        raise ConfigError(f"config error: env.kwargs for {cfg.id!r}: {e}") from None
    except ImportError as e:  # `module:Env-v0` ids import their module
        raise ConfigError(
            f"config error in {_where(cfg, 'id')}: key 'env.id' = {cfg.id!r}: {_reason(e)}"
        ) from None
    if cfg.atari is not None:
        try:
            env = make_atari(env, cfg.atari, training)
        except (AttributeError, ValueError, gym.error.Error) as e:  # not an ALE env, bad size
            env.close()
            raise ConfigError(f"config error: env.atari for {cfg.id!r}: {_reason(e)}") from None
    for i in range(len(cfg.wrappers)):
        env = _wrap(env, cfg, i)
    if cfg.step_delay > 0:
        env = StepDelay(env, cfg.step_delay)
    return env


def env_spaces(cfg: EnvConfig) -> tuple[gym.Space, gym.Space]:
    """Observation and action space of one copy (the training node needs them).

    A SoulsGym env that cannot be built here (soulsgym runs on Windows with the game open, the
    node usually on a Linux server) has its spaces from soulsai's table, when no wrapper is
    configured; any other env that cannot be built is the ConfigError it raised."""
    try:
        env = make_single_env(cfg)
    except ConfigError:
        known = None if cfg.wrappers else _known_spaces(cfg)
        if known is None:
            raise
        log.info(
            "env %s cannot be built on this machine; its spaces come from soulsai's table of "
            "SoulsGym envs (soulsai/envs/soulsgym_spaces.py)",
            cfg.id,
        )
        return known
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


def _known_spaces(cfg: EnvConfig) -> tuple[gym.Space, gym.Space] | None:
    try:
        return known_spaces(cfg.id, cfg.kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(
            f"config error in {_where(cfg, 'kwargs')}: key 'env.kwargs' for {cfg.id!r}: {e}"
        ) from None

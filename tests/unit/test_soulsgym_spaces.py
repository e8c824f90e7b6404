"""A training node on a machine without SoulsGym (a Linux server) reads a SoulsGym env's spaces
from soulsai's table; anything the table cannot stand for is still the env's own error."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from gymnasium import spaces

from soulsai.config import default_config_dir, load_config
from soulsai.envs import env_spaces
from soulsai.envs.soulslike import IudexLikeEnv
from soulsai.errors import ConfigError


def env_cfg(*sets: str):
    return load_config(default_config_dir(), list(sets)).env


def test_soulsgym_is_not_installed_here() -> None:
    # What the fallback stands in for; if soulsgym were installed these tests would build it.
    assert importlib.util.find_spec("soulsgym") is None


def test_iudex_spaces_come_from_the_table_when_soulsgym_cannot_be_imported() -> None:
    obs, act = env_spaces(env_cfg("env.id=SoulsGymIudex-v0", "env.imports=[soulsgym]"))
    assert act == spaces.Discrete(20)
    assert isinstance(obs, spaces.Dict)
    assert obs == IudexLikeEnv().observation_space  # the shaped env is built on the same table
    assert obs["player_animation"] == spaces.Discrete(51, start=-1)
    assert obs["boss_max_hp"] == spaces.Discrete(1, start=1037)


def test_image_env_spaces_follow_its_resolution_kwarg() -> None:
    obs, _ = env_spaces(env_cfg("env.id=soulsgym:SoulsGymIudexImg-v0"))
    assert obs == spaces.Box(0, 255, (90, 160, 3), np.uint8)
    obs, _ = env_spaces(env_cfg("env.id=SoulsGymIudexImg-v0", "env.kwargs={resolution: [45, 80]}"))
    assert obs.shape == (45, 80, 3)
    with pytest.raises(ConfigError, match="env.kwargs"):
        env_spaces(env_cfg("env.id=SoulsGymIudexImg-v0", "env.kwargs={resolution: [1, 99999]}"))


def test_a_wrapper_or_an_unknown_id_keeps_the_envs_own_error() -> None:
    wrapped = env_cfg(
        "env.id=SoulsGymIudex-v0",
        "env.imports=[soulsgym]",
        "env.wrappers=[{name: gymnasium.wrappers.FlattenObservation}]",
    )
    with pytest.raises(ConfigError, match=r"env.imports\[0\]"):
        env_spaces(wrapped)
    with pytest.raises(ConfigError, match="NoSuchGame-v0"):
        env_spaces(env_cfg("env.id=NoSuchGame-v0"))

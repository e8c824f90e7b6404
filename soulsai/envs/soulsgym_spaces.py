"""The spaces of SoulsGym's Dark Souls III envs, known without the game.

SoulsGym runs only on Windows with the game open, so a training node on a Linux server cannot
build `SoulsGymIudex-v0` to read its spaces. soulsai keeps them here instead (read from
SoulsGym's env definitions; see docs/soulsgym.md): `env_spaces` falls back on this table when
the configured env cannot be built on this machine, the id is one of these and no wrapper is
configured (a wrapper would change the spaces in a way no table can know).

The shaped test fight `soulsai/IudexLike-v0` (soulsai/envs/soulslike.py) uses the same spaces.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from gymnasium import spaces

PLAYER_MAX_HP = 454  # the character SoulsGym sets up for Iudex (vigor 12, endurance 11)
PLAYER_MAX_SP = 95
BOSS_MAX_HP = 1037
N_PLAYER_ANIMATIONS = 50  # SoulsGym's Dark Souls III player animation table
N_BOSS_ANIMATIONS = 32  # ... and Iudex's
N_ACTIONS = 20
IMAGE_SHAPE = (90, 160, 3)  # SoulsGymIudexImg-v0's default resolution, channels last
POSE_LOW = [110.0, 540.0, -73.0, -3.1416]  # the arena box: x, y, z, orientation
POSE_HIGH = [190.0, 640.0, -55.0, 3.1416]


def iudex_observation_space() -> spaces.Dict:
    """The observation space of SoulsGym's `SoulsGymIudex-v0`, key by key."""
    low, high = np.array(POSE_LOW, np.float32), np.array(POSE_HIGH, np.float32)
    cam_low = np.array(POSE_LOW[:3] + [-1.0] * 3, np.float32)
    cam_high = np.array(POSE_HIGH[:3] + [1.0] * 3, np.float32)
    return spaces.Dict(
        {
            "phase": spaces.Discrete(2, start=1),
            "player_hp": spaces.Box(0, PLAYER_MAX_HP),
            "player_max_hp": spaces.Discrete(1, start=PLAYER_MAX_HP),
            "player_sp": spaces.Box(0, PLAYER_MAX_SP),
            "player_max_sp": spaces.Discrete(1, start=PLAYER_MAX_SP),
            "boss_hp": spaces.Box(0, BOSS_MAX_HP),
            "boss_max_hp": spaces.Discrete(1, start=BOSS_MAX_HP),
            "player_pose": spaces.Box(low, high, dtype=np.float32),
            "boss_pose": spaces.Box(low, high, dtype=np.float32),
            "camera_pose": spaces.Box(cam_low, cam_high, dtype=np.float32),
            "player_animation": spaces.Discrete(N_PLAYER_ANIMATIONS + 1, start=-1),
            "player_animation_duration": spaces.Box(0.0, 10.0),
            "boss_animation": spaces.Discrete(N_BOSS_ANIMATIONS + 1, start=-1),
            "boss_animation_duration": spaces.Box(0.0, 10.0),
            "lock_on": spaces.Discrete(2),
        }
    )


def image_observation_space(resolution: Any = None) -> spaces.Box:
    """`SoulsGymIudexImg-v0`'s frames: uint8, (height, width, 3); `resolution` is its kwarg."""
    shape = IMAGE_SHAPE
    if resolution is not None:
        h, w = (int(v) for v in resolution)
        if not (8 <= h <= 2160 and 8 <= w <= 3840):
            raise ValueError(f"resolution {resolution!r} is not (height, width) in pixels")
        shape = (h, w, 3)
    return spaces.Box(0, 255, shape, np.uint8)


def _iudex(kwargs: dict[str, Any]) -> tuple[spaces.Space, spaces.Space]:
    return iudex_observation_space(), spaces.Discrete(N_ACTIONS)


def _iudex_img(kwargs: dict[str, Any]) -> tuple[spaces.Space, spaces.Space]:
    return image_observation_space(kwargs.get("resolution")), spaces.Discrete(N_ACTIONS)


KNOWN: dict[str, Callable[[dict[str, Any]], tuple[spaces.Space, spaces.Space]]] = {
    "SoulsGymIudex-v0": _iudex,
    "SoulsGymIudexDemo-v0": _iudex,
    "SoulsGymIudexImg-v0": _iudex_img,
}


def known_spaces(env_id: str, kwargs: dict[str, Any]) -> tuple[spaces.Space, spaces.Space] | None:
    """(observation space, action space) of a SoulsGym env id (`soulsgym:` prefix allowed), or
    None when the id is not one soulsai knows."""
    make = KNOWN.get(env_id.rpartition(":")[2])
    return None if make is None else make(kwargs)

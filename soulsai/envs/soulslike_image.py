"""The image observation of `soulsai/IudexLikeImg-v0` (soulslike.py): a 90x160x3 uint8 frame
of the fight seen from above, like SoulsGym's `SoulsGymIudexImg-v0` frames in shape only."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from soulsai.envs.soulsgym_spaces import BOSS_MAX_HP, IMAGE_SHAPE, PLAYER_MAX_HP, PLAYER_MAX_SP
from soulsai.envs.soulslike_rules import ARENA, BOSS_PARRIED, HEAVY_ATTACK, LIGHT_ATTACK, ROLLING

if TYPE_CHECKING:
    from soulsai.envs.soulslike import IudexLikeEnv


def draw_frame(env: IudexLikeEnv, background: np.ndarray) -> np.ndarray:
    """A top-down frame: HP/SP bars on top, the boss's colour tells its attack phase."""
    img = background.copy()
    img[1:3, : int(160 * env.p_hp / PLAYER_MAX_HP)] = (40, 200, 40)
    img[4:5, : int(160 * env.p_sp / PLAYER_MAX_SP)] = (220, 200, 40)
    img[6:8, : int(160 * env.b_hp / BOSS_MAX_HP)] = (200, 40, 40)
    atk, t = env.b_attack, env.b_tick
    if atk is None:
        colour = (230, 230, 60) if env.b_anim == BOSS_PARRIED else (140, 140, 140)
    elif t <= atk.windup:
        colour = (100 + 150 * t // atk.windup, 60, 60)
    elif t <= atk.windup + atk.active:
        colour = (255, 255, 255)
    else:
        colour = (60, 60, 200)
    dot(img, env.bx, env.by, 3, colour)
    p = {ROLLING: (0, 255, 255), LIGHT_ATTACK: (255, 128, 0), HEAVY_ATTACK: (255, 64, 0)}
    dot(img, env.px, env.py, 2, p.get(env.p_anim, (60, 120, 255)))
    return img


def pixel(x: float, y: float) -> tuple[int, int]:
    """Arena metres to (row, col): the disc fills rows 10..89, 1.6 px per metre."""
    cx, cy, _ = ARENA
    row = int(50 + (y - cy) * 1.6)
    col = int(80 + (x - cx) * 1.6)
    return min(max(row, 10), 89), min(max(col, 0), 159)


def dot(img: np.ndarray, x: float, y: float, r: int, colour: tuple[int, int, int]) -> None:
    row, col = pixel(x, y)
    img[max(10, row - r) : row + r + 1, max(0, col - r) : col + r + 1] = colour


def background() -> np.ndarray:
    img = np.zeros(IMAGE_SHAPE, np.uint8)
    rows, cols = np.mgrid[0:90, 0:160]
    disc = (rows - 50) ** 2 + (cols - 80) ** 2 <= (ARENA[2] * 1.6) ** 2
    img[disc & (rows >= 10)] = (45, 40, 35)
    return img

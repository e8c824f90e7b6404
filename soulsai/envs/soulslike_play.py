"""Policies for `soulsai/IudexLike-v0` (soulslike.py) and the measurement they were taken with:
uniform random actions, random valid actions, and a scripted dodge-and-punish player.

Measured over 200 episodes each (seeds 0..199), with
    python -c "from soulsai.envs import soulslike_play as s; [print(s.run_episodes(p, 200,
    seed=0)) for p in (s.random_action, s.random_valid_action, s.scripted_action)]"
uniform random actions win 0/200 (mean return -1.05, 186 steps); random valid actions win 0/200
(-1.05, 194 steps); `scripted_action` (roll through wind-ups, hit in recoveries) wins 188/200
(+0.74, 299 steps). Its losses come from Attack3000's follow-up, which a learner can wait out
(the same policy waiting five ticks after that attack wins 100/100, +1.10). In between, for a
learner to climb: walking in and spamming light attacks returns -0.58 (100 episodes, no win);
dodging without attacking returns 0.0 and runs into the 3000-step cap.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

import soulsai.envs.soulslike  # noqa: F401  (importing it registers soulsai/IudexLike-v0)
from soulsai.envs.soulslike_rules import (
    BOSS_PARRIED,
    LIGHT,
    LIGHT_ATTACK,
    NOOP,
    ROLL,
    ROLL_IFRAMES,
    STEP_SECONDS,
    phase_attacks,
)

Policy = Callable[[Any, dict[str, Any], np.random.Generator], int]


def random_action(obs: Any, info: dict[str, Any], rng: np.random.Generator) -> int:
    """Uniform over all 20 actions, valid or not."""
    return int(rng.integers(20))


def random_valid_action(obs: Any, info: dict[str, Any], rng: np.random.Generator) -> int:
    """Uniform over the actions the mask allows."""
    return int(rng.choice(np.flatnonzero(info["action_mask"])))


_SCRIPT_ATTACKS = {1: phase_attacks(1), 2: phase_attacks(2)}


def scripted_action(obs: dict[str, Any], info: dict[str, Any], rng: np.random.Generator) -> int:
    """Dodge-and-punish from the Dict observation: roll through the active ticks of a wind-up
    (the boss's animation and duration tell which attack and when), hit during recoveries and
    parries, walk in otherwise."""
    mask = info["action_mask"]
    px, py = float(obs["player_pose"][0]), float(obs["player_pose"][1])
    bx, by = float(obs["boss_pose"][0]), float(obs["boss_pose"][1])
    dist = math.hypot(bx - px, by - py)
    tick = round(float(obs["boss_animation_duration"][0]) / STEP_SECONDS)
    atk = _SCRIPT_ATTACKS[int(obs["phase"])].get(int(obs["boss_animation"]))
    close = dist <= LIGHT_ATTACK.reach - 0.2
    if atk is not None:
        first, last = atk.windup + 1, atk.windup + atk.active
        if last - ROLL_IFRAMES[1] <= tick < first and dist <= atk.reach + 1.0:
            return ROLL if mask[ROLL] else NOOP  # forward: through the swing, stays close
        if tick >= last:  # recovery: punish if the blow lands before it ends
            if close and atk.length - tick >= LIGHT_ATTACK.hit_tick and mask[LIGHT]:
                return LIGHT
            return 0 if not close and mask[0] else NOOP
        return NOOP
    if int(obs["boss_animation"]) == BOSS_PARRIED:
        return LIGHT if close and mask[LIGHT] else 0 if mask[0] else NOOP
    return 0 if dist > 3.0 and mask[0] else NOOP


@dataclass(frozen=True)
class EpisodeStats:
    """What `run_episodes` measured."""

    episodes: int
    wins: int
    mean_return: float
    mean_length: float

    @property
    def win_rate(self) -> float:
        return self.wins / self.episodes


def run_episodes(policy: Policy, episodes: int, seed: int = 0, **env_kwargs: Any) -> EpisodeStats:
    """Play `episodes` episodes of `soulsai/IudexLike-v0` (seeds seed, seed + 1, ...)."""
    env = gym.make("soulsai/IudexLike-v0", **env_kwargs)
    rng = np.random.default_rng(seed)
    wins, returns, lengths = 0, [], []
    try:
        for i in range(episodes):
            obs, info = env.reset(seed=seed + i)
            total, n, done = 0.0, 0, False
            while not done:
                obs, r, terminated, truncated, info = env.step(policy(obs, info, rng))
                total, n, done = total + float(r), n + 1, terminated or truncated
            boss_hp = info["boss_hp"] if "boss_hp" in info else obs["boss_hp"][0]  # image mode
            wins += int(float(boss_hp) <= 0)
            returns.append(total)
            lengths.append(n)
    finally:
        env.close()
    return EpisodeStats(episodes, wins, float(np.mean(returns)), float(np.mean(lengths)))

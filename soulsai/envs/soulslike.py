"""A SoulsGym-shaped boss fight that runs without the game: tests and benchmarks of the
interface soulsai trains on (Dict observations, `info["action_mask"]`, 20 actions, 3000-step
episodes), on any machine, torch-free (numpy and gymnasium only).

Importing the module registers `soulsai/IudexLike-v0` (the spaces of SoulsGym's
`SoulsGymIudex-v0`) and `soulsai/IudexLikeImg-v0` (90x160x3 uint8 frames, like
`SoulsGymIudexImg-v0`), both truncated at 3000 steps; a config selects them with
`env.imports: [soulsai.envs.soulslike]` and `env.id: soulsai/IudexLike-v0`.

The fight is a small 2-D simulation with SoulsGym's semantics: a step is 0.1 s of game time;
the mask enables moves, rolls and attacks by how long the player's animation has run (rolls and
attacks also need SP > 0), and an invalid action is a no-op that still costs the step. The boss
walks in and attacks; each attack has a wind-up (its animation and duration are observed), a few
active ticks and a recovery. A roll's invulnerability or distance dodges the active ticks, a hit
in the recovery is safe, a parry timed on a parryable attack opens a riposte. The reward is
SoulsGym's: boss damage / boss max HP minus player damage / player max HP, +0.1 on a win,
-0.1 on a loss. `reset(seed=...)` makes an episode reproducible. The fight's tables (actions,
animations, attacks, masks) are in soulslike_rules.py, the image frame in soulslike_image.py.

A step takes about 10 us (20 us with image observations) on one core. Policies to play it with
(random, random valid, scripted) and what they score are in soulslike_play.py: the scripted one
wins 188 of 200 episodes, random play none.
"""

from __future__ import annotations

import math
import time
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from soulsai.envs.soulsgym_spaces import (
    BOSS_MAX_HP,
    IMAGE_SHAPE,
    PLAYER_MAX_HP,
    PLAYER_MAX_SP,
    iudex_observation_space,
)
from soulsai.envs.soulslike_image import background, draw_frame
from soulsai.envs.soulslike_rules import (
    ARENA,
    BOSS_IDLE,
    BOSS_PARRIED,
    BOSS_WALK,
    COMBO_DELAY,
    HEAVY,
    HEAVY_ATTACK,
    HIT_LARGE,
    HIT_MIDDLE,
    IDLE,
    LIGHT,
    LIGHT_ATTACK,
    MASKS,
    MOVE,
    NOOP,
    OPENER_IDS,
    PARRIED_TICKS,
    PARRY,
    PARRY_WINDOW,
    PARRYING,
    RIPOSTE,
    ROLL,
    ROLL_IFRAMES,
    ROLLING,
    STEP_SECONDS,
    BossAttack,
    PlayerAnim,
    phase_attacks,
)

MAX_EPISODE_STEPS = 3000
MAX_DURATION_TICKS = 100  # durations are observed up to 10 s (the space's bound)
_FLOOR_Z = -68.8
_PLAYER_START = (132.2, 575.1)
_BOSS_START = (141.3, 591.9)
_MIN_GAP = 1.5  # bodies never overlap closer than this (m)
_WALK, _ROLL_SPEED, _BOSS_WALK = 0.35, 0.55, 0.3  # metres per tick
_SP_REGEN = 3.0  # SP per tick while idle or walking
_BOSS_CONE = math.radians(50)  # a boss swing hits within this angle of its facing


class GameCrash(RuntimeError):
    """The injected crash: the game process is gone, this env is dead; make a new one."""


def _unit(dx: float, dy: float) -> tuple[float, float, float]:
    d = math.hypot(dx, dy)
    return (dx / d, dy / d, d) if d > 1e-9 else (1.0, 0.0, 0.0)


def _direction(fx: float, fy: float, k: int) -> tuple[float, float]:
    """Direction k of the eight (0 forward, then clockwise by 45 degrees) relative to facing."""
    c, s = math.cos(k * math.pi / 4), math.sin(k * math.pi / 4)
    return c * fx + s * fy, -s * fx + c * fy


class IudexLikeEnv(gym.Env):
    """The stand-in fight; see the module docstring. Keyword arguments: `obs` ("vector" for
    SoulsGym's Dict, "image" for frames), `phase` (1, or 2: shorter wind-ups),
    `random_player_pose`, `step_delay` (seconds slept per step, a stand-in for real time),
    `crash_after` (the n-th step of this env raises GameCrash) and `crash_prob` (per step)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        obs: str = "vector",
        phase: int = 1,
        random_player_pose: bool = False,
        step_delay: float = 0.0,
        crash_after: int | None = None,
        crash_prob: float = 0.0,
        render_mode: str | None = None,
    ) -> None:
        if obs not in ("vector", "image"):
            raise ValueError(f"obs must be 'vector' or 'image', not {obs!r}")
        if phase not in (1, 2):
            raise ValueError(f"phase must be 1 or 2, not {phase!r}")
        if not 0.0 <= crash_prob <= 1.0 or step_delay < 0 or (crash_after or 1) < 1:
            raise ValueError("crash_prob must lie in [0, 1], step_delay >= 0, crash_after >= 1")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', not {render_mode!r}")
        self.obs_mode, self.phase, self.render_mode = obs, phase, render_mode
        self.random_player_pose, self.step_delay = random_player_pose, step_delay
        self.crash_after, self.crash_prob = crash_after, crash_prob
        self.observation_space = (
            spaces.Box(0, 255, IMAGE_SHAPE, np.uint8)
            if obs == "image"
            else iudex_observation_space()
        )
        self.action_space = spaces.Discrete(20)
        self._attacks = phase_attacks(phase)
        self._openers = [a for a in self._attacks.values() if a.id in OPENER_IDS]
        self._background = background()
        self._crash_rng = np.random.default_rng()
        self._lifetime_steps = 0
        self._crashed = False
        self._started = False

    # -- gymnasium API ---------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        self._check_alive()
        super().reset(seed=seed)
        if seed is not None:
            self._crash_rng = np.random.default_rng([seed, 1])
        rng = self.np_random
        self.px, self.py = _PLAYER_START
        if self.random_player_pose:
            a = rng.uniform(-math.pi, math.pi)
            self.px, self.py = _BOSS_START[0] + 12 * math.cos(a), _BOSS_START[1] + 12 * math.sin(a)
        self.bx, self.by = _BOSS_START
        self.p_hp, self.p_sp, self.b_hp = (
            float(PLAYER_MAX_HP),
            float(PLAYER_MAX_SP),
            float(BOSS_MAX_HP),
        )
        self.p_anim, self.p_tick, self.p_dir, self.p_hit_done = IDLE, 0, (1.0, 0.0), False
        self.b_anim, self.b_tick, self.b_hit_done = BOSS_IDLE, 0, False
        self.b_attack: BossAttack | None = None  # the attack under way
        self.b_face = math.atan2(self.py - self.by, self.px - self.bx)
        self._queue_attack(rng)
        self._done, self._started = False, True
        self._mask = self._compute_mask()
        return self._observation(), self._info()

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        self._check_alive()
        if not self._started or self._done:
            raise gym.error.ResetNeeded("step() called before reset() or after the episode ended")
        self._maybe_crash()
        a = int(action)
        if not 0 <= a < 20:
            raise ValueError(f"action {action!r} is outside Discrete(20)")
        if not self._mask[a]:
            a = NOOP  # the game drops input while the player is disabled; time still passes
        p_hp, b_hp = self.p_hp, self.b_hp
        self._player_acts(a)
        self._player_advances()
        if self.b_hp > 0:
            self._boss_advances()
        won, lost = self.b_hp <= 0, self.p_hp <= 0
        reward = (b_hp - self.b_hp) / BOSS_MAX_HP + (self.p_hp - p_hp) / PLAYER_MAX_HP
        reward += 0.1 if won else -0.1 if lost else 0.0
        self._done = won or lost
        self._mask = self._compute_mask()
        if self.step_delay > 0:
            time.sleep(self.step_delay)
        return self._observation(), float(reward), self._done, False, self._info()

    def render(self) -> np.ndarray | None:
        return self._frame() if self.render_mode == "rgb_array" and self._started else None

    def action_masks(self) -> np.ndarray:
        """The valid actions now (sb3-contrib's convention; equals `info["action_mask"]`)."""
        return self._mask.copy()

    # -- the simulation --------------------------------------------------------------------

    def _check_alive(self) -> None:
        if self._crashed:
            raise GameCrash("the game is not running (it crashed earlier); make a new env")

    def _maybe_crash(self) -> None:
        self._lifetime_steps += 1
        hit = self.crash_after is not None and self._lifetime_steps >= self.crash_after
        if hit or (self.crash_prob > 0 and self._crash_rng.random() < self.crash_prob):
            self._crashed = True
            raise GameCrash(
                f"lost the game process at step {self._lifetime_steps} of this env (injected crash)"
            )

    def _queue_attack(self, rng: np.random.Generator) -> None:
        self.b_next = self._openers[int(rng.integers(len(self._openers)))]
        self.b_wait = int(rng.integers(1, 5))

    def _facing(self) -> tuple[float, float, float]:
        """Unit vector from player to boss and their distance (the player is locked on)."""
        return _unit(self.bx - self.px, self.by - self.py)

    def _compute_mask(self) -> np.ndarray:
        lock_attack, lock_roll, lock_move = self.p_anim.lock
        sp = self.p_sp > 0
        key = (self.p_tick >= lock_move, sp and self.p_tick >= lock_roll,
               sp and self.p_tick >= lock_attack)  # fmt: skip
        return MASKS[key]

    def _start(self, anim: PlayerAnim) -> None:
        self.p_anim, self.p_tick, self.p_hit_done = anim, 0, False
        self.p_sp = max(0.0, self.p_sp - anim.sp)

    def _player_acts(self, a: int) -> None:
        fx, fy, dist = self._facing()
        if a < ROLL:
            if self.p_anim is not MOVE:
                self._start(MOVE)
            self.p_dir = _direction(fx, fy, a)
        elif a < LIGHT:
            self._start(ROLLING)
            self.p_dir = _direction(fx, fy, a - ROLL)
        elif a == LIGHT:
            riposte = self.b_anim == BOSS_PARRIED and dist <= RIPOSTE.reach
            self._start(RIPOSTE if riposte else LIGHT_ATTACK)
        elif a == HEAVY:
            self._start(HEAVY_ATTACK)
        elif a == PARRY:
            self._start(PARRYING)
        elif self.p_anim is MOVE:
            self._start(IDLE)

    def _player_advances(self) -> None:
        anim = self.p_anim
        self.p_tick += 1
        if anim is MOVE:
            self._move_player(_WALK)
        elif anim is ROLLING and self.p_tick <= 5:
            self._move_player(_ROLL_SPEED)
        if anim.hit_tick == self.p_tick and not self.p_hit_done:
            self.p_hit_done = True
            if self._facing()[2] <= anim.reach:
                self.b_hp = max(0.0, self.b_hp - anim.damage)
        if anim is IDLE or anim is MOVE or anim is HIT_MIDDLE or anim is HIT_LARGE:
            self.p_sp = min(float(PLAYER_MAX_SP), self.p_sp + _SP_REGEN)
        if anim.length and self.p_tick >= anim.length:
            self.p_anim, self.p_tick = IDLE, 0

    def _move_player(self, speed: float) -> None:
        x, y = self.px + speed * self.p_dir[0], self.py + speed * self.p_dir[1]
        cx, cy, r = ARENA
        ux, uy, d = _unit(x - cx, y - cy)
        if d > r:
            x, y = cx + r * ux, cy + r * uy
        ux, uy, d = _unit(x - self.bx, y - self.by)
        if d < _MIN_GAP:
            x, y = self.bx + _MIN_GAP * ux, self.by + _MIN_GAP * uy
        self.px, self.py = x, y

    def _set_boss(self, anim: int) -> None:
        if anim != self.b_anim:
            self.b_anim, self.b_tick = anim, 0

    def _boss_advances(self) -> None:
        self.b_tick += 1
        fx, fy, dist = self._facing()
        atk = self.b_attack
        if atk is not None:
            if self.b_tick <= atk.windup:  # tracks the player and creeps in
                self.b_face = math.atan2(-fy, -fx)
                if dist > atk.reach - 0.5:
                    self._move_boss(fx, fy, dist, 0.15)
            elif self.b_tick <= atk.windup + atk.active and not self.b_hit_done:
                self._swing(atk, dist)
            elif (
                self.b_tick == atk.windup + atk.active + COMBO_DELAY
                and atk.combo >= 0
                and self.np_random.random() < 0.5
            ):
                self.b_attack, self.b_hit_done = self._attacks[atk.combo], False
                self.b_anim, self.b_tick = atk.combo, 0
                return
            if self.b_anim == atk.id and self.b_tick >= atk.length:
                self.b_attack = None
                self._set_boss(BOSS_IDLE)
                self._queue_attack(self.np_random)
        elif self.b_anim == BOSS_PARRIED:
            if self.b_tick >= PARRIED_TICKS:
                self._set_boss(BOSS_IDLE)
                self.b_wait = 3
        else:
            self.b_face = math.atan2(-fy, -fx)
            if dist > self.b_next.reach - 0.5:
                self._set_boss(BOSS_WALK)
                self._move_boss(fx, fy, dist, _BOSS_WALK)
            elif self.b_wait > 0:
                self._set_boss(BOSS_IDLE)
                self.b_wait -= 1
            else:
                self.b_attack, self.b_hit_done = self.b_next, False
                self._set_boss(self.b_next.id)
                self.b_tick = 0

    def _move_boss(self, fx: float, fy: float, dist: float, speed: float) -> None:
        step = min(speed, max(0.0, dist - _MIN_GAP))
        self.bx, self.by = self.bx - step * fx, self.by - step * fy

    def _swing(self, atk: BossAttack, dist: float) -> None:
        """One active tick of an attack: parried, dodged, missed or a hit."""
        dx, dy = self.px - self.bx, self.py - self.by
        off = abs((math.atan2(dy, dx) - self.b_face + math.pi) % (2 * math.pi) - math.pi)
        if dist > atk.reach or off > _BOSS_CONE:
            return
        t = self.p_tick
        if atk.parryable and self.p_anim is PARRYING and PARRY_WINDOW[0] <= t <= PARRY_WINDOW[1]:
            self.b_attack = None
            self._set_boss(BOSS_PARRIED)
            return
        invulnerable = self.p_anim is RIPOSTE or (
            self.p_anim is ROLLING and ROLL_IFRAMES[0] <= t <= ROLL_IFRAMES[1]
        )
        if invulnerable:
            return
        self.b_hit_done = True
        self.p_hp = max(0.0, self.p_hp - atk.damage)
        self._start(HIT_LARGE if atk.damage >= 180 else HIT_MIDDLE)

    # -- observations ----------------------------------------------------------------------

    def _info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"action_mask": self._mask.copy()}
        if self.obs_mode == "image":
            info["boss_hp"] = int(self.b_hp)  # as SoulsGym's image env does
        return info

    def _observation(self) -> Any:
        return self._frame() if self.obs_mode == "image" else self._vector()

    def _vector(self) -> dict[str, Any]:
        fx, fy, _ = self._facing()
        cx, cy, cz = self.px - 3.0 * fx, self.py - 3.0 * fy, _FLOOR_Z + 1.6
        nx, ny, n = _unit(self.bx - cx, self.by - cy)
        nz = (_FLOOR_Z + 1.0 - cz) / math.hypot(n, 0.6)
        scale = n / math.hypot(n, 0.6)
        return {
            "phase": self.phase,
            "player_hp": np.array([self.p_hp], np.float32),
            "player_max_hp": PLAYER_MAX_HP,
            "player_sp": np.array([self.p_sp], np.float32),
            "player_max_sp": PLAYER_MAX_SP,
            "boss_hp": np.array([self.b_hp], np.float32),
            "boss_max_hp": BOSS_MAX_HP,
            "player_pose": np.array([self.px, self.py, _FLOOR_Z, math.atan2(fy, fx)], np.float32),
            "boss_pose": np.array([self.bx, self.by, _FLOOR_Z, self.b_face], np.float32),
            "camera_pose": np.array([cx, cy, cz, nx * scale, ny * scale, nz], np.float32),
            "player_animation": self.p_anim.id,
            "player_animation_duration": _duration(self.p_tick),
            "boss_animation": self.b_anim,
            "boss_animation_duration": _duration(self.b_tick),
            "lock_on": 1,
        }

    def _frame(self) -> np.ndarray:
        return draw_frame(self, self._background)


def _duration(ticks: int) -> np.ndarray:
    return np.array([min(ticks, MAX_DURATION_TICKS) * STEP_SECONDS], np.float32)


def _register() -> None:
    for env_id, kwargs in (
        ("soulsai/IudexLike-v0", {}),
        ("soulsai/IudexLikeImg-v0", {"obs": "image"}),
    ):
        if env_id not in gym.registry:
            gym.register(
                id=env_id,
                entry_point="soulsai.envs.soulslike:IudexLikeEnv",
                max_episode_steps=MAX_EPISODE_STEPS,
                kwargs=kwargs,
            )


_register()

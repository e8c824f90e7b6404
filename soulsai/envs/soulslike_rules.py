"""The rules of the `soulsai/IudexLike-v0` fight (soulslike.py) as tables: the 20 actions,
the arena, the player's animations with SoulsGym's three lock timings, the boss's attacks per
phase, and the 8 action masks. Data and small pure functions only: `IudexLikeEnv` plays them
out, the policies in soulslike_play.py read them."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

STEP_SECONDS = 0.1  # game time per step, as in SoulsGym
ACTION_NAMES = (
    "forward", "forward_right", "right", "right_backward",
    "backward", "backward_left", "left", "left_forward",
    "roll_forward", "roll_forward_right", "roll_right", "roll_right_backward",
    "roll_backward", "roll_backward_left", "roll_left", "roll_left_forward",
    "light_attack", "heavy_attack", "parry", "nothing",
)  # fmt: skip
ROLL, LIGHT, HEAVY, PARRY, NOOP = 8, 16, 17, 18, 19
ARENA = (142.0, 595.0, 24.0)  # centre x, y and radius of the walkable disc


@dataclass(frozen=True)
class PlayerAnim:
    """A player animation: SoulsGym id, length in ticks (0 = until replaced), the ticks before
    attacks / rolls / moves are accepted again (SoulsGym's three timings), its SP cost, and for
    attacks the tick its blow lands, the damage and the reach."""

    id: int
    length: int
    lock: tuple[int, int, int]
    sp: float = 0.0
    hit_tick: int = 0
    damage: float = 0.0
    reach: float = 0.0


IDLE = PlayerAnim(17, 0, (0, 0, 0))
MOVE = PlayerAnim(18, 0, (0, 0, 0))
ROLLING = PlayerAnim(21, 8, (7, 7, 8), sp=16)
LIGHT_ATTACK = PlayerAnim(29, 9, (7, 7, 9), sp=20, hit_tick=4, damage=80, reach=2.6)
HEAVY_ATTACK = PlayerAnim(33, 14, (12, 12, 14), sp=28, hit_tick=8, damage=150, reach=2.8)
PARRYING = PlayerAnim(38, 9, (8, 8, 9), sp=10)
RIPOSTE = PlayerAnim(14, 20, (20, 20, 20), hit_tick=3, damage=300, reach=2.6)
HIT_MIDDLE = PlayerAnim(7, 8, (8, 8, 8))
HIT_LARGE = PlayerAnim(9, 12, (12, 12, 12))
ROLL_IFRAMES = (1, 4)  # roll ticks without damage
PARRY_WINDOW = (1, 3)  # parry ticks that catch a parryable swing


@dataclass(frozen=True)
class BossAttack:
    """One boss attack: SoulsGym animation id; wind-up, active and recovery ticks; reach (m);
    damage; whether a parry catches it; the attack it may chain into (half the time, five ticks
    into its recovery: punishing it at once is a gamble, waiting to see is not)."""

    id: int
    windup: int
    active: int
    recovery: int
    reach: float
    damage: float
    parryable: bool
    combo: int = -1

    @property
    def length(self) -> int:
        return self.windup + self.active + self.recovery


BOSS_ATTACKS = (
    BossAttack(0, 7, 2, 12, 4.0, 130, True, combo=2),  # Attack3000
    BossAttack(1, 11, 2, 15, 3.6, 190, False),  # Attack3001
    BossAttack(2, 3, 2, 12, 4.0, 160, False),  # Attack3002, only as Attack3000's follow-up
    BossAttack(3, 5, 2, 10, 5.0, 110, True),  # Attack3003
    BossAttack(10, 9, 3, 13, 4.5, 150, False),  # Attack3010
)
OPENER_IDS = {a.id for a in BOSS_ATTACKS if a.id != 2}
COMBO_DELAY = 5
BOSS_WALK, BOSS_IDLE, BOSS_PARRIED = 19, 23, 31  # WalkFrontBattle, IdleBattle, DamageParryEnemy1
PARRIED_TICKS = 25


def phase_attacks(phase: int) -> dict[int, BossAttack]:
    """The boss's attacks by animation id; phase 2 winds up two ticks faster (at least 3)."""
    cut = 2 if phase == 2 else 0
    return {a.id: replace(a, windup=max(3, a.windup - cut)) for a in BOSS_ATTACKS}


def _masks() -> dict[tuple[bool, bool, bool], np.ndarray]:
    """The 8 possible masks, by (moves, rolls, attacks) allowed; no-op is always valid."""
    out = {}
    for bits in range(8):
        move, roll, attack = bool(bits & 1), bool(bits & 2), bool(bits & 4)
        m = np.zeros(20, dtype=bool)
        m[0:8], m[8:16], m[16:19], m[NOOP] = move, roll, attack, True
        out[(move, roll, attack)] = m
    return out


MASKS = _masks()

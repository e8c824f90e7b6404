"""Field specs from Gymnasium spaces: what a received observation, reward or count may hold.

The per-algorithm experience specs built from these live in `soulsai.model.specs`.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from soulsai.errors import ConfigError
from soulsai.transport.envelope import FieldSpec

# Defaults of training.max_abs_obs / training.max_abs_reward (see config_d.yaml): what no
# honest env sends, and far enough from float32's 3.4e38 that sums, squares and running
# variances of bounded values stay finite.
MAX_ABS_OBS = 1e6
MAX_ABS_REWARD = 1e6


def box_bounds(space: gym.spaces.Box, max_abs: float) -> tuple[float | None, float | None]:
    """(low, high) every element of a received observation of `space` must lie within.

    One pair per leaf (two reductions per field on the intake's hot path): the lowest and
    highest of the Box's bounds, each side widened by the Box's widest interval, since envs
    overstep their declared bounds a little (LunarLander's angle is not wrapped). A side with
    an infinite bound, or one beyond +-`max_abs` (some envs declare float32's max), is
    +-`max_abs`. An integer Box whose dtype cannot leave the bounds needs no check.
    """
    lo = np.asarray(space.low, np.float64).reshape(-1)
    hi = np.asarray(space.high, np.float64).reshape(-1)
    if lo.size == 0:
        return -max_abs, max_abs
    lo_ok = bool(np.isfinite(lo).all() and np.abs(lo).max() <= max_abs)
    hi_ok = bool(np.isfinite(hi).all() and np.abs(hi).max() <= max_abs)
    width = float((hi - lo).max()) if lo_ok and hi_ok else 0.0
    low = float(lo.min()) - width if lo_ok else -max_abs
    high = float(hi.max()) + width if hi_ok else max_abs
    if np.issubdtype(space.dtype, np.integer):
        info = np.iinfo(space.dtype)
        if low <= info.min and high >= info.max:
            return None, None
    return low, high


def space_field(space: gym.Space, what: str, max_abs: float = MAX_ABS_OBS) -> FieldSpec:
    """FieldSpec for one item of `space` (Box: its dtype and shape, values within
    `box_bounds`; Discrete: an int64 in range)."""
    if isinstance(space, gym.spaces.Box):
        low, high = box_bounds(space, max_abs)
        return FieldSpec(space.dtype, tuple(space.shape), low=low, high=high)
    if isinstance(space, gym.spaces.Discrete):
        return FieldSpec(np.int64, (), low=int(space.start), high=int(space.start + space.n - 1))
    raise ConfigError(f"env: {what} space {type(space).__name__} is not supported (Box, Discrete)")


def _magnitude(limit: float, dtype: Any = np.float32, shape: tuple[int, ...] = ()) -> FieldSpec:
    return FieldSpec(dtype, shape, low=-limit, high=limit)

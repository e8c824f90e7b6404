"""Down-sampling of series for the figure, the live page, Grafana and `soulsai compare`:
consecutive equal-count buckets reduced by an aggregate, a time-range mask, and the moving
average of a whole series. Pure numpy."""

from __future__ import annotations

import numpy as np

AGGREGATES = ("mean", "min", "max", "last")


def bucket_edges(n: int, max_points: int) -> np.ndarray:
    """Boundaries of at most `max_points` consecutive, nearly equal buckets over n items."""
    buckets = max(1, min(n, max_points))
    return np.unique(np.linspace(0, n, buckets + 1).round().astype(np.int64))


def reduce_buckets(y: np.ndarray, edges: np.ndarray, how: str) -> np.ndarray:
    """One value per bucket: mean, min, max (ignoring NaN; NaN if all are) or last."""
    starts, ends = edges[:-1], edges[1:]
    if how == "last":
        return y[ends - 1]
    ok = np.isfinite(y)
    if how == "mean":
        sums = np.add.reduceat(np.where(ok, y, 0.0), starts)
        counts = np.add.reduceat(ok.astype(np.int64), starts)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    if how in ("min", "max"):
        fill = np.inf if how == "min" else -np.inf
        red = np.minimum if how == "min" else np.maximum
        v = red.reduceat(np.where(ok, y, fill), starts)
        return np.where(np.isfinite(v), v, np.nan)
    raise ValueError(f"unknown aggregate {how!r}; one of {AGGREGATES}")


def downsample(
    x: np.ndarray, y: np.ndarray, max_points: int, how: str = "mean"
) -> tuple[np.ndarray, np.ndarray]:
    """At most `max_points` points of (x, y): NaNs dropped, then consecutive equal-count
    buckets, each reduced by `how` (mean, min, max or last) and placed at its last x, so the
    newest point keeps its exact position."""
    if how not in AGGREGATES:
        raise ValueError(f"unknown aggregate {how!r}; one of {AGGREGATES}")
    ok = np.isfinite(y) & np.isfinite(x)
    x, y = x[ok], y[ok]
    if max_points < 1:
        return x[:0], y[:0]
    if len(x) <= max_points:
        return x, y
    edges = bucket_edges(len(x), max_points)
    return x[edges[1:] - 1], reduce_buckets(y, edges, how)


def in_range(t: np.ndarray, lo: float | None, hi: float | None) -> np.ndarray:
    """Boolean mask of t within [lo, hi] (either bound may be None)."""
    mask = np.ones(len(t), bool)
    if lo is not None:
        mask &= t >= lo
    if hi is not None:
        mask &= t <= hi
    return mask


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last `window` finite values at each point (fewer at the start); NaN
    where a value is missing."""
    out = np.full(len(values), np.nan)
    ok = np.isfinite(values)
    v = values[ok]
    if not len(v):
        return out
    c = np.cumsum(np.insert(v, 0, 0.0))
    idx = np.arange(1, len(v) + 1)
    lo = np.maximum(idx - window, 0)
    out[ok] = (c[idx] - c[lo]) / (idx - lo)
    return out

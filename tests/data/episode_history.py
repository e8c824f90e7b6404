"""A telemetry history the HTTP tests share: episodes one a second from two clients taking turns."""

from __future__ import annotations

from datetime import UTC, datetime

from soulsai.config import default_config_dir, load_config
from soulsai.telemetry.stats import EpisodeStats

T0 = 1_700_000_000.0  # unix seconds of the first episode


def iso(t: float) -> str:
    """`t` as the ISO time Grafana sends (milliseconds, Z)."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def episode_stats(
    n: int, best_at: tuple[int, ...], *, model_ids: bool = False, saved_best: bool = False
) -> EpisodeStats:
    """`n` episodes (return i, hp falling from 1 to 0), a save_best due at each of `best_at`
    (marked `saved_best` with the rolling return if asked), `model_id` i // 10 if asked."""
    cfg = load_config(default_config_dir(), ["telemetry.moving_average=10"]).telemetry
    stats = EpisodeStats(cfg)
    for i in range(1, n + 1):
        rec = {
            "episode": i,
            "return": float(i),
            "length": 20 + i % 5,
            "client_id": "alpha" if i % 2 else "beta",
            "time": T0 + i,
            "env_steps": 30 * i,
            "wall_time": float(i),
            "stream_id": f"{int((T0 + i) * 1000)}-0",
        }
        if model_ids:
            rec["model_id"] = i // 10
        rec["info.hp"] = 1.0 - i / n
        stats.add(rec)
        if i in best_at:
            if saved_best:
                rec["saved_best"] = stats.rolling("return")
            stats.best_due(rec)
    return stats

"""Telemetry statistics: down-sampling, moving averages, wins, best-model debounce, records."""

from __future__ import annotations

import json

import numpy as np
import pytest

from soulsai.config import default_config_dir, load_config
from soulsai.errors import ConfigError
from soulsai.telemetry.downsample import downsample, moving_average
from soulsai.telemetry.records import load_records
from soulsai.telemetry.stats import (
    MAX_INFO_SERIES,
    BestTracker,
    EpisodeStats,
    SystemSeries,
    stream_seconds,
)
from soulsai.telemetry.stream import SeenRecords, parse_id


def tcfg(*sets: str):
    return load_config(default_config_dir(), list(sets)).telemetry


def record(i: int, ret: float, client: str = "c1", **extra) -> dict:
    return {
        "episode": i,
        "return": ret,
        "length": 10 + i,
        "client_id": client,
        "time": 1000.0 + i,
        "env_steps": 100 * i,
        "wall_time": float(i),
        "stream_id": f"{1_000_000 + 1000 * i}-0",
        **extra,
    }


# ---------------------------------------------------------------- down-sampling


def test_downsample_bounds_points_keeps_last_point_and_mean() -> None:
    x = np.arange(10_000, dtype=float)
    y = np.sin(x / 100.0) + x / 1000.0
    for m in (1, 7, 100, 999, 5000):
        xs, ys = downsample(x, y, m)
        assert len(xs) == len(ys) <= m
        assert xs[-1] == x[-1]  # the newest point keeps its exact position
        assert np.all(np.diff(xs) > 0)
    xs, ys = downsample(x, y, 100)  # 100 equal buckets of 100: bucket means average to the mean
    assert len(xs) == 100 and ys.mean() == pytest.approx(y.mean())
    assert ys[0] == pytest.approx(y[:100].mean())


def test_downsample_aggregates_nan_and_small_inputs() -> None:
    x = np.arange(10, dtype=float)
    y = np.array([1, 5, 2, 8, np.nan, 3, 9, 0, 4, 6], dtype=float)
    xs, ys = downsample(x, y, 100)
    assert len(xs) == 9 and not np.isnan(ys).any()  # NaN dropped, nothing merged
    _, mx = downsample(x, y, 3, "max")
    _, mn = downsample(x, y, 3, "min")
    _, last = downsample(x, y, 3, "last")
    assert mx.max() == 9 and mn.min() == 0 and last[-1] == 6
    assert len(downsample(x, y, 0)[0]) == 0
    with pytest.raises(ValueError):
        downsample(x, y, 3, "median")


def test_moving_average_matches_the_definition() -> None:
    rng = np.random.default_rng(0)
    v = rng.normal(size=200)
    got = moving_average(v, 20)
    want = [v[max(0, i - 19) : i + 1].mean() for i in range(len(v))]
    np.testing.assert_allclose(got, want)
    v[5] = np.nan
    assert np.isnan(moving_average(v, 3)[5]) and np.isfinite(moving_average(v, 3)[6])


# ---------------------------------------------------------------- statistics


def test_stats_moving_averages_info_keys_wins_and_time_axis() -> None:
    cfg = tcfg(
        "telemetry.moving_average=4",
        "telemetry.wins={key: info.boss_hp, op: le, threshold: 0.0}",
    )
    stats = EpisodeStats(cfg, target_return=None)
    for i in range(1, 9):
        stats.add(record(i, float(i), **{"info.boss_hp": 0.0 if i % 2 else 0.5}))
    assert stats.n == 8
    np.testing.assert_allclose(stats.view("return_avg"), [1, 1.5, 2, 2.5, 3.5, 4.5, 5.5, 6.5])
    np.testing.assert_allclose(stats.view("wins"), [1, 0] * 4)
    assert stats.latest("wins_avg") == 0.5
    assert stats.latest("info.boss_hp_avg") == 0.25
    assert stats.rolling("return") == 6.5
    assert {"episode", "env_steps", "wall_time", "time", "length_avg"} <= set(stats.series_names())
    # time axis: when Redis stored the record (stream id ms), never going backwards
    assert stats.view("t")[0] == stream_seconds("1001000-0") == 1001.0
    stats.add(record(9, 9.0, stream_id="5-0"))  # a replacement Redis with a clock far behind
    assert stats.view("t")[-1] == stats.view("t")[-2]


def test_info_series_are_bounded() -> None:
    stats = EpisodeStats(tcfg())
    for i in range(1, 41):  # a client inventing new info keys in every record
        stats.add(record(i, 1.0, **{f"info.k{i}_{j}": 1.0 for j in range(4)}))
    assert sum(n.startswith("info.") for n in stats.series_names()) == 2 * MAX_INFO_SERIES


def test_info_metrics_off_keeps_only_configured_keys() -> None:
    stats = EpisodeStats(tcfg("telemetry.info_metrics=false"))
    stats.add(record(1, 1.0, **{"info.x": 3.0}))
    assert "info.x" not in stats.series_names()


def test_best_debounce_on_a_rising_curve_and_none_on_a_falling_one() -> None:
    stats = EpisodeStats(tcfg("telemetry.moving_average=5", "telemetry.best_interval=10"))
    sent = []
    for i in range(1, 61):
        rec = record(i, float(i))
        stats.add(rec)
        value = stats.best_due(rec)  # one record per batch: the slowest, most eager case
        if value is not None:
            sent.append((i, value))
            assert rec["saved_best"] == value
    # a full window first (5 episodes), then at most one save per 10 episodes
    assert [i for i, _ in sent] == [5, 15, 25, 35, 45, 55]
    assert all(b > a for (_, a), (_, b) in zip(sent, sent[1:], strict=False))
    for i in range(61, 120):  # the curve falls: nothing to save
        rec = record(i, 100.0 - i)
        stats.add(rec)
        assert stats.best_due(rec) is None
    assert stats.best_value() == pytest.approx(58.0)  # mean of 56..60
    assert [e.kind for e in stats.events].count("best") == 6


def test_best_state_is_restored_from_the_records_on_disk() -> None:
    cfg = tcfg("telemetry.moving_average=2", "telemetry.best_interval=3")
    first = EpisodeStats(cfg)
    written = []
    for i in range(1, 11):
        rec = record(i, float(i))
        first.add(rec)
        first.best_due(rec)
        written.append(json.loads(json.dumps(rec)))
    again = EpisodeStats(cfg)
    for rec in written:
        again.add(rec)
    assert again.best.saved == first.best.saved and again.best.best == first.best.best
    assert again.best.saved_episode == first.best.saved_episode
    rec = record(11, 0.0)  # worse than what was saved: a restart must not save it
    again.add(rec)
    assert again.best_due(rec) is None


def test_best_is_saved_once_per_model_id_and_the_id_is_in_the_event() -> None:
    # PPO-like: many episodes per model version, the average rising all the time
    stats = EpisodeStats(tcfg("telemetry.moving_average=5", "telemetry.best_interval=5"))
    sent = []
    for i in range(1, 101):
        rec = record(i, float(i), model_id=(i - 1) // 20)  # 20 episodes per model
        stats.add(rec)
        if stats.best_due(rec) is not None:
            sent.append((i, rec["saved_best_model_id"]))
    assert [m for _, m in sent] == [0, 1, 2, 3, 4]  # once per model, never the same twice
    best = [e for e in stats.events if e.kind == "best"]
    assert [e.model_id for e in best] == [0, 1, 2, 3, 4]
    assert "model 4" in best[-1].title and best[-1].text.endswith("model 4")
    again = EpisodeStats(stats.cfg)  # a restart reads the last save's model back
    for i in range(1, 101):
        rec = record(i, float(i), model_id=(i - 1) // 20)
        if i == sent[-1][0]:
            rec.update(saved_best=99.0, saved_best_model_id=4)
        again.add(rec)
    rec = record(101, 1000.0, model_id=4)
    again.add(rec)
    assert again.best_due(rec) is None  # model 4 is saved already
    rec = record(102, 1000.0, model_id=5)
    again.add(rec)
    assert again.best_due(rec) is not None and rec["saved_best_model_id"] == 5


def test_best_tracker_needs_improvement_and_distance() -> None:
    b = BestTracker(interval=3)
    assert b.update(1.0, 1) and not b.update(2.0, 2) and not b.update(0.5, 4)
    assert b.update(1.5, 5) and b.best == 2.0 and b.saved == 1.5


def test_target_return_sets_solved() -> None:
    stats = EpisodeStats(tcfg("telemetry.moving_average=3"), target_return=10.0)
    for i, r in enumerate([5, 20, 20, 1], 1):
        stats.add(record(i, float(r)))
        assert stats.solved == (i >= 3)


def test_events_join_once_and_leave() -> None:
    stats = EpisodeStats(tcfg())
    stats.note_client("a", True, 1.0)
    stats.add(record(1, 1.0, client="a"))  # first episode of an announced client: no 2nd join
    stats.add(record(2, 1.0, client="b"))  # first sign of b is its first episode
    stats.note_client("b", True, 3.0)
    stats.note_client("a", False, 4.0)
    stats.note_client("a", True, 5.0)  # a came back
    assert [(e.kind, e.text) for e in stats.events] == [
        ("join", "a"),
        ("join", "b"),
        ("leave", "a"),
        ("join", "a"),
    ]


def test_system_series_rate_and_bounded_memory() -> None:
    s = SystemSeries(capacity=100)
    for i in range(250):
        s.sample(float(i), 50 * i, 2)
    t, values = s.arrays()
    assert len(t) <= 100 and t[-1] == 249.0 and t[0] == 0.0
    assert values["steps_per_s"][-1] == pytest.approx(50.0)
    assert s.latest("clients") == 2


# ---------------------------------------------------------------- records


def test_seen_records_skips_duplicates_and_counts_gaps() -> None:
    seen = SeenRecords(window=3)
    recs = [record(i, 0.0, client_episode=i) for i in (1, 2, 4)]
    assert [seen.add(dict(r)) for r in recs] == [True, True, True]
    assert seen.missing == 1  # episode 3 of c1 never arrived
    assert not seen.add(dict(recs[1])) and seen.duplicates == 1
    # a client restarted under the same id counts from 1 again: neither a gap nor a duplicate
    assert seen.add(record(20, 0.0, client_episode=1)) and seen.missing == 1
    # records without a client_episode (older clients) are told apart by their end time
    assert seen.add(record(30, 0.0)) and not seen.add(record(30, 0.0))
    for i in range(40, 50):  # beyond the window, old keys are forgotten (memory stays bounded)
        seen.add(record(i, 0.0))
    assert seen.add(dict(recs[0]))


def test_parse_id_orders_stream_ids() -> None:
    assert parse_id("5-1") < parse_id("5-2") < parse_id("10-0") and parse_id("7") == (7, 0)


def test_load_records_cuts_a_torn_last_line(tmp_path) -> None:
    path = tmp_path / "episodes.jsonl"
    good = [json.dumps(record(i, 1.0)) for i in (1, 2)]
    path.write_text("\n".join(good) + '\n{"episode": 3, "ret')
    assert [r["episode"] for r in load_records(path)] == [1, 2]
    assert path.read_text().endswith("}\n")  # the next append starts on a fresh line
    assert load_records(tmp_path / "missing.jsonl") == []


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    "override, word",
    [
        ("telemetry.log_keys=[retrun_avg]", "log_keys"),
        ("telemetry.figure_y=[nothing]", "figure_y"),
        ("telemetry.best_key=wins", "best_key"),
        ("telemetry.figure_x=length", "figure_x"),
        ("telemetry.wins={key: return, op: bigger, threshold: 1}", "op"),
    ],
)
def test_config_names_the_bad_telemetry_key(override: str, word: str) -> None:
    with pytest.raises(ConfigError, match=word):
        tcfg(override)


def test_config_accepts_wins_and_info_series() -> None:
    cfg = tcfg(
        "telemetry.wins={key: info.boss_hp, op: le, threshold: 0.0}",
        "telemetry.best_key=wins",
        "telemetry.log_keys=[wins_avg, info.boss_hp_avg]",
    )
    assert cfg.wins is not None and cfg.wins.op == "le" and cfg.best_key == "wins"

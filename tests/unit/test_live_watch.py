"""The live page's data (telemetry/live.py): the model and its age, learner statistics per
algorithm, progress and ETA, the client table and rejects by reason, from hostile heartbeats
and stats fields as much as from honest ones."""

from __future__ import annotations

import json
import math

import pytest

from soulsai.config import default_config_dir, load_config
from soulsai.telemetry.live import (
    MAX_CLIENT_ROWS,
    MAX_REASONS,
    LiveWatch,
    best_markers,
    number,
    progress,
    reasons,
)
from soulsai.telemetry.stats import EpisodeStats, SystemSeries
from soulsai.telemetry.web import WebState, live_payload


def episode_stats(*clients: str) -> EpisodeStats:
    """Statistics holding one episode of each of `clients`."""
    sets = ["telemetry.moving_average=2", "telemetry.best_interval=2"]
    stats = EpisodeStats(load_config(default_config_dir(), sets).telemetry)
    for i, cid in enumerate(clients):
        stats.add({"return": 1.0, "length": 5, "client_id": cid, "time": 1000.0 + i})
    return stats


def payload(watch: LiveWatch, now: float = 100.0, *clients: str) -> dict:
    return watch.payload(now, episode_stats(*clients), 0, None, 100)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("1.5", 1.5),
        (b"7", 7.0),
        (3, 3.0),
        ("nan", None),
        ("inf", None),
        ("1e300", None),  # finite but beyond any honest counter
        (True, None),
        ([1], None),
        ({"a": 1}, None),
        ("12abc", None),
        (None, None),
    ],
)
def test_number_takes_only_bounded_finite_numbers(raw, expected) -> None:
    assert number(raw) == expected


def test_model_age_counts_from_when_the_model_id_changed() -> None:
    watch = LiveWatch("dqn", 0)
    watch.observe(10.0, {"model_id": "3", "time": "1"}, {})
    watch.observe(15.0, {"model_id": "3", "time": "2"}, {})
    assert payload(watch, 20.0)["model"] == {"id": 3, "age_s": 10.0, "trainer_age_s": 5.0}
    watch.observe(18.0, {"model_id": "4", "time": "2"}, {})  # the same stats round: silent
    assert payload(watch, 20.0)["model"] == {"id": 4, "age_s": 2.0, "trainer_age_s": 5.0}


@pytest.mark.parametrize(
    "algo, keys",
    [
        ("dqn", ["loss", "q_mean", "epsilon", "buffer", "updates"]),
        (
            "ppo",
            [
                "approx_kl", "entropy", "clipfrac", "explained_variance", "lr", "loss",
                "iterations", "updates",
            ],
        ),
    ],
)  # fmt: skip
def test_learner_statistics_per_algorithm_with_curves_of_the_non_counters(algo, keys) -> None:
    watch = LiveWatch(algo, 0)
    for t in range(3):
        stats = {k: str(0.5 + t) for k in keys}
        watch.observe(float(t), {**stats, "time": str(t), "loss": "nan"}, {})
    out = payload(watch)
    assert [item["key"] for item in out["learner"]] == keys
    values = {item["key"]: item["value"] for item in out["learner"]}
    assert values["loss"] is None and values[keys[1]] == 2.5
    history = out["learner_history"]
    assert history["t"] == [0.0, 1.0, 2.0]
    assert set(history) == {"t"} | {k for k in keys if k not in ("buffer", "updates", "iterations")}
    assert history["loss"] == [None, None, None] and history[keys[1]] == [0.5, 1.5, 2.5]


def test_learner_curve_takes_one_point_per_stats_round() -> None:
    watch = LiveWatch("dqn", 0)
    for t in range(5):  # the training node writes its hash every few seconds
        watch.observe(float(t), {"loss": "1", "time": str(t // 2)}, {})
    assert payload(watch)["learner_history"]["t"] == [0.0, 2.0, 4.0]


def test_client_rows_rate_lag_and_counts_from_heartbeats() -> None:
    watch = LiveWatch("dqn", 0)
    watch.observe(0.0, {"model_id": "9", "time": "1"}, {})
    for t, steps in ((1.0, 100), (3.0, 500), (5.0, 900)):
        beat = {"model_id": 7, "steps": steps, "time": t, "dropped": 2, "dropped_episodes": 1}
        watch.observe(t, {}, {"c1": {**beat, "discarded": 4}})
    (row,) = payload(watch, 6.0)["clients"]
    assert row["id"] == "c1" and row["live"] and row["steps_per_s"] == 200.0
    assert row["model_id"] == 7 and row["model_lag"] == 2
    assert row["dropped"] == 3 and row["discarded"] == 4 and row["heartbeat_age_s"] == 1.0
    # a restarted client counts its steps from 0 again: no negative rate, a fresh window
    watch.observe(7.0, {}, {"c1": {"steps": 50, "time": 7.0}})
    assert payload(watch, 7.0)["clients"][0]["steps_per_s"] is None
    # gone: still listed (after the live ones), its last heartbeat ageing
    watch.observe(8.0, {}, {"c2": {"steps": 1, "time": 8.0}})
    rows = payload(watch, 9.0)["clients"]
    assert [(r["id"], r["live"]) for r in rows] == [("c2", True), ("c1", False)]
    assert rows[1]["heartbeat_age_s"] == 2.0


def test_hostile_heartbeats_become_empty_cells_not_errors() -> None:
    watch = LiveWatch("dqn", 0)
    watch.observe(0.0, {"model_id": "not a number", "time": "x"}, {})
    beats = {
        "<script>alert(1)</script>": {"steps": "1e300", "model_id": -5, "dropped": [1]},
        "list": [1, 2],  # not a JSON object
        "nested": {"steps": {"deep": 1}, "time": {"a": 1}, "discarded": "nan"},
        "huge": {"model_id": 1e18, "dropped": 1e15, "dropped_episodes": 1e15},
    }
    watch.observe(1.0, {}, beats)  # type: ignore[dict-item]
    rows = {r["id"]: r for r in payload(watch, 2.0)["clients"]}
    assert set(rows) == set(beats)
    hostile = rows["<script>alert(1)</script>"]
    assert hostile["steps"] is None and hostile["dropped"] == 0 and hostile["model_lag"] is None
    assert rows["nested"]["discarded"] is None and rows["huge"]["model_id"] is None
    assert rows["huge"]["dropped"] == 2 * 10**15
    json.dumps(payload(watch, 2.0), allow_nan=False)  # no NaN or inf reaches the page


def test_client_table_and_memory_are_bounded_against_a_flood_of_ids() -> None:
    watch = LiveWatch("dqn", 0)
    for t in range(5):
        beats = {f"fake-{t}-{i}": {"steps": i} for i in range(MAX_CLIENT_ROWS)}
        watch.observe(float(t), {}, {"honest": {"steps": t}, **beats})
    assert len(watch.clients) <= 2 * MAX_CLIENT_ROWS + 1
    rows = payload(watch, 5.0, "honest")["clients"]  # its episodes arrive; theirs do not
    assert len(rows) == MAX_CLIENT_ROWS and all(r["live"] for r in rows)
    assert rows[0]["id"] == "honest" and rows[0]["episodes"] == 1


@pytest.mark.parametrize(
    "raw, expected",
    [
        (json.dumps({"stale": 3, "bad_shape": 1}), {"stale": 3, "bad_shape": 1}),
        (json.dumps({"<b>x</b>": 2, "ok": 0, "neg": -1, "s": "5"}), {"s": 5}),
        (json.dumps([1, 2]), {}),
        ("{not json", {}),
        ("[" * 100_000, {}),  # too long to parse
        (None, {}),
        (json.dumps({f"r{i}": 1 for i in range(500)}), {f"r{i}": 1 for i in range(MAX_REASONS)}),
    ],
)
def test_trainer_rejects_by_reason_are_parsed_and_bounded(raw, expected) -> None:
    assert reasons(raw) == expected


def test_progress_and_eta() -> None:
    assert progress(500, 0, 10.0) == {"max_steps": 0, "fraction": None, "eta_s": None}
    assert progress(250, 1000, 10.0) == {"max_steps": 1000, "fraction": 0.25, "eta_s": 75.0}
    assert progress(250, 1000, None)["eta_s"] is None  # no rate yet
    assert progress(250, 1000, 0.0)["eta_s"] is None  # stalled: no ETA rather than infinity
    assert progress(1200, 1000, 10.0) == {"max_steps": 1000, "fraction": 1.0, "eta_s": 0.0}


def test_best_markers_sit_at_the_x_of_the_last_episode_before_the_save() -> None:
    stats = episode_stats()
    for i in range(1, 11):
        rec = {"return": float(i), "length": 10, "client_id": "c", "model_id": i // 3}
        rec.update(time=1000.0 + i, env_steps=100 * i, episode=i)
        stats.add(rec)
        if i in (4, 8):
            assert stats.best_due(rec) is not None
    markers = best_markers(stats, "env_steps")
    assert [(m["x"], m["model_id"]) for m in markers] == [(400.0, 1), (800.0, 2)]
    assert markers[0]["title"] == "best model saved (model 1)"
    assert math.isfinite(markers[1]["x"])


def test_live_payload_system_series_share_one_time_axis_while_the_rate_is_unknown() -> None:
    system = SystemSeries()
    for i in range(5):  # the smoothed rate needs two samples: the first is NaN
        system.sample(1000.0 + i, 100 * i, 2)
    state = WebState(episode_stats(), system, dict, "env_steps", ["return"], "t")
    out = live_payload(state, 100)["system"]
    assert len(out["t"]) == len(out["steps_per_s"]) == len(out["clients"]) == 5
    assert out["steps_per_s"][0] is None and out["steps_per_s"][-1] == pytest.approx(100.0)

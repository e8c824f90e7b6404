"""The smoothed rate (WindowRate) and the Prometheus exposition of a node (NodeMetrics): real
counters, reject reasons at 0 from the start, run_info, and `promtool check metrics`."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import soulsai
from soulsai.metrics import (
    COMMAND_REJECTS,
    EPISODE_REJECTS,
    MESSAGE_REJECTS,
    TRAINER_REJECTS,
    NodeMetrics,
    WindowRate,
    run_labels,
)
from soulsai.telemetry.node import COUNTERS as TELEMETRY_COUNTERS
from soulsai.telemetry.node import GAUGES as TELEMETRY_GAUGES
from soulsai.telemetry.stats import SystemSeries
from soulsai.training.common import Rates
from soulsai.training.node import METRICS as TRAINER_METRICS
from soulsai.training.node import node_metrics

PACKAGE = Path(soulsai.__file__).parent


def bursts(seconds: int, every: int = 3, burst: int = 2100):
    """A counter that grows by `burst` every `every` seconds (700/s on average), as a training
    node's does when its intake drains Redis in rounds; sampled once a second."""
    return [(float(t), (t // every) * burst) for t in range(seconds)]


# ---------------------------------------------------------------- the smoothed rate


def test_the_rate_of_a_bursty_counter_never_reads_zero_and_settles_at_the_true_rate() -> None:
    rate = WindowRate(window=30.0)
    got = [rate.add(t, v) for t, v in bursts(120)]
    assert got[0] is None
    flowing = got[3:]  # from the first burst on
    assert min(flowing) > 0
    assert all(r == pytest.approx(700.0, rel=0.12) for r in got[40:])


def test_the_rate_falls_to_zero_within_a_window_after_the_steps_stop() -> None:
    rate = WindowRate(window=30.0)
    for t, v in bursts(60):
        rate.add(t, v)
    last = 19 * 2100
    after = [rate.add(60.0 + i, last) for i in range(40)]
    assert all(a >= b for a, b in zip(after, after[1:], strict=False))  # decays, never jumps
    assert after[-1] == 0.0 and after[0] > 0


def test_a_counter_that_restarts_lower_neither_goes_negative_nor_spikes() -> None:
    rate = WindowRate(window=30.0)
    for t in range(40):
        rate.add(float(t), 1000 * t)  # 1000/s
    seen = [rate.add(40.0 + t, 5000 + 1000 * t) for t in range(40)]  # a resumed node: lower
    assert all(0 < r <= 1000.0 + 1e-9 for r in seen)
    assert seen[-1] == pytest.approx(1000.0)


def test_system_series_steps_per_s_never_reads_zero_while_steps_flow_in_bursts() -> None:
    """The telemetry node's steps/s (page, /api/summary, the Grafana series) used to be the
    difference of two samples a second apart: 0 whenever no burst fell in between."""
    series = SystemSeries()
    for t, v in bursts(90):
        series.sample(1e9 + t, v, 2)
    _, values = series.arrays()
    assert min(values["steps_per_s"][3:]) > 0
    assert series.latest("steps_per_s") == pytest.approx(700.0, rel=0.12)


def test_system_series_rate_follows_the_raw_counter_through_a_restart() -> None:
    series = SystemSeries()
    for t in range(40):
        series.sample(float(t), 1000 * t, 1)
    for t in range(40, 50):  # the node restarted from a checkpoint: its count went back
        series.sample(float(t), 39_000, 1, counter=20_000 + 1000 * (t - 40))
    assert 0 < series.latest("steps_per_s") <= 1000.0


def test_the_training_nodes_rates_are_smoothed_too() -> None:
    start = time.monotonic()
    rates = Rates(samples=0)  # its first sample is now
    got = [rates.update(start + t, samples=v)["samples_per_s"] for t, v in bursts(60)[1:]]
    assert min(got[2:]) > 0  # from the first burst (t=3) on


# ---------------------------------------------------------------- exposition


def exposition(metrics: NodeMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def families(text: str) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def trainer_metrics() -> NodeMetrics:
    return node_metrics(
        TRAINER_METRICS, run_labels("2026-01-01_ppo_CartPole-v1", "ppo", "CartPole-v1", None)
    )


def test_counts_are_counters_and_reject_reasons_exist_at_zero_before_the_first_reject() -> None:
    m = trainer_metrics()
    m.set_all(
        {"env_steps": 1200, "updates": 7, "accepted": 1100, "model_id": 3, "loss": float("nan")}
    )
    text = exposition(m)
    assert "soulsai_trainer_env_steps_total 1200.0" in text
    assert "# TYPE soulsai_trainer_env_steps_total counter" in text
    assert "# TYPE soulsai_trainer_model_id gauge" in text
    assert "soulsai_trainer_loss" not in text  # NaN before the first update: no sample
    assert "_per_s" not in text  # rates are rate() of the counters
    for reason in TRAINER_REJECTS:
        assert f'soulsai_trainer_rejected_total{{reason="{reason}"}} 0.0' in text
    assert (
        'soulsai_run_info{algo="ppo",env="CartPole-v1",preset="",'
        'run="2026-01-01_ppo_CartPole-v1"} 1.0' in text
    )


def test_counters_never_go_back_and_rejects_accumulate() -> None:
    m = trainer_metrics()
    m.set_all({"env_steps": 500}, {"stale_model": 4})
    m.set_all({"env_steps": 300}, {"stale_model": 9, "bad_shape": 1})
    text = exposition(m)
    assert "soulsai_trainer_env_steps_total 500.0" in text
    assert 'soulsai_trainer_rejected_total{reason="stale_model"} 9.0' in text
    assert 'soulsai_trainer_rejected_total{reason="bad_shape"} 1.0' in text


def test_telemetry_metrics_are_counters_gauges_and_the_smoothed_rate() -> None:
    m = NodeMetrics(
        "telemetry", TELEMETRY_GAUGES, TELEMETRY_COUNTERS, EPISODE_REJECTS,
        run_labels("r", "dqn", "CartPole-v1", "dqn_cartpole"),
    )  # fmt: skip
    m.set_all({"episodes": 12, "env_steps": 900, "env_steps_per_second": 712.5, "clients": 2})
    got = families(exposition(m))
    assert got["soulsai_telemetry_episodes"].type == "counter"
    assert got["soulsai_telemetry_env_steps_per_second"].samples[0].value == 712.5
    assert {s.labels["reason"] for s in got["soulsai_telemetry_rejected"].samples} >= set(
        EPISODE_REJECTS
    )


# ---------------------------------------------------------------- the reasons' list


def test_every_reason_the_code_can_count_is_pre_initialized() -> None:
    """Reasons are literals in the code: ProtocolError("reason", ...) in the decoders, and the
    intake's own `_reject("reason", ...)` / `rejected["reason"]`."""
    raised: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        raised |= set(re.findall(r'ProtocolError\(\s*"([a-z_]+)"', text))
        raised |= set(re.findall(r'(?:_reject\(|rejected\[)"([a-z_]+)"', text))
    assert "stale_model" in raised and "bad_shape" in raised  # the scan sees them
    commands = set(re.findall(r'ProtocolError\(\s*"([a-z_]+)"', read("transport/commands.py")))
    assert {f"command_{r}" for r in commands} == set(COMMAND_REJECTS)
    assert raised - commands <= set(TRAINER_REJECTS), raised - set(TRAINER_REJECTS)
    episode = set(re.findall(r'"([a-z_]+)"', read("transport/episodes.py")))
    assert episode & set(MESSAGE_REJECTS) <= set(EPISODE_REJECTS)


def read(name: str) -> str:
    return (PACKAGE / name).read_text()


# ---------------------------------------------------------------- promtool


def promtool_check(text: str) -> subprocess.CompletedProcess:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool missing (Debian: apt-get install prometheus; scripts/setup.sh)")
    return subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )


def test_promtool_finds_nothing_to_complain_about_in_a_full_exposition() -> None:
    m = trainer_metrics()
    m.set_all({k: 1.0 for k in TRAINER_METRICS}, {"stale_model": 3})
    out = promtool_check(exposition(m))
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), out

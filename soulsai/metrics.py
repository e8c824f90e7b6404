"""Prometheus /metrics for a node (a private registry and an HTTP server on a configured port),
and the one smoothed rate every view of "env steps per second" shows.

Counts that only grow (env steps, updates, episodes, rejects) are exported as counters
(`..._total`), so Grafana takes their `rate()`; a reject counter exists for every known reason
from the start, at 0. Levels (model id, buffer, loss) are gauges. `soulsai_run_info` names the
run, its algorithm, env and preset. `promtool check metrics` passes on both nodes' /metrics.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from soulsai.errors import ConfigError

RATE_WINDOW = 30.0  # seconds of counter history behind a smoothed rate

# Reject reasons, as counter labels (ProtocolError.reason and the intake's own verdicts).
# tests/unit/test_metrics.py checks that every reason the code can raise is listed here.
MESSAGE_REJECTS = (
    "not_msgpack",
    "too_large",
    "bad_version",
    "bad_kind",
    "bad_structure",
    "bad_field",
    "bad_shape",
    "bad_dtype",
    "bad_batch_size",
    "out_of_range",
    "non_finite",
    "bad_mask",
    "bad_compression",
)
INTAKE_REJECTS = ("future_model", "stale_model", "over_share", "internal_error")
COMMAND_REJECTS = tuple(
    f"command_{r}" for r in ("not_json", "too_large", "bad_structure", "unknown_command")
)
TRAINER_REJECTS = (*MESSAGE_REJECTS, *INTAKE_REJECTS, *COMMAND_REJECTS)
EPISODE_REJECTS = (
    "not_msgpack",
    "too_large",
    "bad_version",
    "bad_kind",
    "bad_structure",
    "out_of_range",
    "non_finite",
)
MAX_REASONS = 64  # reject labels at most (a reason never seen before is still counted)


class WindowRate:
    """Per-second rate of a growing counter over the last `window` seconds.

    Fed `(now, value)` samples, it answers (increase since the newest sample at least
    `window` old) / (time between the two). So it reads more than 0 as long as the counter
    grew within the window, however the growth is bunched (an intake that drains Redis in
    bursts, a PPO node that trains for seconds between batches), and falls to 0 one window
    after the counter stopped. A counter that goes down restarted (a new training node, a fresh
    Redis): that interval counts as no growth, and the new value is the new base.
    """

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self._samples: deque[tuple[float, float]] = deque()  # (time, growth since the start)
        self._last: float | None = None  # the counter's last value
        self._growth = 0.0

    def add(self, now: float, value: float) -> float | None:
        """Take a sample (`now` from a monotonic clock); returns the rate."""
        if self._last is not None and value > self._last:
            self._growth += value - self._last
        self._last = value
        if self._samples and now <= self._samples[-1][0]:
            self._samples[-1] = (self._samples[-1][0], self._growth)  # same instant
        else:
            self._samples.append((now, self._growth))
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.window:
            self._samples.popleft()
        return self.rate

    @property
    def rate(self) -> float | None:
        """Per second over the window, or None before two samples."""
        if len(self._samples) < 2:
            return None
        (t0, g0), (t1, g1) = self._samples[0], self._samples[-1]
        return (g1 - g0) / (t1 - t0)


class NodeMetrics:
    """A node's /metrics: `set_all` takes a stats dict (and the rejects by reason) in one go;
    a scrape exports the last one. Keys in `counters` are counters (their values never go
    back within a process), keys in `gauges` gauges; a key missing from the stats, or NaN
    (a loss before the first update), has no sample."""

    def __init__(
        self,
        node: str,
        gauges: dict[str, str],
        counters: dict[str, str] | None = None,
        reasons: Iterable[str] = (),
        run: dict[str, str] | None = None,
    ) -> None:
        self.node = node
        self.gauges = dict(gauges)
        self.counters = dict(counters or {})
        self.run = dict(run or {})
        self._lock = threading.Lock()
        self._values: dict[str, float] = {}
        self._counts: dict[str, float] = {}
        self._rejected: dict[str, float] = dict.fromkeys(reasons, 0.0)
        self.registry = CollectorRegistry()
        self.registry.register(self)  # a custom collector: `collect` below

    def set_all(self, stats: dict[str, Any], rejected: dict[str, int] | None = None) -> None:
        with self._lock:
            for key in (*self.gauges, *self.counters):
                v = stats.get(key)
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    continue
                if key in self.counters:
                    self._counts[key] = max(self._counts.get(key, 0.0), float(v))
                else:
                    self._values[key] = float(v)
            for reason, total in (rejected or {}).items():
                if reason in self._rejected or len(self._rejected) < MAX_REASONS:
                    self._rejected[reason] = max(self._rejected.get(reason, 0.0), float(total))

    def collect(self) -> Iterator[Metric]:
        prefix = f"soulsai_{self.node}"
        with self._lock:
            values, counts, rejected = dict(self._values), dict(self._counts), dict(self._rejected)
        for key, doc in self.counters.items():
            if key in counts:
                yield CounterMetricFamily(f"{prefix}_{key}", doc, value=counts[key])
        for key, doc in self.gauges.items():
            if key in values and not math.isnan(values[key]):
                yield GaugeMetricFamily(f"{prefix}_{key}", doc, value=values[key])
        family = CounterMetricFamily(
            f"{prefix}_rejected", "messages rejected, by reason", labels=["reason"]
        )
        for reason, total in sorted(rejected.items()):
            family.add_metric([reason], total)
        yield family
        if self.run:
            info = GaugeMetricFamily(
                "soulsai_run_info", "the run this node works for (always 1)", labels=list(self.run)
            )
            info.add_metric(list(self.run.values()), 1)
            yield info

    def serve(self, port: int, setting: str, host: str = "127.0.0.1") -> None:
        """Serve /metrics on `host`:`port` (0 = off; loopback unless the config says otherwise);
        a busy port is an error naming the setting."""
        if port == 0:
            return
        try:
            start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            raise ConfigError(
                f"{setting}={port}: cannot serve /metrics there ({e.strerror}); "
                f"choose another port with --set {setting}=PORT"
            ) from None


def run_labels(run: str, algo: str, env: str, preset: str | None) -> dict[str, str]:
    """The labels of `soulsai_run_info`: the run folder's name, algorithm, env id, preset."""
    return {"run": run, "algo": algo, "env": env, "preset": preset or ""}

"""Prometheus /metrics for a node: a private registry and an HTTP server on a configured port."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from soulsai.errors import ConfigError


class NodeMetrics:
    """Gauges mirrored from a node's counters; `set_all` copies a stats dict in one go."""

    def __init__(self, node: str, names: dict[str, str]) -> None:
        self.registry = CollectorRegistry()
        self.gauges = {
            key: Gauge(f"soulsai_{node}_{key}", doc, registry=self.registry)
            for key, doc in names.items()
        }
        self.rejected = Counter(
            f"soulsai_{node}_rejected",
            "messages rejected, by reason",
            ["reason"],
            registry=self.registry,
        )
        self._rejected_seen: dict[str, float] = {}

    def set_all(self, stats: dict[str, float], rejected: dict[str, int] | None = None) -> None:
        for key, gauge in self.gauges.items():
            if key in stats and stats[key] is not None:
                gauge.set(float(stats[key]))
        for reason, total in (rejected or {}).items():
            delta = total - self._rejected_seen.get(reason, 0)
            if delta > 0:
                self.rejected.labels(reason=reason).inc(delta)
                self._rejected_seen[reason] = total

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

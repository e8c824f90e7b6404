"""The telemetry node's HTTP side: one FastAPI app served by uvicorn in a background thread.

- `/`: the live page (self-contained HTML that polls /api/live);
- `/api/live`: what the live page draws, down-sampled to ?points=;
- `/api/series`: plain JSON rows (or columns) of chosen series, for Grafana's Infinity plugin;
- `/api/summary`: the latest numbers; `/api/events`: best-model saves, client joins/leaves;
- `/grafana/...`: the JSON / SimpleJSON data source (grafana.py);
- `/metrics`: Prometheus text of the node's registry.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI, HTTPException, Query
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from soulsai.errors import ConfigError
from soulsai.telemetry.grafana import GrafanaSource, make_router, parse_time
from soulsai.telemetry.stats import (
    AVG,
    EpisodeStats,
    SystemSeries,
    bucket_edges,
    downsample,
    in_range,
    reduce_buckets,
)

log = logging.getLogger(__name__)

ROW_KEYS = ("episode", "env_steps", "wall_time")  # always in /api/series rows


@dataclass
class WebState:
    """What the HTTP side reads; the node owns and updates it."""

    stats: EpisodeStats
    system: SystemSeries
    summary: Callable[[], dict[str, Any]]
    x_key: str
    y_keys: list[str]
    title: str
    registry: CollectorRegistry | None = None


def _clean(values: np.ndarray) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in values.tolist()]


def live_payload(state: WebState, points: int) -> dict[str, Any]:
    """Panels of the configured series against the configured x, plus the sampled system
    series; every curve down-sampled to at most `points`."""
    stats = state.stats
    with stats.lock:
        x = stats.view(state.x_key)
        cols = {k: (stats.view(k), stats.view(k + AVG)) for k in state.y_keys}
    panels = []
    for name, (raw, avg) in cols.items():
        panel: dict[str, Any] = {"name": name, "x": [], "raw": [], "avg": []}
        if x is not None and raw is not None:
            keep = np.isfinite(raw) & np.isfinite(x)
            if keep.any():
                edges = bucket_edges(int(keep.sum()), points)
                avg = avg if avg is not None else np.full(len(raw), np.nan)
                panel["x"] = _clean(reduce_buckets(x[keep], edges, "last"))
                panel["raw"] = _clean(reduce_buckets(raw[keep], edges, "mean"))
                panel["avg"] = _clean(reduce_buckets(avg[keep], edges, "mean"))
        panels.append(panel)
    t, values = state.system.arrays()
    system: dict[str, Any] = {}
    for key in ("steps_per_s", "clients"):
        ts, ys = downsample(t, values[key], points, "mean" if key == "steps_per_s" else "last")
        system[key] = _clean(ys)
        system["t"] = _clean(ts)
    return {
        "title": state.title,
        "x_key": state.x_key,
        "window": stats.window,
        "summary": state.summary(),
        "panels": panels,
        "system": system,
    }


def series_payload(
    state: WebState,
    keys: list[str],
    lo: float | None,
    hi: float | None,
    points: int,
    client: str | None,
) -> dict[str, np.ndarray]:
    """Columns (time in ms, episode, env_steps, wall_time and `keys`) of the episodes within
    [lo, hi], bucket-averaged to at most `points` rows."""
    stats = state.stats
    with stats.lock:
        t = stats.view("t")
        if t is None:
            return {}
        cols = {k: stats.view(k) for k in (*ROW_KEYS, *keys)}
        mask = in_range(t, lo, hi)
        if client is not None:
            mask &= stats.client_mask([client])
    out: dict[str, np.ndarray] = {}
    edges = bucket_edges(int(mask.sum()), points)
    if len(edges) < 2:
        return {"time": np.zeros(0)}
    out["time"] = np.round(reduce_buckets(t[mask], edges, "last") * 1000)
    for k, col in cols.items():
        if col is None:
            out[k] = np.full(len(edges) - 1, np.nan)
        else:
            out[k] = reduce_buckets(col[mask], edges, "last" if k in ROW_KEYS else "mean")
    return out


def make_app(state: WebState) -> FastAPI:
    # No /docs: Swagger UI loads its scripts from a CDN. The schema is at /openapi.json.
    app = FastAPI(title="soulsai telemetry", docs_url=None, redoc_url=None)
    # Grafana's "browser" access mode calls the data source from the user's browser.
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["*"],
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["accept", "content-type"],
    )
    page = resources.files("soulsai.telemetry").joinpath("page.html").read_text("utf-8")
    router = make_router(GrafanaSource(state.stats, state.system))
    app.include_router(router, prefix="/grafana")

    @app.get("/grafana", include_in_schema=False)
    def grafana_health() -> dict[str, Any]:
        return {"status": "ok", "episodes": state.stats.n}

    @app.get("/", response_class=HTMLResponse)
    def live_page() -> str:
        return page

    @app.get("/api/live")
    def api_live(points: int = Query(600, ge=10, le=10000)) -> dict[str, Any]:
        return live_payload(state, points)

    @app.get("/api/summary")
    def api_summary() -> dict[str, Any]:
        return state.summary()

    @app.get("/api/events")
    def api_events() -> list[dict[str, Any]]:
        with state.stats.lock:
            events = list(state.stats.events)
        return [
            {"time": int(round(e.time * 1000)), "kind": e.kind, "title": e.title, "text": e.text}
            for e in events
        ]

    @app.get("/api/series")
    def api_series(
        keys: str = Query("return,return_avg", description="comma-separated series names"),
        start: str | None = Query(None, alias="from", description="ms since epoch or ISO 8601"),
        end: str | None = Query(None, alias="to"),
        max_points: int = Query(2000, ge=1, le=100000),
        client: str | None = Query(None, description="only this client's episodes"),
        format: str = Query("rows", pattern="^(rows|columns)$"),
    ) -> Any:
        wanted = [k.strip() for k in keys.split(",") if k.strip()]
        known = set(state.stats.series_names())
        unknown = [k for k in wanted if k not in known]
        if unknown and state.stats.n:
            raise HTTPException(404, f"unknown series {unknown}; known: {sorted(known)}")
        cols = series_payload(state, wanted, parse_time(start), parse_time(end), max_points, client)
        clean = {k: _clean(v) for k, v in cols.items()}
        if format == "columns":
            return clean
        names = list(clean)
        return [dict(zip(names, row, strict=True)) for row in zip(*clean.values(), strict=True)]

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        data = generate_latest(state.registry) if state.registry is not None else b""
        return Response(data, media_type=CONTENT_TYPE_LATEST)

    return app


def bind(port: int, setting: str, host: str = "0.0.0.0") -> socket.socket:
    """A listening socket on `port`; a busy port is a ConfigError naming the setting."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise ConfigError(
            f"{setting}={port}: cannot serve HTTP there ({e.strerror}); "
            f"choose another port with --set {setting}=PORT"
        ) from None
    return sock


class HttpServer:
    """uvicorn in a daemon thread, on a socket bound up front (so errors surface at once)."""

    def __init__(self, app: FastAPI, port: int, setting: str, host: str = "0.0.0.0") -> None:
        self.sock = bind(port, setting, host)
        config = uvicorn.Config(
            app, log_config=None, log_level="warning", access_log=False, lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True, name="http"
        )

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def start(self, timeout: float = 10.0) -> HttpServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started and self.thread.is_alive():
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        if not self.server.started:
            log.warning("the HTTP server did not report ready within %.0f s", timeout)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()

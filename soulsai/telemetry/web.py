"""The telemetry node's HTTP side: one FastAPI app served by uvicorn in a background thread.

- `/`: the live page (self-contained HTML that polls /api/live);
- `/api/live`: what the live page draws, down-sampled to ?points=;
- `/api/series`: plain JSON rows (or columns) of chosen series, for Grafana's Infinity plugin;
- `/api/summary`: the latest numbers; `/api/events`: best-model saves, client joins/leaves;
- `/grafana/...`: the JSON / SimpleJSON data source (grafana.py);
- `/metrics`: Prometheus text of the node's registry.

Hostile requests are bounded: bodies over MAX_BODY_BYTES get 413 before they are read whole
(guards.py), queries are capped in series and points (grafana.py), handlers hold the
statistics' lock only to take views, so the episode intake never waits on a request. The server
binds loopback unless `telemetry.http_host` says otherwise, sends no CORS headers unless
`telemetry.cors_origins` lists origins, and with a token file in the config folder the Grafana
routes (/grafana, /api/series) want `Authorization: Bearer <token>` (guards.py).
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from soulsai.errors import ConfigError
from soulsai.telemetry.downsample import bucket_edges, in_range, reduce_buckets
from soulsai.telemetry.grafana import MAX_RESPONSE_POINTS, MAX_SERIES, GrafanaSource, make_router
from soulsai.telemetry.grafana_requests import QueryError, parse_time
from soulsai.telemetry.guards import MAX_BODY_BYTES, BodyLimit, bearer_check
from soulsai.telemetry.live import best_markers
from soulsai.telemetry.stats import AVG, EpisodeStats, SystemSeries

log = logging.getLogger(__name__)

ROW_KEYS = ("episode", "env_steps", "wall_time")  # always in /api/series rows
MAX_CONNECTIONS = 64  # concurrent connections; more get 503


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
    # the model, learner, progress, clients and rejects sections (live.py), given `points`
    # and the summary (whose smoothed rate gives the ETA)
    live: Callable[[int, dict[str, Any]], dict[str, Any]] | None = None


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
    # one time axis for both series (a rate not known yet is None at its time, not dropped:
    # dropping it per series gave the series different lengths than `t`)
    t, values = state.system.arrays()
    edges = bucket_edges(len(t), points)
    system: dict[str, Any] = {"t": [], "steps_per_s": [], "clients": []}
    if len(edges) >= 2:
        system["t"] = _clean(reduce_buckets(t, edges, "last"))
        for key, how in (("steps_per_s", "mean"), ("clients", "last")):
            system[key] = _clean(reduce_buckets(values[key], edges, how))
    summary = state.summary()
    return {
        "title": state.title,
        "x_key": state.x_key,
        "window": stats.window,
        "summary": summary,
        "panels": panels,
        "system": system,
        "best_key": stats.cfg.best_key,
        "best_markers": best_markers(stats, state.x_key),
        **(state.live(points, summary) if state.live is not None else {}),
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
    with stats.lock:  # views only: the intake waits on this lock
        t = stats.view("t")
        if t is None:
            return {}
        cols = {k: stats.view(k) for k in (*ROW_KEYS, *keys)}
        client_col, codes = stats.view("client"), stats.client_codes([client] if client else [])
    mask = in_range(t, lo, hi)
    if client is not None and client_col is not None:
        mask &= np.isin(client_col, codes)
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


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """FastAPI's error body plus `message`, the field Grafana shows on a failed query."""
    body = {"detail": exc.detail, "message": str(exc.detail)}
    return JSONResponse(body, exc.status_code, headers=getattr(exc, "headers", None))


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 for a body or parameter of the wrong shape: FastAPI's `detail` (without the
    input, which may be large) and a one-line `message` such as
    "targets: Input should be a valid list"."""
    errors = [{k: e.get(k) for k in ("loc", "msg", "type")} for e in exc.errors()]
    parts = []
    for e in errors[:3]:
        loc = [str(x) for x in e["loc"] or ()]
        where = ".".join(loc[1:] if loc and loc[0] in ("body", "query", "path") else loc)
        parts.append(f"{where or 'body'}: {e['msg']}")
    message = "; ".join(parts) + (f" (and {len(errors) - 3} more)" if len(errors) > 3 else "")
    return JSONResponse({"detail": errors, "message": message}, 422)


def make_app(
    state: WebState, token: str | None = None, cors_origins: Sequence[str] = ()
) -> FastAPI:
    """The app; `token` guards the Grafana routes, `cors_origins` may call it from a browser
    page of another origin (Grafana's "browser" access mode; the provisioned data sources use
    "proxy" and need none)."""
    # No /docs: Swagger UI loads its scripts from a CDN. The schema is at /openapi.json.
    app = FastAPI(title="soulsai telemetry", docs_url=None, redoc_url=None)
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["accept", "content-type", "authorization"],
        )
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)  # outermost: before anything reads
    grafana_auth = [Depends(bearer_check(token))]
    page = resources.files("soulsai.telemetry").joinpath("page.html").read_text("utf-8")
    router = make_router(GrafanaSource(state.stats, state.system))
    app.include_router(router, prefix="/grafana", dependencies=grafana_auth)

    @app.get("/grafana", include_in_schema=False, dependencies=grafana_auth)
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
            {
                "time": int(round(e.time * 1000)),
                "kind": e.kind,
                "title": e.title,
                "text": e.text,
                "model_id": e.model_id,
            }
            for e in events
        ]

    @app.get(
        "/api/series",
        dependencies=grafana_auth,
        responses={
            400: {"description": "too many series, or a bound that is not a time"},
            404: {"description": "an unknown series"},
        },
    )
    def api_series(
        keys: str = Query("return,return_avg", description="comma-separated series names"),
        start: str | None = Query(None, alias="from", description="ms since epoch or ISO 8601"),
        end: str | None = Query(None, alias="to"),
        max_points: int = Query(2000, ge=1, le=100000),
        client: str | None = Query(None, description="only this client's episodes"),
        format: str = Query("rows", pattern="^(rows|columns)$"),
    ) -> Any:
        wanted = list(dict.fromkeys(k.strip() for k in keys.split(",") if k.strip()))
        if len(wanted) > MAX_SERIES:
            raise HTTPException(400, f"{len(wanted)} series asked for; at most {MAX_SERIES}")
        known = set(state.stats.series_names())
        unknown = [k for k in wanted if k not in known]
        if unknown and state.stats.n:
            raise HTTPException(404, f"unknown series {unknown[:10]}; known: {sorted(known)}")
        points = min(max_points, MAX_RESPONSE_POINTS // (len(wanted) + len(ROW_KEYS) + 1))
        lo, hi = parse_time(start), parse_time(end)
        for name, given, t in (("from", start, lo), ("to", end, hi)):
            if given and given.strip() and t is None:
                raise QueryError(f"{name} {given[:64]!r} is not a time (ISO 8601 or epoch ms)")
        cols = series_payload(state, wanted, lo, hi, points, client)
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


def bind(port: int, setting: str, host: str = "127.0.0.1") -> socket.socket:
    """A listening socket on `host`:`port`; a busy port is a ConfigError naming the setting."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise ConfigError(
            f"{setting}={port}: cannot serve HTTP on {host} there ({e.strerror}); "
            f"choose another port with --set {setting}=PORT"
        ) from None
    return sock


class HttpServer:
    """uvicorn in a daemon thread, on a socket bound up front (so errors surface at once)."""

    def __init__(self, app: FastAPI, port: int, setting: str, host: str = "127.0.0.1") -> None:
        self.sock = bind(port, setting, host)
        config = uvicorn.Config(
            app,
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            limit_concurrency=MAX_CONNECTIONS,
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
        if self.thread.ident is not None:  # started
            self.thread.join(timeout)
        self.sock.close()

"""Grafana data source, mounted under /grafana (the URL to enter in Grafana).

Speaks both JSON plugins as they are:
- simpod-json-datasource: GET / (health), POST /metrics, /metric-payload-options, /query,
  /variable, /tag-keys, /tag-values;
- the older SimpleJSON: POST /search, /query (`"type": "timeserie"` or `"table"`),
  /annotations.

Every per-episode series and its moving average (`<key>_avg`) is a target, plus the sampled
`steps_per_s` and `clients`; the time axis is when Redis received the episode. Queries honour
`range` and `maxDataPoints` by down-sampling (bucket means by default; the `aggregate`
payload picks min, max or last). An ad hoc filter on `client_id` restricts episode series to
those clients, moving averages recomputed over what is left. Best-model saves and client
joins/leaves are annotations (and the `annotations` target, for the newer plugin's
annotation queries, which go through /query).

Nothing a request sends is compiled as a regular expression: targets and `=~` filters are
exact names or shell-style globs (`*`, `?`), matched in linear time, so no request can hold
the interpreter (Python's `re` keeps the GIL while it backtracks). A query names at most
MAX_SERIES series and a response holds at most MAX_RESPONSE_POINTS points.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from typing import Any

import numpy as np
from fastapi import APIRouter, Body, HTTPException

from soulsai.telemetry.stats import (
    AGGREGATES,
    AVG,
    EpisodeStats,
    Event,
    SystemSeries,
    bucket_edges,
    downsample,
    in_range,
    moving_average,
    reduce_buckets,
)

SYSTEM_SERIES = ("steps_per_s", "clients")
TAG_KEYS = ("client_id",)
ANNOTATIONS = "annotations"
DEFAULT_POINTS = 1000
MAX_POINTS = 100_000  # maxDataPoints of one series at most
MAX_SERIES = 100  # series one query names at most, after expanding globs and variables
MAX_RESPONSE_POINTS = 200_000  # points of one response at most, all its series together
MAX_PATTERN = 256  # characters of one target or filter value at most
MAX_LISTED = 1000  # clients or events one answer lists at most (the newest)
MAX_CLIENT_FILTERS = 8  # client_id filters one query applies at most (each scans every client)


# ---------------------------------------------------------------------- request parsing


def parse_time(value: Any) -> float | None:
    """Grafana's range bounds: ISO 8601 strings ("2016-10-31T06:33:44.866Z"), or epoch ms."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value) / 1000.0
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return int(text) / 1000.0
        try:
            return datetime.fromisoformat(text).timestamp()
        except ValueError:
            return None
    return None


def time_range(body: dict[str, Any]) -> tuple[float | None, float | None]:
    rng = body.get("range")
    if not isinstance(rng, dict):
        return None, None
    return parse_time(rng.get("from")), parse_time(rng.get("to"))


def max_points(body: dict[str, Any]) -> int:
    raw = body.get("maxDataPoints")
    if isinstance(raw, (int, float)) and math.isfinite(raw) and raw >= 1:
        return int(min(raw, MAX_POINTS))
    return DEFAULT_POINTS


def _payload(target: dict[str, Any]) -> dict[str, Any]:
    """A target's extra options: `payload` (simpod >= 0.3, an object or a JSON string) or
    `data` (older releases)."""
    for key in ("payload", "data"):
        value = target.get(key)
        if isinstance(value, str) and value.strip():
            try:
                value = json.loads(value)
            except ValueError:
                continue
        if isinstance(value, dict):
            return value
    return {}


class QueryError(HTTPException):
    """A query outside the limits: 400 with a message saying which."""

    def __init__(self, detail: str) -> None:
        super().__init__(400, detail)


def glob_match(pattern: str, name: str) -> bool:
    """Whether `pattern` matches all of `name`: `*` any run of characters, `?` one character,
    anything else itself. A scan that only ever backtracks to the last `*`, so its work is at
    most len(pattern) * len(name) steps whatever the pattern (unlike a backtracking regex)."""
    p = n = 0
    star, mark = -1, 0
    while n < len(name):
        if p < len(pattern) and pattern[p] in ("?", name[n]):
            p, n = p + 1, n + 1
        elif p < len(pattern) and pattern[p] == "*":
            star, mark, p = p, n, p + 1
        elif star >= 0:
            p, mark = star + 1, mark + 1
            n = mark
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)


def _unescape(text: str) -> str:
    """A value in the plugins' regex formatting ("info\\.hp") back to the name it escapes."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            i += 1
        out.append(text[i])
        i += 1
    return "".join(out)


def expand_target(name: str, known: list[str]) -> list[str]:
    """The series a target names: a series itself; a multi-value variable, which arrives as
    "{a,b}" or, in the plugins' regex formatting, as "(a|b)" with escaped dots; or a glob
    matching whole names ("info.*_avg"). Unknown names come back as they are. Never a regex:
    "(a|b)" is split on "|" and each part taken literally (after removing escapes)."""
    name = name.strip()
    if len(name) > MAX_PATTERN:
        raise QueryError(f"a target is {len(name)} characters; at most {MAX_PATTERN}")
    if not name or name in known:
        return [name] if name else []
    if name.startswith("{") and name.endswith("}"):
        parts = name[1:-1].split(",")
    elif name.startswith("(") and name.endswith(")"):
        parts = [_unescape(p) for p in name[1:-1].split("|")]
    else:
        parts = [_unescape(name)]
    out: list[str] = []
    for part in (p.strip() for p in parts):
        if not part:
            continue
        if part in known or not any(c in part for c in "*?"):
            out.append(part)
        else:
            out += [k for k in known if glob_match(part, k)] or [part]
    return out


def client_filter(stats: EpisodeStats, filters: Any) -> list[str] | None:
    """Clients selected by ad hoc filters on client_id (None: no such filter). `=~` and `!~`
    take a glob ("gpu-*"), not a regex."""
    if not isinstance(filters, list):
        return None
    selected: list[str] | None = None
    mine = [f for f in filters[:MAX_SERIES] if isinstance(f, dict) and f.get("key") == "client_id"]
    if len(mine) > MAX_CLIENT_FILTERS:
        raise QueryError(f"{len(mine)} client_id filters; at most {MAX_CLIENT_FILTERS}")
    for f in mine:
        op, value = str(f.get("operator", "=")), str(f.get("value", ""))
        if len(value) > MAX_PATTERN:
            raise QueryError(f"a filter value is {len(value)} characters; at most {MAX_PATTERN}")
        pool = selected if selected is not None else list(stats.clients)
        if op == "=":
            selected = [c for c in pool if c == value]
        elif op == "!=":
            selected = [c for c in pool if c != value]
        elif op in ("=~", "!~"):
            selected = [c for c in pool if glob_match(value, c) == (op == "=~")]
    return selected


# ---------------------------------------------------------------------- the data


class GrafanaSource:
    """Answers Grafana's questions from the node's statistics."""

    def __init__(self, stats: EpisodeStats, system: SystemSeries) -> None:
        self.stats = stats
        self.system = system

    def names(self) -> list[str]:
        return [*self.stats.series_names(), *SYSTEM_SERIES]

    def series(
        self,
        name: str,
        lo: float | None,
        hi: float | None,
        points: int,
        how: str = "mean",
        clients: list[str] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(unix seconds, values) of one target within [lo, hi], at most `points` long."""
        if name in SYSTEM_SERIES:
            t, values = self.system.arrays()
            y = values[name]
        else:
            with self.stats.lock:  # views only: the intake waits on this lock
                tv, yv = self.stats.view("t"), self.stats.view(name)
                client_col = self.stats.view("client")
                codes = self.stats.client_codes(clients or [])
                raw = self.stats.view(name[: -len(AVG)]) if name.endswith(AVG) else None
            if tv is None or yv is None:
                return np.zeros(0), np.zeros(0)
            t, y = tv, yv
            if clients is not None and client_col is not None:
                mask = np.isin(client_col, codes)
                t = t[mask]
                y = y[mask] if raw is None else moving_average(raw[mask], self.stats.window)
        keep = in_range(t, lo, hi)
        return downsample(t[keep], y[keep], points, how)

    def table(
        self, name: str, lo: float | None, hi: float | None, points: int, how: str
    ) -> dict[str, Any]:
        """Time, episode, env steps and the value, one row per (down-sampled) episode."""
        columns = [
            {"text": "Time", "type": "time"},
            {"text": "episode", "type": "number"},
            {"text": "env_steps", "type": "number"},
            {"text": name, "type": "number"},
        ]
        rows: list[list[Any]] = []
        with self.stats.lock:
            t, y = self.stats.view("t"), self.stats.view(name)
            ep, steps = self.stats.view("episode"), self.stats.view("env_steps")
        if t is not None and y is not None and ep is not None and steps is not None:
            keep = in_range(t, lo, hi) & np.isfinite(y)
            t, y, ep, steps = t[keep], y[keep], ep[keep], steps[keep]
            if len(t):
                edges = bucket_edges(len(t), points)
                cols = [reduce_buckets(a, edges, "last") for a in (t, ep, steps)]
                cols.append(reduce_buckets(y, edges, how))
                rows = [
                    [int(round(a * 1000)), _num(b), _num(c), _num(d)]
                    for a, b, c, d in zip(*cols, strict=True)
                ]
        return {"type": "table", "columns": columns, "rows": rows}

    def events(self, lo: float | None, hi: float | None, kinds: set[str]) -> list[Event]:
        """The newest MAX_LISTED events of these kinds within [lo, hi]."""
        with self.stats.lock:
            events = list(self.stats.events)
        chosen = [
            e
            for e in events
            if (not kinds or e.kind in kinds)
            and (lo is None or e.time >= lo)
            and (hi is None or e.time <= hi)
        ]
        return chosen[-MAX_LISTED:]


def _num(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _kinds(text: Any) -> set[str]:
    """An annotation query such as "best", "join,leave" or "clients" (empty: everything)."""
    words = set(re.split(r"[\s,#|.]+", text)) if isinstance(text, str) else set()
    if "clients" in words:
        words |= {"join", "leave"}
    return words & {"best", "join", "leave"}


# ---------------------------------------------------------------------- the routes


def make_router(source: GrafanaSource) -> APIRouter:
    router = APIRouter()

    @router.get("/")
    def health() -> dict[str, Any]:
        return {"status": "ok", "episodes": source.stats.n}

    @router.post("/metrics")
    def metrics(body: dict[str, Any] = Body(default_factory=dict)) -> list[dict[str, Any]]:
        payloads = [
            {
                "label": "Down-sampling",
                "name": "aggregate",
                "type": "select",
                "placeholder": "mean (default)",
                "reloadMetric": False,
            }
        ]
        return [{"label": n, "value": n, "payloads": payloads} for n in source.names()]

    @router.post("/metric-payload-options")
    def payload_options(body: dict[str, Any] = Body(default_factory=dict)) -> list[dict]:
        if body.get("name") == "aggregate":
            return [{"label": a, "value": a} for a in AGGREGATES]
        return []

    @router.post("/search")
    def search(body: dict[str, Any] = Body(default_factory=dict)) -> list[str]:
        needle = str(body.get("target") or "").lower()
        return [n for n in [*source.names(), ANNOTATIONS] if needle in n.lower()]

    @router.post("/variable")
    def variable(body: dict[str, Any] = Body(default_factory=dict)) -> list[dict[str, str]]:
        payload = body.get("payload")
        target = payload.get("target", "") if isinstance(payload, dict) else payload
        target = str(target or "").strip()
        if target in ("clients", "client_id"):
            values = source.stats.clients[:MAX_LISTED]
        else:
            values = [n for n in source.names() if target.lower() in n.lower()]
        return [{"__text": v, "__value": v} for v in values]

    @router.post("/tag-keys")
    def tag_keys(body: dict[str, Any] = Body(default_factory=dict)) -> list[dict[str, str]]:
        return [{"type": "string", "text": k} for k in TAG_KEYS]

    @router.post("/tag-values")
    def tag_values(body: dict[str, Any] = Body(default_factory=dict)) -> list[dict[str, str]]:
        if body.get("key") == "client_id":
            return [{"text": c} for c in source.stats.clients[:MAX_LISTED]]
        return []

    @router.post("/query")
    def query(body: dict[str, Any] = Body(default_factory=dict)) -> list[dict[str, Any]]:
        lo, hi = time_range(body)
        clients = client_filter(source.stats, body.get("adhocFilters"))
        wanted = plan_query(body, [*source.names(), ANNOTATIONS])
        # the response's point budget, shared by its series
        points = min(max_points(body), max(1, MAX_RESPONSE_POINTS // max(1, len(wanted))))
        out: list[dict[str, Any]] = []
        for target, name, how in wanted:
            if name.split(".")[0] == ANNOTATIONS:
                out.append(annotation_table(source, lo, hi, name))
            elif target.get("type") == "table":
                out.append(source.table(name, lo, hi, points, how))
            else:
                t, y = source.series(name, lo, hi, points, how, clients)
                ms = np.round(t * 1000).astype(np.int64).tolist()
                datapoints = [list(p) for p in zip(y.tolist(), ms, strict=True)]
                out.append({"target": name, "refId": target.get("refId"), "datapoints": datapoints})
        return out

    @router.post("/annotations")
    def annotations(body: dict[str, Any] = Body(default_factory=dict)) -> list[dict[str, Any]]:
        lo, hi = time_range(body)
        ann = body.get("annotation")
        ann = ann if isinstance(ann, dict) else {}
        return [
            {
                "annotation": ann,
                "time": int(round(e.time * 1000)),
                "title": e.title,
                "text": e.text,
                "tags": [e.kind],
            }
            for e in source.events(lo, hi, _kinds(ann.get("query")))
        ]

    return router


def plan_query(body: dict[str, Any], known: list[str]) -> list[tuple[dict[str, Any], str, str]]:
    """(target, series name, aggregate) for each series a /query asks for; QueryError when
    that is more than MAX_SERIES."""
    targets = body.get("targets")
    targets = targets if isinstance(targets, list) else []
    if len(targets) > MAX_SERIES:
        raise QueryError(f"a query has {len(targets)} targets; at most {MAX_SERIES}")
    wanted: list[tuple[dict[str, Any], str, str]] = []
    for target in targets:
        if not isinstance(target, dict) or target.get("hide") is True:
            continue
        how = str(_payload(target).get("aggregate") or "mean")
        how = how if how in AGGREGATES else "mean"
        for name in expand_target(str(target.get("target") or ""), known):
            wanted.append((target, name, how))
        if len(wanted) > MAX_SERIES:
            raise QueryError(f"a query names more than {MAX_SERIES} series")
    return wanted


def annotation_table(
    source: GrafanaSource, lo: float | None, hi: float | None, name: str
) -> dict[str, Any]:
    """Events as a table (time, title, text, tags): what the newer plugin maps to annotations.
    `annotations` gives every kind, `annotations.best` the saves, `annotations.clients` joins
    and leaves (also `.join`, `.leave`)."""
    kinds = _kinds(name.partition(".")[2])
    return {
        "type": "table",
        "columns": [
            {"text": "time", "type": "time"},
            {"text": "title", "type": "string"},
            {"text": "text", "type": "string"},
            {"text": "tags", "type": "string"},
        ],
        "rows": [
            [int(round(e.time * 1000)), e.title, e.text, e.kind]
            for e in source.events(lo, hi, kinds)
        ],
    }

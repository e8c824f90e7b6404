"""Grafana data source, mounted under /grafana (the URL to enter in Grafana).

Speaks both JSON plugins as they are:
- simpod-json-datasource, as its openapi.yaml defines it: GET / (health), POST /metrics,
  /metric-payload-options, /query, /variable, /tag-keys, /tag-values;
- the older SimpleJSON: POST /search, /query (`"type": "timeserie"` or `"table"`),
  /annotations.

Every per-episode series and its moving average (`<key>_avg`) is a target, plus the sampled
`steps_per_s` and `clients`; the time axis is when Redis received the episode. Queries honour
`range` and `maxDataPoints` by down-sampling (bucket means by default; the `aggregate`
payload picks min, max or last). Ad hoc filters on `client_id` (sent as `filters` or
`adhocFilters`) restrict episode series and tables to those clients, moving averages
recomputed over what is left. Best-model saves and client joins/leaves are annotations (and
the `annotations` target, for the newer plugin's annotation queries, which go through /query).

Bodies are checked (grafana_requests.py): a malformed one gets 422, an unknown target, kind,
filter key or operator, or a range that is not a time gets 400, each with a message Grafana
shows. Nothing a request sends is compiled as a regular expression: targets and `=~` filters
are exact names or shell-style globs (`*`, `?`; grafana_names.py), matched in linear time, so
no request can hold the interpreter (Python's `re` keeps the GIL while it backtracks). A query
names at most MAX_SERIES series and a response holds at most MAX_RESPONSE_POINTS points.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from fastapi import APIRouter, Body

from soulsai.telemetry.downsample import (
    AGGREGATES,
    bucket_edges,
    downsample,
    in_range,
    moving_average,
    reduce_buckets,
)
from soulsai.telemetry.grafana_names import expand_target, glob_match
from soulsai.telemetry.grafana_requests import (
    FILTER_OPERATORS,
    MAX_PATTERN,
    AdhocFilter,
    AnnotationsBody,
    MetricsBody,
    PayloadOptionsBody,
    QueryBody,
    QueryError,
    SearchBody,
    TagValuesBody,
    VariableBody,
    aggregate,
    all_filters,
    max_points,
    time_range,
)
from soulsai.telemetry.stats import AVG, EpisodeStats, Event, SystemSeries

SYSTEM_SERIES = ("steps_per_s", "clients")
TAG_KEYS = ("client_id",)
ANNOTATIONS = "annotations"
ANNOTATION_KINDS = {"best": {"best"}, "clients": {"join", "leave"}, "join": {"join"},
                    "leave": {"leave"}}  # fmt: skip
MAX_SERIES = 100  # series one query names at most, after expanding globs and variables
MAX_RESPONSE_POINTS = 200_000  # points of one response at most, all its series together
MAX_LISTED = 1000  # clients or events one answer lists at most (the newest)
MAX_CLIENT_FILTERS = 8  # client_id filters one query applies at most (each scans every client)
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "a query we cannot answer; `message` says why"},
}


# ---------------------------------------------------------------------- filters


def client_filter(stats: EpisodeStats, filters: list[AdhocFilter]) -> list[str] | None:
    """Clients selected by ad hoc filters on client_id (None: no filter). `=~` and `!~` take a
    glob ("gpu-*"), not a regex; `=|` and `!=|` a list of `values`. Another key or operator
    is a QueryError: /tag-keys offers client_id only."""
    if len(filters) > MAX_CLIENT_FILTERS:
        raise QueryError(f"{len(filters)} client_id filters; at most {MAX_CLIENT_FILTERS}")
    selected: list[str] | None = None
    for f in filters:
        if f.key not in TAG_KEYS:
            raise QueryError(f"no ad hoc filter key {f.key[:64]!r}; the keys are {TAG_KEYS}")
        if f.operator not in FILTER_OPERATORS:
            shown = f.operator[:8]
            raise QueryError(f"filter operator {shown!r} is not one of {FILTER_OPERATORS}")
        values = f.values if f.operator in ("=|", "!=|") else [f.value]
        if len(values or []) > MAX_SERIES:
            raise QueryError(f"a filter lists {len(values or [])} values; at most {MAX_SERIES}")
        if any(len(v) > MAX_PATTERN for v in values or []):
            raise QueryError(f"a filter value is longer than {MAX_PATTERN} characters")
        pool = selected if selected is not None else list(stats.clients)
        if f.operator in ("=", "=|"):
            selected = [c for c in pool if c in (values or [])]
        elif f.operator in ("!=", "!=|"):
            selected = [c for c in pool if c not in (values or [])]
        else:
            selected = [c for c in pool if glob_match(f.value, c) == (f.operator == "=~")]
    return selected


def annotation_kinds(text: str | None) -> set[str]:
    """The event kinds an annotation query asks for: "best", "join,leave", "clients",
    "#best", "annotations.clients" (empty or "annotations": all); a QueryError for a word
    that is none of them, rather than every event."""
    text = text or ""
    if len(text) > MAX_PATTERN:
        raise QueryError(f"an annotation query is {len(text)} characters; at most {MAX_PATTERN}")
    words = [w for w in re.split(r"[\s,#|.]+", text) if w and w != ANNOTATIONS]
    kinds: set[str] = set()
    for word in words:
        if word not in ANNOTATION_KINDS:
            raise QueryError(
                f"no annotation kind {word[:64]!r}; one of {', '.join(ANNOTATION_KINDS)}"
            )
        kinds |= ANNOTATION_KINDS[word]
    return kinds or {"best", "join", "leave"}


# ---------------------------------------------------------------------- the data


class GrafanaSource:
    """Answers Grafana's questions from the node's statistics."""

    def __init__(self, stats: EpisodeStats, system: SystemSeries) -> None:
        self.stats = stats
        self.system = system

    def names(self) -> list[str]:
        return [*self.stats.series_names(), *SYSTEM_SERIES]

    def columns(
        self, name: str, lo: float | None, hi: float | None, clients: list[str] | None
    ) -> dict[str, np.ndarray]:
        """Time (unix seconds), episode, env steps and the values of one episode series
        within [lo, hi], only these clients' episodes when `clients` is not None (moving
        averages recomputed over them); system series have no `episode`."""
        if name in SYSTEM_SERIES:
            t, values = self.system.arrays()
            keep = in_range(t, lo, hi)
            return {"t": t[keep], "env_steps": values["env_steps"][keep], "y": values[name][keep]}
        with self.stats.lock:  # views only: the intake waits on this lock
            cols = {k: self.stats.view(k) for k in ("t", "episode", "env_steps")}
            y = self.stats.view(name)
            client_col = self.stats.view("client")
            codes = self.stats.client_codes(clients or [])
            raw = self.stats.view(name[: -len(AVG)]) if name.endswith(AVG) else None
        if y is None or any(c is None for c in cols.values()):
            return {"t": np.zeros(0), "episode": np.zeros(0), "env_steps": np.zeros(0),
                    "y": np.zeros(0)}  # fmt: skip
        out: dict[str, np.ndarray] = {**cols, "y": y}  # type: ignore[dict-item]
        if clients is not None and client_col is not None:
            mask = np.isin(client_col, codes)
            out = {k: v[mask] for k, v in out.items()}
            if raw is not None:
                out["y"] = moving_average(raw[mask], self.stats.window)
        keep = in_range(out["t"], lo, hi)
        return {k: v[keep] for k, v in out.items()}

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
        cols = self.columns(name, lo, hi, clients)
        return downsample(cols["t"], cols["y"], points, how)

    def table(
        self,
        name: str,
        lo: float | None,
        hi: float | None,
        points: int,
        how: str,
        clients: list[str] | None = None,
    ) -> dict[str, Any]:
        """Time, episode (not for system series), env steps and the value, one row per
        (down-sampled) episode or sample."""
        cols = self.columns(name, lo, hi, clients)
        keys = [k for k in ("t", "episode", "env_steps") if k in cols]
        columns = [{"text": "Time", "type": "time"}]
        columns += [{"text": k, "type": "number"} for k in keys[1:]]
        columns.append({"text": name, "type": "number"})
        keep = np.isfinite(cols["y"])
        rows: list[list[Any]] = []
        if keep.any():
            edges = bucket_edges(int(keep.sum()), points)
            reduced = [reduce_buckets(cols[k][keep], edges, "last") for k in keys]
            reduced.append(reduce_buckets(cols["y"][keep], edges, how))
            reduced[0] = np.round(reduced[0] * 1000)
            rows = [[_num(v) for v in row] for row in zip(*reduced, strict=True)]
        return {"type": "table", "columns": columns, "rows": rows}

    def events(self, lo: float | None, hi: float | None, kinds: set[str]) -> list[Event]:
        """The newest MAX_LISTED events of these kinds within [lo, hi]."""
        with self.stats.lock:
            events = list(self.stats.events)
        chosen = [
            e
            for e in events
            if e.kind in kinds and (lo is None or e.time >= lo) and (hi is None or e.time <= hi)
        ]
        return chosen[-MAX_LISTED:]


def _num(v: float) -> int | float:
    """A finite table cell (rows hold only finite values); whole numbers as ints."""
    return int(v) if float(v).is_integer() else float(v)


# ---------------------------------------------------------------------- the routes


def make_router(source: GrafanaSource) -> APIRouter:
    router = APIRouter(responses=ERRORS)

    @router.get("/")
    def health() -> dict[str, Any]:
        return {"status": "ok", "episodes": source.stats.n}

    @router.post("/metrics")
    def metrics(body: MetricsBody | None = Body(None)) -> list[dict[str, Any]]:
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
    def payload_options(body: PayloadOptionsBody) -> list[dict[str, str]]:
        if body.name == "aggregate":
            return [{"label": a, "value": a} for a in AGGREGATES]
        return []

    @router.post("/search")
    def search(body: SearchBody | None = Body(None)) -> list[str]:
        needle = (body.target if body is not None else None) or ""
        return [n for n in [*source.names(), ANNOTATIONS] if needle.lower() in n.lower()]

    @router.post("/variable")
    def variable(body: VariableBody) -> list[dict[str, str]]:
        payload = body.payload
        target = payload if isinstance(payload, str) else payload.target if payload else ""
        target = target.strip()
        if target in ("clients", "client_id"):
            values = source.stats.clients[:MAX_LISTED]
        else:
            values = [n for n in source.names() if target.lower() in n.lower()]
        # __text/__value are what the plugin reads; its openapi.yaml wants text/value too
        return [{"__text": v, "__value": v, "text": v, "value": v} for v in values]

    @router.post("/tag-keys")
    def tag_keys(body: dict[str, Any] | None = Body(None)) -> list[dict[str, str]]:
        return [{"type": "string", "text": k} for k in TAG_KEYS]

    @router.post("/tag-values")
    def tag_values(body: TagValuesBody) -> list[dict[str, str]]:
        if body.key not in TAG_KEYS:
            raise QueryError(f"no ad hoc filter key {body.key[:64]!r}; the keys are {TAG_KEYS}")
        return [{"text": c} for c in source.stats.clients[:MAX_LISTED]]

    @router.post("/query")
    def query(body: QueryBody) -> list[dict[str, Any]]:
        lo, hi = time_range(body.range)
        clients = client_filter(source.stats, all_filters(body))
        wanted = plan_query(body, source.names(), strict=source.stats.n > 0)
        # the response's point budget, shared by its series
        points = min(max_points(body), max(1, MAX_RESPONSE_POINTS // max(1, len(wanted))))
        out: list[dict[str, Any]] = []
        for (ref, kind), name, how in wanted:
            if name.split(".")[0] == ANNOTATIONS:
                out.append({**annotation_table(source, lo, hi, name), "refId": ref})
            elif kind == "table":
                out.append({**source.table(name, lo, hi, points, how, clients), "refId": ref})
            else:
                t, y = source.series(name, lo, hi, points, how, clients)
                ms = np.round(t * 1000).astype(np.int64).tolist()
                datapoints = [list(p) for p in zip(y.tolist(), ms, strict=True)]
                out.append({"target": name, "refId": ref, "datapoints": datapoints})
        return out

    @router.post("/annotations")
    def annotations(body: AnnotationsBody | None = Body(None)) -> list[dict[str, Any]]:
        body = body or AnnotationsBody()
        lo, hi = time_range(body.range)
        ann = body.annotation
        kinds = annotation_kinds(ann.query if ann else None)
        echo = ann.model_dump(mode="json", exclude_none=True) if ann else {}
        return [
            {
                "annotation": echo,
                "time": int(round(e.time * 1000)),
                "title": e.title,
                "text": e.text,
                "tags": [e.kind],
            }
            for e in source.events(lo, hi, kinds)
        ]

    return router


def plan_query(
    body: QueryBody, known: list[str], strict: bool = True
) -> list[tuple[tuple[str | None, str | None], str, str]]:
    """((refId, type), series name, aggregate) for each series a /query asks for. A
    QueryError when that is more than MAX_SERIES or, when `strict` (there are episodes, so
    the series are known), a name that is no series."""
    if len(body.targets) > MAX_SERIES:
        raise QueryError(f"a query has {len(body.targets)} targets; at most {MAX_SERIES}")
    wanted: list[tuple[tuple[str | None, str | None], str, str]] = []
    for target in body.targets:
        if target.hide is True:
            continue
        how = aggregate(target)
        for name in expand_target(target.target, [*known, ANNOTATIONS]):
            if name.split(".")[0] == ANNOTATIONS:
                annotation_kinds(name.partition(".")[2])  # an unknown kind is a QueryError
            elif strict and name not in known:
                shown = ", ".join(known[:40])
                raise QueryError(f"no series {name[:64]!r} (target {target.refId}); known: {shown}")
            wanted.append(((target.refId, target.type), name, how))
        if len(wanted) > MAX_SERIES:
            raise QueryError(f"a query names more than {MAX_SERIES} series")
    return wanted


def annotation_table(
    source: GrafanaSource, lo: float | None, hi: float | None, name: str
) -> dict[str, Any]:
    """Events as a table (time, title, text, tags): what the newer plugin maps to annotations.
    `annotations` gives every kind, `annotations.best` the saves, `annotations.clients` joins
    and leaves (also `.join`, `.leave`)."""
    kinds = annotation_kinds(name.partition(".")[2])
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

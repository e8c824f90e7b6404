"""The request bodies of the Grafana data source, as the JSON plugin's openapi.yaml
(simPod/GrafanaJsonDatasource) and the older SimpleJSON plugin send them.

Each body is a pydantic model, so a malformed one (`targets` that is not a list, a target
without a `target` string) gets 422 with a message before a handler runs, and the server's
own OpenAPI schema says what it takes. Models allow extra fields: Grafana adds its own
(`datasource`, `scopedVars`, `panelId`, ...). Values that parse but make no sense (a range
Grafana cannot mean, an unknown aggregate or filter operator) are `QueryError`s: 400 with the
reason, which Grafana shows on the panel.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any, Literal

from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, Field

from soulsai.telemetry.downsample import AGGREGATES

DEFAULT_POINTS = 1000
MAX_POINTS = 100_000  # maxDataPoints of one series at most
MAX_PATTERN = 256  # characters of one target or filter value at most
FILTER_OPERATORS = ("=", "!=", "=~", "!~", "=|", "!=|")  # =| and !=| take `values`


class QueryError(HTTPException):
    """A request Grafana may send but we cannot answer: 400 with a message saying why."""

    def __init__(self, detail: str) -> None:
        super().__init__(400, detail)


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class TimeRange(_Body):
    """`range`: ISO 8601 strings ("2023-11-14T22:13:20.000Z"); epoch ms are accepted too."""

    start: str | float | None = Field(None, alias="from")
    end: str | float | None = Field(None, alias="to")
    raw: dict[str, Any] | None = None


class Target(_Body):
    """One query of a panel. `payload` is an object (simpod >= 0.3) or a JSON string (its
    older releases; `data` there)."""

    target: str
    refId: str | None = None
    type: Literal["timeserie", "timeseries", "table"] | None = None
    hide: bool | None = None
    payload: dict[str, Any] | str | None = None
    data: dict[str, Any] | str | None = None


class AdhocFilter(_Body):
    """An ad hoc filter; `values` with the multi-value operators `=|` and `!=|`."""

    key: str
    operator: str = "="
    value: str = ""
    values: list[str] | None = None


class QueryBody(_Body):
    range: TimeRange | None = None
    maxDataPoints: float | None = None
    targets: list[Target] = Field(default_factory=list)
    filters: list[AdhocFilter] | None = None  # simpod >= 0.6.4
    adhocFilters: list[AdhocFilter] | None = None  # earlier releases, SimpleJSON


class MetricsBody(_Body):
    metric: str | None = None
    payload: dict[str, Any] | None = None


class PayloadOptionsBody(_Body):
    name: str
    metric: str | None = None
    payload: dict[str, Any] | None = None


class VariablePayload(_Body):
    target: str = ""
    variables: dict[str, Any] | None = None


class VariableBody(_Body):
    payload: VariablePayload | str | None = None
    range: TimeRange | None = None


class TagValuesBody(_Body):
    key: str


class SearchBody(_Body):
    target: str | None = None


class AnnotationQuery(_Body):
    query: str | None = None


class AnnotationsBody(_Body):
    range: TimeRange | None = None
    annotation: AnnotationQuery | None = None


# ---------------------------------------------------------------------- reading them


def parse_time(value: Any) -> float | None:
    """Unix seconds of a range bound: an ISO 8601 string or epoch ms (a number, or one as
    text); None if it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) / 1000.0 if math.isfinite(value) else None
    if isinstance(value, str):
        text = value.strip()
        if text.isascii() and len(text) <= 32 and text[:1].isdigit() and "-" not in text:
            try:  # epoch ms, as ${__from} sends them ("1700000001000", "1.7e12")
                ms = float(text)
                return ms / 1000.0 if math.isfinite(ms) else None
            except ValueError:
                pass  # an ISO date such as "2023-11-14" starts with digits too
        try:
            return datetime.fromisoformat(text).timestamp()
        except (ValueError, OverflowError, OSError):
            return None
    return None


def time_range(rng: TimeRange | None) -> tuple[float | None, float | None]:
    """(from, to) in unix seconds; QueryError for a bound that is not a time."""
    if rng is None:
        return None, None
    bounds = []
    for name, value in (("from", rng.start), ("to", rng.end)):
        t = parse_time(value)
        if value is not None and t is None:
            shown = str(value)[:64]
            raise QueryError(f"range.{name} {shown!r} is not a time (ISO 8601 or epoch ms)")
        bounds.append(t)
    lo, hi = bounds
    if lo is not None and hi is not None and lo > hi:
        raise QueryError("range.from is after range.to")
    return lo, hi


def max_points(body: QueryBody) -> int:
    """maxDataPoints, at most MAX_POINTS (DEFAULT_POINTS when absent)."""
    raw = body.maxDataPoints
    if raw is None:
        return DEFAULT_POINTS
    if not math.isfinite(raw) or raw < 1:
        raise QueryError(f"maxDataPoints {raw!r} is not a positive number")
    return int(min(raw, MAX_POINTS))


def aggregate(target: Target) -> str:
    """The `aggregate` payload of a target (mean unless it says min, max or last)."""
    payload: Any = {}
    for value in (target.payload, target.data):
        if isinstance(value, str) and value.strip():
            try:
                value = json.loads(value)
            except (ValueError, RecursionError):
                raise QueryError(f"the payload of target {target.refId!r} is not JSON") from None
        if isinstance(value, dict) and value:
            payload = value
            break
    how = payload.get("aggregate") if isinstance(payload, dict) else None
    if how in (None, ""):
        return "mean"
    if how not in AGGREGATES:
        raise QueryError(f"aggregate {str(how)[:32]!r} is not one of {', '.join(AGGREGATES)}")
    return str(how)


def all_filters(body: QueryBody) -> list[AdhocFilter]:
    """The ad hoc filters of a query, from `filters` (simpod >= 0.6.4) and `adhocFilters`
    (earlier releases): both when both are sent, each distinct filter once."""
    seen: dict[str, AdhocFilter] = {}
    for f in [*(body.filters or []), *(body.adhocFilters or [])]:
        seen.setdefault(f.model_dump_json(), f)
    return list(seen.values())

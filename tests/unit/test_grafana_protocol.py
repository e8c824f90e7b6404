"""The Grafana data source against the JSON plugin's protocol: tests/data/grafana_json_protocol.py
describes, route by route, the request bodies simpod-json-datasource sends and the answers it
accepts. Every route gets requests of those shapes (checked against the description first, so
the test posts what the plugin may send) and answers 200 in the described shape; malformed or
unanswerable requests, rejected by the description where it covers them, get a 4xx with a
`message` (what Grafana shows on the panel)."""

from __future__ import annotations

import json
from typing import Any

import jsonschema_rs
import pytest
from fastapi.testclient import TestClient

from soulsai.telemetry.stats import SystemSeries
from soulsai.telemetry.web import WebState, make_app
from tests.data.episode_history import T0, episode_stats, iso
from tests.data.grafana_json_protocol import ROUTES

N = 200


@pytest.fixture(scope="module")
def client() -> TestClient:
    stats = episode_stats(N, (50, 150), model_ids=True)
    system = SystemSeries()
    for i in range(30):
        system.sample(T0 + 10 * i, 300 * i, 2)
    state = WebState(stats, system, dict, "env_steps", ["return"], "test")
    return TestClient(make_app(state))


def _validator(schema: dict[str, Any] | None) -> jsonschema_rs.Validator | None:
    if schema is None:
        return None
    return jsonschema_rs.Draft202012Validator(schema, validate_formats=True)


REQUESTS = {path: _validator(route["request"]) for path, route in ROUTES.items()}
ANSWERS = {path: _validator(route["response"]) for path, route in ROUTES.items()}


def breaks_protocol(path: str, body: Any) -> bool:
    """Whether the plugin could never send this body to this route."""
    if body is None:
        return bool(ROUTES[path]["body_required"])
    checker = REQUESTS[path]
    return checker is not None and not checker.is_valid(body)


def grafana_query(targets: list[dict], **extra: Any) -> dict[str, Any]:
    """A /query body with every field the protocol lists, as Grafana sends it from Explore."""
    return {
        "panelId": "Q-1700000150000-0.4081-0",
        "range": {"from": iso(T0), "to": iso(T0 + N), "raw": {"from": "now-15m", "to": "now"}},
        "rangeRaw": {"from": "now-15m", "to": "now"},
        "interval": "2s",
        "intervalMs": 2000,
        "maxDataPoints": 120,
        "targets": targets,
        "scopedVars": {
            "__interval": {"text": "2s", "value": "2s"},
            "__interval_ms": {"text": "2000", "value": 2000},
        },
        "filters": [],
        **extra,
    }


VARIABLE_RANGE = {"from": iso(T0), "to": iso(T0 + N), "raw": {"from": "now-2d", "to": "now"}}
# Per route: request bodies the plugin may send (None: no body), some naming metrics and
# payload keys we do not have (the plugin lets a user type any).
VALID: dict[str, list[Any]] = {
    "/": [None],
    "/metrics": [
        {"metric": "boss_phase", "payload": {"phase": "2", "arena": "cathedral"}},
        {"metric": "return", "payload": {"aggregate": "max"}},
        {},
    ],
    "/metric-payload-options": [
        {"metric": "boss_phase", "payload": {"arena": "cathedral"}, "name": "phase"},
        {"metric": "info.hp_avg", "payload": {"aggregate": "min"}, "name": "aggregate"},
    ],
    "/query": [
        grafana_query([{"target": "return", "refId": "A", "payload": {}}], panelId=7),
        grafana_query(
            [
                {"target": "return_avg", "refId": "A", "payload": {"aggregate": "max"}},
                {"target": "length", "refId": "B", "payload": {}, "type": "table"},
                {"target": "steps_per_s", "refId": "C", "type": "table"},
                {"target": "annotations.best", "refId": "D"},
            ],
            filters=[{"key": "client_id", "operator": "=", "value": "alpha"}],
        ),
        grafana_query([{"target": "(return_avg|info\\.hp)", "refId": "A"}], maxDataPoints=3),
        {"targets": [{"target": "clients"}]},
    ],
    "/variable": [
        {"payload": {"target": "clients"}, "range": VARIABLE_RANGE},
        {"payload": {"target": "_avg", "variables": {"run": "iudex-dqn"}}, "range": VARIABLE_RANGE},
    ],
    "/tag-keys": [None, {}],
    "/tag-values": [{"key": "client_id"}],
}


def call(client: TestClient, path: str, body: Any) -> Any:
    if ROUTES[path]["method"] == "get":
        return client.get(f"/grafana{path}")
    if body is None:
        return client.post(f"/grafana{path}")
    return client.post(f"/grafana{path}", json=body)


def test_every_route_of_the_plugins_spec_is_covered() -> None:
    assert set(ROUTES) == set(VALID)
    assert set(ROUTES) == {"/", "/metrics", "/metric-payload-options", "/query", "/variable",
                           "/tag-keys", "/tag-values"}  # fmt: skip


@pytest.mark.parametrize(
    ("path", "index"), [(p, i) for p, bodies in VALID.items() for i in range(len(bodies))]
)
def test_requests_the_plugin_sends_get_answers_of_the_shape_it_accepts(
    client: TestClient, path: str, index: int
) -> None:
    body = VALID[path][index]
    checker = REQUESTS[path]
    errors = [e.message for e in checker.iter_errors(body)] if checker and body else []
    assert not breaks_protocol(path, body), errors  # the test posts what the plugin may send
    r = call(client, path, body)
    assert r.status_code == 200, r.text
    answer = ANSWERS[path]
    if answer is not None:
        errors = [e.message for e in answer.iter_errors(r.json())]
        assert not errors, errors[:3]


def test_query_answers_series_and_tables_with_data(client: TestClient) -> None:
    body = VALID["/query"][1]
    series, length, sps, best = client.post("/grafana/query", json=body).json()
    assert series["target"] == "return_avg" and series["refId"] == "A" and series["datapoints"]
    assert [c["text"] for c in length["columns"]] == ["Time", "episode", "env_steps", "length"]
    assert length["rows"] and all(row[1] % 2 == 1 for row in length["rows"])  # alpha's only
    assert [c["text"] for c in sps["columns"]] == ["Time", "env_steps", "steps_per_s"]
    # samples in the range, but the first, which has no rate yet
    assert len(sps["rows"]) == 20 and sps["rows"][-1][2] == pytest.approx(30.0)
    assert [row[1] for row in best["rows"]] == ["best model saved (model 5)",
                                                "best model saved (model 15)"]  # fmt: skip
    assert "model 15" in best["rows"][1][2]


@pytest.mark.parametrize("field", ["filters", "adhocFilters"])
@pytest.mark.parametrize("kind", ["timeserie", "table"])
def test_client_filter_from_either_field_restricts_series_and_tables(
    client: TestClient, field: str, kind: str
) -> None:
    flt = [{"key": "client_id", "operator": "!=", "value": "alpha"}]
    target = {"target": "return", "refId": "A", "type": kind}
    body = {**grafana_query([target], maxDataPoints=1000), "filters": None, field: flt}
    (got,) = client.post("/grafana/query", json=body).json()
    values = (
        [p[0] for p in got["datapoints"]] if kind == "timeserie" else [r[3] for r in got["rows"]]
    )
    assert len(values) == N // 2 and all(v % 2 == 0 for v in values)  # beta's episodes only
    both = {**body, "filters": [{"key": "client_id", "operator": "=~", "value": "al*"}]}
    both[field] = [*(both.get(field) or []), *flt]
    (got,) = client.post("/grafana/query", json=both).json()
    assert not (got["datapoints"] if kind == "timeserie" else got["rows"])  # both apply


def test_client_filter_recomputes_the_moving_average_of_a_table(client: TestClient) -> None:
    flt = [{"key": "client_id", "operator": "=|", "value": "", "values": ["beta"]}]
    target = {"target": "return_avg", "refId": "A", "type": "table"}
    body = grafana_query([target], maxDataPoints=1000, filters=flt)
    (got,) = client.post("/grafana/query", json=body).json()
    last = got["rows"][-1]
    assert last[1] == N and last[3] == pytest.approx(sum(range(N - 18, N + 1, 2)) / 10)


def test_system_series_as_tables_have_rows(client: TestClient) -> None:
    targets = [{"target": n, "refId": n, "type": "table"} for n in ("steps_per_s", "clients")]
    sps, clients = client.post("/grafana/query", json=grafana_query(targets)).json()
    assert len(clients["rows"]) == 21  # samples every 10 s within 200 s
    assert len(sps["rows"]) == 20  # the first sample has no rate yet
    assert clients["rows"][0] == [int(T0 * 1000), 0, 2]


TARGET = [{"target": "return", "refId": "A"}]
# (path, body, status, words of the message, whether the body breaks the protocol, which
# the plugin then could never send: the description must say so, and must not otherwise)
INVALID: list[tuple[str, Any, int, str, bool]] = [
    ("/query", {"targets": "return"}, 422, "targets: Input should be a valid list", True),
    ("/query", {"targets": [{"refId": "A"}]}, 422, "targets.0.target: Field required", True),
    ("/query", {"targets": [{"target": 5}]}, 422, "targets.0.target", True),
    ("/query", {"targets": TARGET, "filters": {"key": "client_id"}}, 422, "filters", True),
    ("/query", {"targets": TARGET, "filters": [{"value": "a"}]}, 422, "filters.0.key", False),
    ("/query", {"targets": TARGET, "maxDataPoints": "many"}, 422, "maxDataPoints", True),
    ("/query", {"targets": TARGET, "maxDataPoints": 0}, 400, "maxDataPoints", False),
    ("/query", {"targets": TARGET, "range": {"from": "yesterday"}}, 400, "range.from", True),
    ("/query", {"targets": TARGET, "range": {"from": iso(T0 + 9), "to": iso(T0)}}, 400,
     "range.from is after range.to", False),
    ("/query", {"targets": [{"target": "nope", "refId": "B"}]}, 400, "no series 'nope'", False),
    ("/query", {"targets": [{"target": "annotations.nope"}]}, 400, "no annotation kind", False),
    ("/query", {"targets": [{"target": "return", "payload": {"aggregate": "median"}}]}, 400,
     "aggregate 'median'", False),
    ("/query", {"targets": [{"target": "return", "payload": "{oops"}]}, 400, "not JSON", True),
    ("/query", {"targets": TARGET, "filters": [{"key": "host", "value": "a"}]}, 400,
     "no ad hoc filter key 'host'", False),
    ("/query", {"targets": TARGET, "filters": [{"key": "client_id", "operator": "<"}]}, 400,
     "filter operator '<'", False),
    ("/query", [], 422, "body", True),
    ("/query", None, 422, "body: Field required", True),
    ("/variable", {"payload": 5}, 422, "payload", True),
    ("/variable", {"payload": {"variables": {}}, "range": 3}, 422, "range", True),
    ("/tag-values", {}, 422, "key: Field required", True),
    ("/tag-values", {"key": "host"}, 400, "no ad hoc filter key 'host'", False),
    ("/metric-payload-options", {"metric": "return"}, 422, "name: Field required", True),
    ("/metrics", {"metric": ["return"]}, 422, "metric", True),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "status", "words", "breaks"), INVALID)
def test_bad_requests_get_a_4xx_with_a_message_grafana_shows(
    client: TestClient, path: str, body: Any, status: int, words: str, breaks: bool
) -> None:
    assert breaks_protocol(path, body) == breaks  # rejected by the description first
    r = call(client, path, body)
    assert r.status_code == status, r.text
    assert words in r.json()["message"], r.json()
    assert "\n" not in r.json()["message"]


def test_a_body_that_is_not_json_is_422(client: TestClient) -> None:
    r = client.post(
        "/grafana/query", content=b"{targets", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and "JSON" in r.json()["message"]


@pytest.mark.parametrize(
    ("query", "kinds"),
    [("", {"best", "join"}), ("best", {"best"}), ("#clients", {"join"}), ("join,leave", {"join"})],
)
def test_simplejson_annotations_by_kind(client: TestClient, query: str, kinds: set[str]) -> None:
    body = {"range": {"from": iso(T0), "to": iso(T0 + N)}, "annotation": {"query": query}}
    got = client.post("/grafana/annotations", json=body).json()
    assert {a["tags"][0] for a in got} == kinds


def test_simplejson_annotations_for_an_unknown_query_are_not_every_event(
    client: TestClient,
) -> None:
    body = {"annotation": {"name": "deploys", "query": "deploys", "enable": True}}
    r = client.post("/grafana/annotations", json=body)
    assert r.status_code == 400 and "deploys" in r.json()["message"]
    assert json.dumps(r.json()).count("best model saved") == 0

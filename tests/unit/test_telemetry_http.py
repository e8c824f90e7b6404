"""The telemetry node's HTTP side, in process: the Grafana data source with the request bodies
the plugins document, the JSON API, /metrics and the port error."""

from __future__ import annotations

import socket

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from soulsai.errors import ConfigError
from soulsai.metrics import NodeMetrics
from soulsai.telemetry.stats import SystemSeries
from soulsai.telemetry.web import HttpServer, WebState, bind, make_app
from tests.data.episode_history import T0, episode_stats, iso

N = 500


@pytest.fixture(scope="module")
def state() -> WebState:
    stats = episode_stats(N, (100, 300), saved_best=True)
    stats.note_client("gamma", True, T0 + 250)
    system = SystemSeries()
    for i in range(60):
        system.sample(T0 + 10 * i, 300 * i, 2)
    metrics = NodeMetrics("telemetry", {"episodes": "episodes received"})
    metrics.set_all({"episodes": N}, {"bad_version": 3})
    return WebState(
        stats=stats,
        system=system,
        summary=lambda: {"episodes": N, "rolling_return": 495.5},
        x_key="env_steps",
        y_keys=["return", "length"],
        title="dqn on CartPole-v1",
        registry=metrics.registry,
    )


@pytest.fixture(scope="module")
def client(state: WebState) -> TestClient:
    return TestClient(make_app(state))


# ---------------------------------------------------------------- simpod-json-datasource


def test_health_at_the_prefix(client: TestClient) -> None:
    for path in ("/grafana/", "/grafana"):
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 200 and r.json()["status"] == "ok"


def test_metrics_list_with_payload_options(client: TestClient) -> None:
    for body in ({}, {"metric": "return", "payload": {"aggregate": "max"}}):
        got = client.post("/grafana/metrics", json=body).json()
        values = [m["value"] for m in got]
        assert {"return", "return_avg", "length_avg", "info.hp_avg", "steps_per_s"} <= set(values)
        assert got[0]["payloads"][0]["name"] == "aggregate"
    body = {"metric": "return", "payload": {"aggregate": "mean"}, "name": "aggregate"}
    opts = client.post("/grafana/metric-payload-options", json=body).json()
    assert [o["value"] for o in opts] == ["mean", "min", "max", "last"]
    assert client.post("/grafana/metric-payload-options", json={"name": "other"}).json() == []


def simpod_query(targets: list[dict], start: float, end: float, points: int) -> dict:
    """A /query body as simpod-json-datasource documents it."""
    return {
        "panelId": 1,
        "range": {"from": iso(start), "to": iso(end), "raw": {"from": "now-6h", "to": "now"}},
        "rangeRaw": {"from": "now-6h", "to": "now"},
        "interval": "30s",
        "intervalMs": 30000,
        "maxDataPoints": points,
        "targets": targets,
        "adhocFilters": [],
    }


def test_query_honours_range_and_max_data_points(client: TestClient) -> None:
    body = simpod_query(
        [{"target": "return", "refId": "A", "payload": {}}, {"target": "return_avg", "refId": "B"}],
        T0 + 101,
        T0 + 400,
        50,
    )
    got = client.post("/grafana/query", json=body).json()
    assert [g["target"] for g in got] == ["return", "return_avg"]
    for series in got:
        points = series["datapoints"]
        assert 1 <= len(points) <= 50
        times = [ms for _, ms in points]
        assert times == sorted(times)
        assert times[0] >= (T0 + 101) * 1000 and times[-1] == (T0 + 400) * 1000
    raw = got[0]["datapoints"]
    assert raw[0][0] == pytest.approx(sum(range(101, 107)) / 6)  # 300 points in 50 bucket means
    body["maxDataPoints"] = 1000  # fewer points in range than asked: every one, unchanged
    raw = client.post("/grafana/query", json=body).json()[0]["datapoints"]
    assert len(raw) == 300 and raw[0] == [101.0, (T0 + 101) * 1000]


def test_query_aggregate_payload_and_multi_value_target(client: TestClient) -> None:
    body = simpod_query(
        [{"target": "{return,length}", "refId": "A", "payload": '{"aggregate": "max"}'}],
        T0,
        T0 + N,
        10,
    )
    got = client.post("/grafana/query", json=body).json()
    assert [g["target"] for g in got] == ["return", "length"]
    assert got[0]["datapoints"][-1][0] == N  # max of the last bucket
    assert max(v for v, _ in got[1]["datapoints"]) == 24


def test_targets_in_the_plugins_regex_formatting(client: TestClient) -> None:
    # a multi-value variable $series is sent as "(a|b)", values regex-escaped; globs match
    targets = [
        {"target": "(return_avg|info\\.hp_avg)", "refId": "A"},
        {"target": "length*", "refId": "B"},
        {"target": "info\\.hp", "refId": "C"},
    ]
    got = client.post("/grafana/query", json=simpod_query(targets, T0, T0 + N, 5)).json()
    assert [g["target"] for g in got] == ["return_avg", "info.hp_avg", "length", "length_avg",
                                          "info.hp"]  # fmt: skip


def test_adhoc_filter_by_client_recomputes_moving_average(client: TestClient) -> None:
    body = simpod_query([{"target": "return_avg", "refId": "A"}], T0, T0 + N, 1000)
    body["adhocFilters"] = [{"key": "client_id", "operator": "=", "value": "beta"}]
    points = client.post("/grafana/query", json=body).json()[0]["datapoints"]
    assert len(points) == N // 2
    assert points[-1][0] == pytest.approx(sum(range(N - 18, N + 1, 2)) / 10)  # beta's last 10
    tags = client.post("/grafana/tag-keys", json={}).json()
    assert tags == [{"type": "string", "text": "client_id"}]
    values = client.post("/grafana/tag-values", json={"key": "client_id"}).json()
    assert values == [{"text": "alpha"}, {"text": "beta"}]


def test_variable(client: TestClient) -> None:
    body = {
        "payload": {"target": "clients"},
        "range": {"from": iso(T0), "to": iso(T0 + N), "raw": {"from": "now-3h", "to": "now"}},
    }
    got = client.post("/grafana/variable", json=body).json()
    assert [(v["__text"], v["__value"], v["text"], v["value"]) for v in got] == [
        ("alpha",) * 4,
        ("beta",) * 4,
    ]  # __text/__value for the plugin, text/value for its openapi.yaml
    body["payload"] = {"target": "_avg"}
    got = client.post("/grafana/variable", json=body).json()
    assert {"return_avg", "length_avg"} <= {v["__value"] for v in got}


def test_system_series_and_annotation_target(client: TestClient) -> None:
    body = simpod_query(
        [{"target": "steps_per_s", "refId": "A"}, {"target": "annotations.best", "refId": "B"}],
        T0,
        T0 + 10_000,
        1000,
    )
    sps, ann = client.post("/grafana/query", json=body).json()
    # the first sample has no rate yet (no point), the others the smoothed rate: 300 per 10 s
    assert len(sps["datapoints"]) == 59 and sps["datapoints"][-1][0] == pytest.approx(30.0)
    assert ann["type"] == "table" and [c["text"] for c in ann["columns"]][:2] == ["time", "title"]
    assert [row[0] for row in ann["rows"]] == [(T0 + 100) * 1000, (T0 + 300) * 1000]


# ---------------------------------------------------------------- SimpleJSON


def test_simplejson_search(client: TestClient) -> None:
    assert "return_avg" in client.post("/grafana/search", json={"target": ""}).json()
    got = client.post("/grafana/search", json={"target": "length"}).json()
    assert got == ["length", "length_avg"]
    got = client.post("/grafana/search", json={"type": "timeseries", "target": "upper_50"}).json()
    assert got == []


def test_simplejson_timeserie_and_table(client: TestClient) -> None:
    body = {
        "panelId": 1,
        "range": {"from": iso(T0), "to": iso(T0 + N), "raw": {"from": "now-1h", "to": "now"}},
        "rangeRaw": {"from": "now-1h", "to": "now"},
        "interval": "30s",
        "intervalMs": 30000,
        "targets": [
            {"target": "length_avg", "refId": "A", "type": "timeserie"},
            {"target": "return", "refId": "B", "type": "table"},
        ],
        "format": "json",
        "maxDataPoints": 100,
    }
    series, table = client.post("/grafana/query", json=body).json()
    assert series["target"] == "length_avg" and len(series["datapoints"]) == 100
    assert table["type"] == "table"
    assert [c["text"] for c in table["columns"]] == ["Time", "episode", "env_steps", "return"]
    assert len(table["rows"]) == 100
    last = table["rows"][-1]
    assert last[0] == (T0 + N) * 1000 and last[1] == N and last[2] == 30 * N
    assert last[3] == pytest.approx((N - 4 + N) / 2)  # mean of the last bucket's 5 returns


def test_simplejson_annotations(client: TestClient) -> None:
    body = {
        "range": {"from": iso(T0), "to": iso(T0 + 280)},
        "rangeRaw": {"from": "now-1h", "to": "now"},
        "annotation": {
            "name": "deploy",
            "datasource": "Simple JSON Datasource",
            "iconColor": "rgba(255, 96, 96, 1)",
            "enable": True,
            "query": "",
        },
    }
    got = client.post("/grafana/annotations", json=body).json()
    kinds = [(a["tags"], a["time"]) for a in got]
    assert (["best"], (T0 + 100) * 1000) in kinds
    assert (["join"], (T0 + 250) * 1000) in kinds  # gamma's heartbeat appeared
    assert all(a["time"] <= (T0 + 280) * 1000 for a in got)  # range honoured
    assert got[0]["annotation"]["name"] == "deploy"
    body["annotation"]["query"] = "#best"
    got = client.post("/grafana/annotations", json=body).json()
    assert [a["tags"] for a in got] == [["best"]]
    assert "return_avg" in got[0]["text"]


def test_unknown_targets_and_odd_bodies_are_4xx_with_a_message(client: TestClient) -> None:
    r = client.post("/grafana/query", json={"targets": [{"target": "nope", "refId": "A"}]})
    assert r.status_code == 400 and "no series 'nope'" in r.json()["message"]
    r = client.post("/grafana/query", json={"targets": [{"target": "return"}, "junk"]})
    assert r.status_code == 422 and "targets.1" in r.json()["message"]
    assert client.post("/grafana/query", json={}).json() == []
    assert client.post("/grafana/annotations", json={}).status_code == 200
    assert client.post("/grafana/annotations").status_code == 200


# ---------------------------------------------------------------- JSON API, page, /metrics


def test_api_series_rows_for_infinity(client: TestClient) -> None:
    params = {"keys": "return,return_avg", "max_points": 10, "from": (T0 + 1) * 1000}
    got = client.get("/api/series", params=params).json()
    assert len(got) == 10
    assert set(got[0]) == {"time", "episode", "env_steps", "wall_time", "return", "return_avg"}
    assert got[-1]["episode"] == N and got[-1]["time"] == (T0 + N) * 1000
    cols = client.get("/api/series", params={"keys": "info.hp", "format": "columns"}).json()
    assert len(cols["time"]) == N and cols["info.hp"][-1] == pytest.approx(0.0)
    only = client.get("/api/series", params={"keys": "return", "client": "alpha"}).json()
    assert len(only) == N // 2 and all(r["return"] % 2 == 1 for r in only)
    assert client.get("/api/series", params={"keys": "nope"}).status_code == 404


def test_api_live_and_page(client: TestClient) -> None:
    live = client.get("/api/live", params={"points": 100}).json()
    assert [p["name"] for p in live["panels"]] == ["return", "length"]
    ret = live["panels"][0]
    assert len(ret["x"]) == len(ret["raw"]) == len(ret["avg"]) == 100 and ret["x"][-1] == 30 * N
    assert len(live["system"]["t"]) == 60 and live["summary"]["episodes"] == N
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "api/live" in page.text and "<script>" in page.text
    assert "://" not in page.text and "src=" not in page.text  # self-contained: no CDN
    assert client.get("/api/events").json()[0]["kind"] == "join"


def test_metrics_parse_with_prometheus_parser(client: TestClient) -> None:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    assert families["soulsai_telemetry_episodes"].samples[0].value == N
    rejected = families["soulsai_telemetry_rejected"].samples[0]
    assert rejected.labels == {"reason": "bad_version"} and rejected.value == 3


def test_openapi_schema_and_no_cdn_docs(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/series", "/grafana/query", "/grafana/annotations"} <= set(paths)
    assert client.get("/docs").status_code == 404  # Swagger UI would load scripts from a CDN


def test_no_cors_unless_origins_are_configured(client: TestClient, state: WebState) -> None:
    preflight = {"Origin": "http://grafana:3000", "Access-Control-Request-Method": "POST"}
    r = client.options("/grafana/query", headers=preflight)
    assert "access-control-allow-origin" not in r.headers
    r = client.post("/grafana/query", json={}, headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    listed = TestClient(make_app(state, cors_origins=["http://grafana:3000"]))
    r = listed.options("/grafana/query", headers=preflight)
    assert (
        r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://grafana:3000"
    )
    r = listed.options("/grafana/query", headers={**preflight, "Origin": "http://evil.example"})
    assert r.headers.get("access-control-allow-origin") != "*"


# ---------------------------------------------------------------- serving


def test_busy_port_is_one_line_naming_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as err:
            bind(port, "telemetry.http_port")
    msg = str(err.value)
    assert f"telemetry.http_port={port}" in msg and "\n" not in msg and err.value.exit_code == 2


def test_server_thread_serves_real_http_and_stops(state: WebState) -> None:
    import httpx

    server = HttpServer(make_app(state), 0, "telemetry.http_port", host="127.0.0.1").start()
    try:
        r = httpx.get(f"http://127.0.0.1:{server.port}/grafana/", timeout=5)
        assert r.json()["episodes"] == N
    finally:
        server.stop()
    assert not server.thread.is_alive()

"""The telemetry node's HTTP side against hostile requests: no regex from the wire, bounded
bodies, targets and points, loopback by default, no wildcard CORS, the optional bearer token
(issue 15, item 3). The node as a real process under the same attacks: tests/integration/
test_telemetry.py."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from soulsai.config import default_config_dir, load_config
from soulsai.errors import ConfigError
from soulsai.metrics import NodeMetrics
from soulsai.telemetry import grafana
from soulsai.telemetry.grafana import MAX_SERIES
from soulsai.telemetry.grafana_names import expand_target, glob_match
from soulsai.telemetry.grafana_requests import MAX_PATTERN
from soulsai.telemetry.guards import MAX_BODY_BYTES, TOKEN_NAME, BodyLimit, read_token
from soulsai.telemetry.stats import EpisodeStats, SystemSeries
from soulsai.telemetry.web import HttpServer, WebState, make_app
from tests.conftest import listen_address

T0 = 1_700_000_000.0
N = 200
KNOWN = ["return", "return_avg", "length", "length_avg", "info.hp", "info.hp_avg"]
# Backtracks forever in Python's re (which holds the GIL meanwhile): the 60 s freeze.
CATASTROPHIC = "(((\\w*)*)*)*!"


@pytest.fixture(scope="module")
def state() -> WebState:
    cfg = load_config(default_config_dir(), ["telemetry.moving_average=10"]).telemetry
    stats = EpisodeStats(cfg)
    for i in range(1, N + 1):
        stats.add(
            {
                "episode": i,
                "return": float(i),
                "length": 20,
                "client_id": "alpha" if i % 2 else "beta",
                "time": T0 + i,
                "env_steps": 20 * i,
                "wall_time": float(i),
                "stream_id": f"{int((T0 + i) * 1000)}-0",
                "info.hp": 1.0,
            }
        )
    return WebState(stats, SystemSeries(), dict, "env_steps", ["return"], "t")


@pytest.fixture(scope="module")
def client(state: WebState) -> TestClient:
    return TestClient(make_app(state))


def query(client: TestClient, targets: list, **extra) -> list[dict]:
    r = client.post("/grafana/query", json={"targets": targets, **extra})
    assert r.status_code == 200, r.text
    return r.json()


# ---------------------------------------------------------------- no regex from the wire


@pytest.mark.parametrize(
    ("pattern", "name", "match"),
    [
        ("return", "return", True),
        ("ret*", "return_avg", True),
        ("*_avg", "return_avg", True),
        ("*_avg", "return", False),
        ("info.*_avg", "info.hp_avg", True),
        ("r?turn", "return", True),
        ("r?turn", "rturn", False),
        ("*", "", True),
        ("", "x", False),
        ("a*b*c", "aXbYc", True),
        ("a*b*c", "aXbYcZ", False),
        ("ret.rn", "return", False),  # "." is a dot, not any character
        ("(return)", "return", False),
        ("*a*a*a*a*a*a*a*a*a*a*b", "a" * 5000, False),  # a regex's worst case: linear here
    ],
)
def test_glob_match(pattern: str, name: str, match: bool) -> None:
    assert glob_match(pattern, name) is match


def test_targets_are_names_and_globs_never_regular_expressions(client: TestClient) -> None:
    for name in ("ret.rn", "(return|length)+"):  # a regex would match return: unknown names
        r = client.post("/grafana/query", json={"targets": [{"target": name, "refId": "A"}]})
        assert r.status_code == 400 and "no series" in r.json()["message"]
    assert expand_target("info.*_avg", KNOWN) == ["info.hp_avg"]
    assert expand_target("{return,length}", KNOWN) == ["return", "length"]
    assert expand_target("(return_avg|info\\.hp)", KNOWN) == ["return_avg", "info.hp"]
    assert expand_target("(length*|info\\.hp)", KNOWN) == ["length", "length_avg", "info.hp"]


def test_a_catastrophic_regex_is_just_a_glob_that_matches_nothing(client: TestClient) -> None:
    assert query(client, [{"target": CATASTROPHIC, "refId": "A"}]) == []  # a glob, no match
    flt = [{"key": "client_id", "operator": "=~", "value": CATASTROPHIC}]
    assert query(client, [{"target": "return"}], adhocFilters=flt)[0]["datapoints"] == []


def test_adhoc_regex_operators_take_globs(client: TestClient) -> None:
    flt = [{"key": "client_id", "operator": "=~", "value": "al*"}]  # a regex would match beta
    points = query(client, [{"target": "return"}], adhocFilters=flt)[0]["datapoints"]
    assert len(points) == N // 2 and all(v % 2 == 1 for v, _ in points)
    flt = [{"key": "client_id", "operator": "!~", "value": "al*"}]
    points = query(client, [{"target": "return"}], adhocFilters=flt)[0]["datapoints"]
    assert len(points) == N // 2 and all(v % 2 == 0 for v, _ in points)


# ---------------------------------------------------------------- bounded queries


def test_too_many_targets_or_series_or_too_long_a_pattern_is_400(client: TestClient) -> None:
    many = [{"target": "return", "refId": str(i)} for i in range(MAX_SERIES + 1)]
    r = client.post("/grafana/query", json={"targets": many})
    assert r.status_code == 400 and "at most" in r.json()["detail"]
    braces = "{" + ",".join(["return"] * (MAX_SERIES + 1)) + "}"
    r = client.post("/grafana/query", json={"targets": [{"target": braces}]})
    assert r.status_code == 400
    long = [{"target": "r" * (MAX_PATTERN + 1)}]
    assert client.post("/grafana/query", json={"targets": long}).status_code == 400
    keys = ",".join(f"k{i}" for i in range(MAX_SERIES + 1))
    assert client.get("/api/series", params={"keys": keys}).status_code == 400
    # each client_id filter scans every client id ever seen (forgeable): a handful per query
    flt = [
        {"key": "client_id", "operator": "!~", "value": "*" + "a" * 200 + f"b{i}"} for i in range(9)
    ]
    r = client.post("/grafana/query", json={"targets": [{"target": "return"}], "adhocFilters": flt})
    assert r.status_code == 400 and "client_id filters" in r.json()["detail"]
    r = client.post(
        "/grafana/query", json={"targets": [{"target": "return"}], "adhocFilters": flt[:8]}
    )
    assert r.status_code == 200


def test_series_of_one_response_share_its_point_budget(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(grafana, "MAX_RESPONSE_POINTS", 100)
    got = query(client, [{"target": "{return,length,info.hp,return_avg}"}], maxDataPoints=10**9)
    assert len(got) == 4 and all(len(g["datapoints"]) == 25 for g in got)
    single = query(client, [{"target": "return"}], maxDataPoints=60)
    assert len(single[0]["datapoints"]) == 60  # under the budget: what was asked


# ---------------------------------------------------------------- request bodies


def test_a_body_over_the_limit_is_413_before_it_is_read(client: TestClient) -> None:
    big = b'{"targets": [' + b'{"target": "return"},' * (MAX_BODY_BYTES // 20) + b"{}]}"
    r = client.post("/grafana/query", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413

    def chunks():  # no Content-Length: counted as it streams
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b" " * 65536

    r = client.post("/grafana/query", content=chunks())
    assert r.status_code == 413
    small = client.post("/grafana/query", json={"targets": [{"target": "return"}]})
    assert small.status_code == 200


def test_body_limit_stops_reading_a_stream_past_the_limit() -> None:
    """An endless chunked body: the middleware reads one chunk past the limit, then answers."""
    read, sent = [0], []
    chunk = b"x" * 65536

    async def receive() -> dict:
        read[0] += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict) -> None:
        sent.append(message)

    async def app(scope, receive, send) -> None:  # never reached
        raise AssertionError("the app saw an oversized body")

    scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
    asyncio.run(BodyLimit(app, MAX_BODY_BYTES)(scope, receive, send))
    assert sent[0]["status"] == 413
    assert read[0] <= MAX_BODY_BYTES + len(chunk)


# ---------------------------------------------------------------- who may ask


def test_the_token_guards_the_grafana_routes_only(state: WebState) -> None:
    client = TestClient(make_app(state, token="s3cret-token"))
    body = {"targets": [{"target": "return"}]}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}):
        r = client.post("/grafana/query", json=body, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert client.get("/grafana").status_code == 401
    assert client.get("/api/series").status_code == 401
    auth = {"Authorization": "Bearer s3cret-token"}
    assert client.post("/grafana/query", json=body, headers=auth).status_code == 200
    assert client.get("/grafana/", headers=auth).json()["status"] == "ok"
    assert client.get("/api/series", headers=auth).status_code == 200
    for path in ("/", "/api/live", "/api/summary", "/metrics"):  # the page and Prometheus
        assert client.get(path).status_code == 200, path


def test_token_file(tmp_path: Path) -> None:
    assert read_token(tmp_path) is None and read_token(None) is None
    (tmp_path / TOKEN_NAME).write_text("  abc123\n")
    assert read_token(tmp_path) == "abc123"
    for bad in ("", "\n", "two words\n"):
        (tmp_path / TOKEN_NAME).write_text(bad)
        with pytest.raises(ConfigError) as err:
            read_token(tmp_path)
        assert TOKEN_NAME in str(err.value) and "\n" not in str(err.value)


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc/net/tcp")
def test_both_http_servers_listen_on_loopback_by_default(state: WebState) -> None:
    cfg = load_config(default_config_dir(), [])
    assert cfg.telemetry.http_host == "127.0.0.1" and cfg.training.metrics_host == "127.0.0.1"
    assert cfg.telemetry.cors_origins == []
    server = HttpServer(make_app(state), 0, "telemetry.http_port")
    try:
        assert listen_address(server.port) == "127.0.0.1"
    finally:
        server.stop()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    NodeMetrics("training", {}).serve(port, "training.metrics_port")  # a daemon thread
    assert listen_address(port) == "127.0.0.1"


def test_the_compose_stack_listens_on_every_interface_inside_its_containers() -> None:
    import yaml

    root = Path(__file__).resolve().parents[2]
    for name in ("docker-compose.yaml", "docker-compose.tls.yaml"):
        services = yaml.safe_load((root / name).read_text())["services"]
        assert "telemetry.http_host=0.0.0.0" in services["telemetry_node"]["command"], name
        assert "training.metrics_host=0.0.0.0" in services["training_node"]["command"], name

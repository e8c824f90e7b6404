"""monitoring/grafana/: the provisioning files and the dashboard agree with what the nodes serve."""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from soulsai.config import default_config_dir, load_config
from soulsai.telemetry.node import COUNTERS as TELEMETRY_COUNTERS
from soulsai.telemetry.node import METRICS as TELEMETRY_METRICS
from soulsai.telemetry.stats import EpisodeStats, SystemSeries
from soulsai.telemetry.web import WebState, make_app

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "monitoring" / "grafana"


def datasources() -> dict[str, dict]:
    doc = yaml.safe_load((GRAFANA / "provisioning/datasources/soulsai.yaml").read_text())
    return {d["uid"]: d for d in doc["datasources"]}


def dashboard() -> dict:
    return json.loads((GRAFANA / "dashboards/soulsai.json").read_text())


def panels() -> list[dict]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


@pytest.fixture(scope="module")
def client() -> TestClient:
    cfg = load_config(default_config_dir(), []).telemetry
    stats = EpisodeStats(cfg)
    for i in range(1, 31):
        stats.add(
            {
                "episode": i,
                "return": float(i),
                "length": 10,
                "client_id": "c",
                "time": 1e9 + i,
                "env_steps": 10 * i,
                "wall_time": float(i),
                "stream_id": f"{(10**9 + i) * 1000}-0",
                "info.boss_hp": 0.5,
            }
        )
    state = WebState(stats, SystemSeries(), dict, "env_steps", ["return"], "t")
    return TestClient(make_app(state))


def test_provisioning_files() -> None:
    ds = datasources()
    assert ds["soulsai-json"]["type"] == "simpod-json-datasource"
    assert ds["soulsai-json"]["url"].endswith(":8080/grafana")
    assert ds["soulsai-infinity"]["type"] == "yesoreyeram-infinity-datasource"
    assert ds["soulsai-prometheus"]["type"] == "prometheus"
    doc = yaml.safe_load((GRAFANA / "provisioning/dashboards/soulsai.yaml").read_text())
    assert doc["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_every_panel_uses_a_provisioned_data_source() -> None:
    uids = set(datasources())
    dash = dashboard()
    assert dash["uid"] and len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    for p in panels():
        assert p["datasource"]["uid"] in uids, p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == p["datasource"]["uid"], p["title"]
    for a in dash["annotations"]["list"][1:]:
        assert a["datasource"]["uid"] in uids
    for v in dash["templating"]["list"]:
        assert v["datasource"]["uid"] in uids


def test_json_targets_are_served(client: TestClient) -> None:
    for p in panels():
        if p["datasource"]["uid"] != "soulsai-json":
            continue
        for t in p["targets"]:
            name = t["target"].replace("$series", "return_avg")
            body = {"targets": [{"target": name, "refId": "A"}], "maxDataPoints": 100}
            (got,) = client.post("/grafana/query", json=body).json()
            assert got["datapoints"], (p["title"], name)
    for a in dashboard()["annotations"]["list"][1:]:
        body = {"targets": [a["target"]]}
        (got,) = client.post("/grafana/query", json=body).json()
        assert got["type"] == "table", a["name"]
        got = client.post("/grafana/annotations", json={"annotation": {"query": a["query"]}})
        assert got.status_code == 200


def test_infinity_urls_are_served(client: TestClient) -> None:
    for p in panels():
        if p["datasource"]["uid"] != "soulsai-infinity":
            continue
        for t in p["targets"]:
            url = t["url"].replace("${__from}", "0").replace("${__to}", str(2 * 10**12))
            rows = client.get(url).json()
            assert rows, p["title"]
            assert {c["selector"] for c in t["columns"]} <= set(rows[0]), p["title"]


def exported_metric_names() -> set[str]:
    """Every metric name the two nodes export: counters as `..._total`, gauges as they are."""
    from soulsai.training.node import COUNTERS as TRAINER_COUNTERS
    from soulsai.training.node import METRICS as TRAINER_METRICS

    def name(node: str, key: str, counters: Collection[str]) -> str:
        return f"soulsai_{node}_{key}" + ("_total" if key in counters else "")

    exported = {name("telemetry", k, TELEMETRY_COUNTERS) for k in TELEMETRY_METRICS}
    exported |= {name("trainer", k, TRAINER_COUNTERS) for k in TRAINER_METRICS}
    return exported | {
        "soulsai_telemetry_rejected_total",
        "soulsai_trainer_rejected_total",
        "soulsai_run_info",
    }


def test_prometheus_expressions_name_metrics_the_nodes_export() -> None:
    exported = exported_metric_names()
    for p in panels():
        if p["datasource"]["uid"] != "soulsai-prometheus":
            continue
        for t in p["targets"]:
            names = set(re.findall(r"soulsai_[a-z_]+", t["expr"]))
            assert names and names <= exported, (p["title"], names - exported)
            for counter in {n for n in names if n.endswith("_total")} - {
                "soulsai_telemetry_episodes_total",
                "soulsai_telemetry_missing_total",
                "soulsai_telemetry_duplicates_total",
            }:  # a count shown as a total; any other counter is read through rate()
                assert f"rate({counter}[" in t["expr"], (p["title"], t["expr"])


def test_learner_panels_per_algorithm_say_why_they_are_empty() -> None:
    from soulsai.training.algorithms.dqn_driver import DQNDriver
    from soulsai.training.algorithms.ppo_driver import PPODriver

    by_metric = {}
    for p in panels():
        for t in p["targets"]:
            for n in re.findall(r"soulsai_trainer_([a-z_]+)", t.get("expr", "")):
                by_metric[n] = p
    for key in ("approx_kl", "entropy", "clipfrac", "explained_variance", "lr"):
        assert (
            key in PPODriver.metrics
            and "PPO" in by_metric[key]["fieldConfig"]["defaults"]["noValue"]
        )
    for key in ("q_mean", "epsilon"):
        assert (
            key in DQNDriver.metrics
            and "DQN" in by_metric[key]["fieldConfig"]["defaults"]["noValue"]
        )

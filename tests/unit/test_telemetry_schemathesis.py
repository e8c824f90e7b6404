"""schemathesis against the telemetry node's own OpenAPI schema (FastAPI's /openapi.json),
in process through the ASGI app: generated requests, valid and not, to every route; none may
get a 5xx, and each answer must match the schema of its status code. Bounded examples per
route, so it runs in seconds."""

from __future__ import annotations

import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from soulsai.config import default_config_dir, load_config
from soulsai.metrics import NodeMetrics
from soulsai.telemetry.stats import EpisodeStats, SystemSeries
from soulsai.telemetry.web import WebState, make_app

T0 = 1_700_000_000.0


def telemetry_app() -> FastAPI:
    """The app over 60 episodes of three clients, best-model saves and system samples."""
    cfg = load_config(default_config_dir(), ["telemetry.moving_average=5"]).telemetry
    stats = EpisodeStats(cfg)
    for i in range(1, 61):
        rec = {
            "episode": i,
            "return": float(i % 7),
            "length": 10 + i % 3,
            "client_id": ["alpha", "beta", "gamma"][i % 3],
            "time": T0 + i,
            "env_steps": 11 * i,
            "wall_time": float(i),
            "stream_id": f"{int((T0 + i) * 1000)}-0",
            "model_id": i // 4,
            "info.hp": 0.5,
        }
        stats.add(rec)
        stats.best_due(rec)
    system = SystemSeries()
    for i in range(20):
        system.sample(T0 + 3 * i, 33 * i, 3)
    metrics = NodeMetrics("telemetry", {"episodes": "episodes received"})
    state = WebState(stats, system, dict, "env_steps", ["return"], "t", metrics.registry)
    return make_app(state)


# Loaded at collection (schemathesis' fixture-based loader needs pytest internals that the
# installed pytest lacks); building the app takes milliseconds.
schema = schemathesis.openapi.from_asgi("/openapi.json", telemetry_app())


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_generated_request_gets_a_server_error(case: schemathesis.Case) -> None:
    case.call_and_validate(
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ]
    )

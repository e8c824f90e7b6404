"""The best-model command as the telemetry node sends it, in process against a real Redis: a
rising curve from few model versions (PPO: many episodes per model) saves each model once,
not every `best_interval` episodes, and the command, the record and the annotation name the
model id (issue 21: a PPO run wrote best_model/ 41 times in 90 s for about 17 models)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from soulsai.config import load_config
from soulsai.telemetry.node import TelemetryNode
from soulsai.transport.episodes import EpisodeRecord, encode_episode

pytestmark = pytest.mark.integration


def make_node(redis_server, config_dir: Path, prefix: str, run_dir: Path) -> TelemetryNode:
    sets = [
        f"key_prefix={prefix}",
        "telemetry.http_port=0",
        "telemetry.moving_average=5",
        "telemetry.best_interval=5",
        "telemetry.update_interval=1000",
        "target_return=null",
    ]
    cfg = load_config(config_dir, sets)
    run_dir.mkdir(exist_ok=True)
    return TelemetryNode(cfg, redis_server.target, run_dir, threading.Event())


def commands(rclient, keys) -> list[dict]:
    return [json.loads(c) for c in reversed(rclient.lrange(keys.trainer_commands, 0, -1))]


def send_and_poll(node: TelemetryNode, rclient, keys, episodes: list[tuple[int, int]]) -> None:
    """XADD (client episode, model id) records, one batch each (the eagerest case), and let
    the node handle each as it does in its loop."""
    for seq, model in episodes:
        rec = EpisodeRecord("c1", model, float(seq), 10, {}, time.time(), seq)
        rclient.xadd(keys.episodes, {"m": encode_episode(rec)})
        deadline = time.monotonic() + 10
        while node.poll(block_ms=100) == 0:  # wait for the record to be read
            assert time.monotonic() < deadline, "the node never read the record"


def test_a_rising_curve_saves_each_model_once_with_its_id(
    redis_server, rclient, keys, prefix, config_dir, tmp_path
) -> None:
    node = make_node(redis_server, config_dir, prefix, tmp_path / "run")
    # 60 episodes, 20 per model, the average rising all the time; best_interval is 5
    send_and_poll(node, rclient, keys, [(i, 7 + (i - 1) // 20) for i in range(1, 61)])
    cmds = commands(rclient, keys)
    assert [c["model_id"] for c in cmds] == [7, 8, 9]  # before: 11 saves of 3 models
    assert all(c["cmd"] == "save_best" and c["key"] == "return" for c in cmds)
    node.flush(final=True)
    lines = (tmp_path / "run" / "episodes.jsonl").read_text().splitlines()
    marked = [json.loads(x) for x in lines if "saved_best" in x]
    assert [r["saved_best_model_id"] for r in marked] == [7, 8, 9]
    best = [e for e in node.stats.events if e.kind == "best"]
    assert [e.model_id for e in best] == [7, 8, 9] and "model 9" in best[-1].title

    # a restarted node knows model 9 is saved: no command until model 10 plays
    again = make_node(redis_server, config_dir, prefix, tmp_path / "run")
    send_and_poll(again, rclient, keys, [(61, 9), (62, 9), (63, 10)])
    assert [c["model_id"] for c in commands(rclient, keys)] == [7, 8, 9, 10]

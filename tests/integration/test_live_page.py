"""The live page in headless Chromium against a real telemetry node and a real Redis: the model,
learner statistics, progress and ETA, target line, best-model markers, the client table and the
rejects by reason show what the node read, at desktop and phone widths; a hostile client id
stays text. Screenshots land in the test's tmp dir (page-1400.png, page-390.png)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.conftest import read_log, wait_until
from tests.integration.test_telemetry import (
    chromium,
    episode,
    free_port,
    http,
    http_up,
    line_pixels,
    run_chromium,
    start_node,
)

pytestmark = pytest.mark.integration

HOSTILE = "<img src=x onerror=\"document.title='pwned'\">&amp;"


def live(port: int) -> dict:
    return json.loads(http(port, "/api/live?points=200"))


def beat(rclient, keys, cid: str, steps: int, model_id: int, dropped: int = 0) -> None:
    info = {"model_id": model_id, "steps": steps, "episodes": steps // 100, "time": time.time()}
    info.update(dropped=dropped, dropped_episodes=0, discarded=3)
    rclient.set(keys.heartbeat(cid), json.dumps(info), px=60_000)


def trainer(rclient, keys, loss: float, env_steps: int = 20_000) -> None:
    rclient.hset(
        keys.trainer_stats,
        mapping={
            "env_steps": env_steps,
            "model_id": 7,
            "loss": loss,
            "q_mean": 4.5,
            "epsilon": 0.05,
            "buffer": 5000,
            "updates": 321,
            "time": time.time(),
            "rejected_by_reason": json.dumps({"stale": 3, "bad_shape": 1}),
        },
    )


def dump(url: str, width: int, tmp_path: Path) -> str:
    args = [f"--window-size={width},1200", "--force-device-scale-factor=1", "--dump-dom", url]
    return run_chromium(args, tmp_path)


def text_of(dom: str, element_id: str) -> str:
    m = re.search(rf'id="{re.escape(element_id)}"[^>]*>([^<]*)<', dom)
    assert m, f"no #{element_id} in the page"
    return m.group(1)


def rows_of(dom: str, table_id: str) -> list[list[str]]:
    body = dom.split(f'id="{table_id}"')[1].split("<tbody>")[1].split("</tbody>")[0]
    rows = [row for row in body.split("</tr>") if "<td" in row]
    return [re.findall(r"<td[^>]*>([^<]*)</td>", row) for row in rows]


@pytest.mark.skipif(chromium() is None, reason="no chromium on PATH (apt-get install chromium)")
def test_live_page_shows_model_learner_progress_clients_and_rejects_at_desktop_and_phone_width(
    redis_server, rclient, keys, prefix, config_dir, procs, tmp_path
):
    run_dir, port = tmp_path / "run", free_port()
    run_dir.mkdir()
    extra = ("algo=dqn", "max_steps=100000", "target_return=30")
    node = start_node(procs, redis_server, config_dir, prefix, run_dir, port, *extra)
    wait_until(lambda: http_up(port), 30, f"HTTP up\n{read_log(node)}")
    trainer(rclient, keys, loss=0.0123)
    beat(rclient, keys, "c1", 1000, model_id=5, dropped=2)
    beat(rclient, keys, HOSTILE, 500, model_id=7)
    for i in range(1, 61):  # rising returns, newer models: best-model saves on the way
        cid = "c1" if i % 3 else HOSTILE
        rclient.xadd(keys.episodes, {"m": episode(cid, i, float(i % 20 + i / 2))})
        if i % 20 == 0:  # three batches: one best-model decision per batch
            wait_until(lambda i=i: live(port)["summary"]["episodes"] == i, 20, f"{i} records")
    rclient.xadd(keys.episodes, {"m": b"\x00garbage"})  # a reject of the telemetry node's own
    # a second reading of the trainer's stats and the heartbeats: a loss curve and steps/s
    wait_until(lambda: live(port)["clients"], 10, "the node read the heartbeats")
    trainer(rclient, keys, loss=0.0456, env_steps=20_600)
    beat(rclient, keys, "c1", 1600, model_id=5, dropped=2)

    def ready() -> dict | None:
        d = live(port)
        c1 = next((c for c in d["clients"] if c["id"] == "c1"), None)
        ok = c1 and c1["steps_per_s"] and len(d["learner_history"]["t"]) >= 2
        ok = ok and d["summary"]["env_steps"] == 20_600
        return d if ok and d["best_markers"] else None

    d = wait_until(ready, 20, f"heartbeats, learner curve and best markers\n{read_log(node)}")
    assert d["model"]["id"] == 7 and d["progress"]["max_steps"] == 100_000
    assert all(m["model_id"] is not None for m in d["best_markers"])
    url = f"http://127.0.0.1:{port}/"

    for width in (1400, 390):
        dom = dump(url, width, tmp_path)
        assert 'data-state="live"' in dom, dom[-2000:]
        assert 'data-overflow-x="false"' in dom, f"sideways scroll at {width} px"
        assert text_of(dom, "model-id") == "7"
        assert text_of(dom, "model-age").startswith("model, newest for ")
        assert text_of(dom, "learner-title") == "learner (dqn)"
        learner = {k: text_of(dom, f"learner-{k}") for k in ("loss", "q_mean", "epsilon")}
        assert learner == {"loss": "0.0456", "q_mean": "4.50", "epsilon": "0.0500"}
        assert text_of(dom, "learner-buffer") == "5000"
        assert text_of(dom, "learner-updates") == "321"
        progress = text_of(dom, "progress-text")
        assert progress.startswith("20.6% of 100.0k env steps \u00b7 ETA "), progress
        clients = {row[0]: row for row in rows_of(dom, "client-table")}
        hostile_text = HOSTILE.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        assert set(clients) == {"c1", hostile_text}, clients
        c1 = clients["c1"]
        assert c1[2] == "40" and c1[3].endswith(" ago") and c1[4] == "2" and c1[5] == "2"
        assert float(c1[1]) > 0  # steps/s from the two heartbeats
        assert clients[hostile_text][2] == "20" and clients[hostile_text][4] == "0"
        assert "<img" not in dom, dom[dom.index("<img") - 200 :][:400]  # the id stayed text
        assert "<title>soulsai telemetry</title>" in dom  # and ran no script
        rejects = {(r[0], r[1]): r[2] for r in rows_of(dom, "reject-table")}
        assert rejects == {
            ("bad_shape", "training"): "1",
            ("stale", "training"): "3",
            ("not_msgpack", "telemetry"): "1",
        }
        overflow = re.findall(r'data-tick-overflow="(-?\d+)"', dom)
        assert overflow and set(overflow) == {"0"}, "a tick label runs off its chart"

    desktop, phone = tmp_path / "page-1400.png", tmp_path / "page-390.png"
    for shot, size in ((desktop, "1400,1300"), (phone, "390,3000")):
        args = [f"--screenshot={shot}", f"--window-size={size}", "--force-device-scale-factor=1"]
        run_chromium([*args, url], tmp_path)
        assert line_pixels(shot) > 500, f"no return curve visible in {shot.name}"
    node.terminate()
    assert node.wait(20) == 0

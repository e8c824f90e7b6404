"""The telemetry node as a real process against a real Redis: files, HTTP, save_best, restarts
(of the node and of Redis), the port error, and the live page in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.client import HTTPConnection
from pathlib import Path

import numpy as np
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from soulsai.transport.episodes import EpisodeRecord, encode_episode
from tests.conftest import listen_address, node_args, read_log, telemetry_stats, wait_until

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_node(procs, redis_server, config_dir, prefix, run_dir, port=0, *extra, name="tel"):
    sets = {
        "telemetry.http_port": port,
        "telemetry.update_interval": 5,
        "telemetry.figure_interval": 0,
        "telemetry.moving_average": 5,
        "telemetry.best_interval": 5,
        "target_return": "null",
    }
    # The test Redis's config (save_dir is unused: the node writes into --run-dir).
    items = [*(f"{k}={v}" for k, v in sets.items()), *extra]
    where = node_args(redis_server, config_dir, prefix, run_dir, *items)
    args = ["node", "telemetry", *where, "--run-dir", str(run_dir)]
    return procs.start(*args, password=redis_server.password, name=name)


def episode(client: str, seq: int, ret: float, **info: float) -> bytes:
    rec = EpisodeRecord(client, seq // 10, ret, 10 + seq % 7, info, time.time(), seq)
    return encode_episode(rec)


def lines(run_dir: Path) -> list[dict]:
    path = run_dir / "episodes.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def http(
    port: int, path: str, body: dict | None = None, timeout: float = 5, token: str | None = None
) -> bytes:
    data = None if body is None else json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()


def http_up(port: int) -> bool:
    try:
        return b'"ok"' in http(port, "/grafana/")
    except OSError:
        return False


def summary_at(run_dir: Path, episodes: int) -> dict | None:
    summary = json.loads((run_dir / "summary.json").read_text())
    return summary if summary["episodes"] == episodes else None


def test_node_writes_files_serves_http_and_sends_save_best(
    redis_server, rclient, keys, prefix, config_dir, procs, tmp_path
):
    run_dir, port = tmp_path / "run", free_port()
    run_dir.mkdir()
    rclient.hset(keys.trainer_stats, mapping={"env_steps": 1234})
    node = start_node(procs, redis_server, config_dir, prefix, run_dir, port)
    wait_until(lambda: http_up(port), 30, f"HTTP up\n{read_log(node)}")
    for i in range(1, 41):
        rclient.xadd(keys.episodes, {"m": episode("c1", i, float(i), boss_hp=1 - i / 40)})
    rclient.xadd(keys.episodes, {"m": b"\x00garbage"})
    wait_until(lambda: len(lines(run_dir)) == 40, 20, f"40 records\n{read_log(node)}")
    recs = lines(run_dir)
    assert recs[0]["env_steps"] == 1234  # the first one starts from the training node's total
    steps = [r["env_steps"] for r in recs]  # then each adds its length
    assert list(np.diff(steps)) == [r["length"] for r in recs[1:]]
    rec = recs[-1]
    assert rec["episode"] == 40 and rec["return"] == 40.0
    assert rec["client_id"] == "c1" and rec["client_episode"] == 40
    assert {"length", "model_id", "time", "wall_time", "stream_id", "info.boss_hp"} <= set(rec)
    png = run_dir / "telemetry.png"
    wait_until(png.exists, 10, "telemetry.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    wait_until(lambda: telemetry_stats(rclient, keys).get("rejected") == "1", 10, "garbage counted")
    summary = wait_until(lambda: summary_at(run_dir, 40), 10, "summary.json")
    assert summary["best_rolling_return"] == 38.0
    s = telemetry_stats(rclient, keys)
    assert s["episodes"] == "40" and s["missing"] == "0" and s["rolling_return"] == "38.0"
    # save_best: a rising curve, at most one command per best_interval (5) episodes
    cmds = [json.loads(c) for c in reversed(rclient.lrange(keys.trainer_commands, 0, -1))]
    assert cmds and all(c["cmd"] == "save_best" and c["key"] == "return" for c in cmds)
    episodes_sent = [c["episode"] for c in cmds]
    assert all(b - a >= 5 for a, b in zip(episodes_sent, episodes_sent[1:], strict=False))
    assert [c["value"] for c in cmds] == sorted(c["value"] for c in cmds)
    # real HTTP: the Grafana source, the JSON API and /metrics
    target = {"target": "return_avg", "refId": "A", "payload": {"aggregate": "last"}}
    q = {"targets": [target], "maxDataPoints": 10}
    (series,) = json.loads(http(port, "/grafana/query", q))
    assert len(series["datapoints"]) == 10 and series["datapoints"][-1][0] == 38.0
    assert "info.boss_hp_avg" in json.loads(http(port, "/grafana/search", {"target": "boss"}))
    rows = json.loads(http(port, "/api/series?keys=return,length_avg&max_points=1000"))
    assert len(rows) == 40 and rows[-1]["episode"] == 40
    fams = {f.name: f for f in text_string_to_metric_families(http(port, "/metrics").decode())}
    assert fams["soulsai_telemetry_episodes"].samples[0].value == 40
    assert fams["soulsai_telemetry_best_rolling_return"].samples[0].value == 38.0
    rejected = {s.labels["reason"]: s.value for s in fams["soulsai_telemetry_rejected"].samples}
    assert rejected["not_msgpack"] == 1 and rejected["out_of_range"] == 0  # every reason, from 0
    node.terminate()
    assert node.wait(20) == 0


def test_kill_9_and_restart_mid_stream_loses_and_duplicates_nothing(
    redis_server, rclient, keys, prefix, config_dir, procs, tmp_path
):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    extra = ("telemetry.update_interval=7",)  # records read but not yet written when killed
    node = start_node(procs, redis_server, config_dir, prefix, run_dir, 0, *extra)
    clients = ("a", "b", "c")
    kills_done = threading.Event()
    pushed: list[int] = []

    def push() -> None:  # three clients, each numbering its episodes, until the kills are over
        i, rounds_after = 0, 30
        while rounds_after > 0:
            i += 1
            for c in clients:
                rclient.xadd(keys.episodes, {"m": episode(c, i, float(i))})
            rounds_after -= kills_done.is_set()
            time.sleep(0.02)  # the pace of the traffic, not a wait
        pushed.append(i * len(clients))

    pusher = threading.Thread(target=push)
    pusher.start()
    try:
        for _ in range(2):  # kill -9 twice while records keep coming
            n = len(lines(run_dir))
            wait_until(lambda n=n: len(lines(run_dir)) > n + 30, 60, "progress")
            node.send_signal(signal.SIGKILL)
            node.wait(10)
            node = start_node(procs, redis_server, config_dir, prefix, run_dir, 0, *extra)
    finally:
        kills_done.set()
        pusher.join()
    # Records kept coming through both kills: each kill waited for 30 new lines, and the pusher
    # goes on for 30 rounds after the last (a count of rounds here only measured machine speed).
    (total,) = pushed
    wait_until(lambda: len(lines(run_dir)) >= total, 30, f"all records\n{read_log(node)}")
    wait_until(lambda: "telemetry node up" in read_log(node), 10, "the last node's start")
    node.terminate()
    assert node.wait(20) == 0
    recs = lines(run_dir)
    assert len(recs) == total  # none lost, none twice
    assert len({(r["client_id"], r["client_episode"]) for r in recs}) == total
    assert [r["episode"] for r in recs] == list(range(1, total + 1))
    assert telemetry_stats(rclient, keys)["missing"] == "0"
    assert summary_at(run_dir, total)


def test_replaced_redis_with_lower_stream_ids_is_read_from_the_start_without_duplicates(
    redis_server, rclient, keys, prefix, config_dir, procs, tmp_path
):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    future_ms = int(time.time() * 1000) + 10**9  # the old server's clock was 11 days ahead
    old = [episode("a", i, float(i)) for i in range(1, 21)]
    for i, blob in enumerate(old):
        rclient.xadd(keys.episodes, {"m": blob}, id=f"{future_ms}-{i}")
    node = start_node(procs, redis_server, config_dir, prefix, run_dir)
    wait_until(lambda: len(lines(run_dir)) == 20, 20, f"first 20\n{read_log(node)}")
    # "Redis replaced by one restored from an older snapshot": the stream holds the first 10
    # records again (ids from the new server's clock, below the node's cursor), then new ones
    rclient.delete(keys.episodes)
    for blob in old[:10]:
        rclient.xadd(keys.episodes, {"m": blob})
    for i in range(21, 36):
        rclient.xadd(keys.episodes, {"m": episode("a", i, float(i))})
    wait_until(lambda: len(lines(run_dir)) == 35, 20, f"15 new records\n{read_log(node)}")
    assert "reading it from the start" in read_log(node)
    wait_until(
        lambda: telemetry_stats(rclient, keys).get("duplicates") == "10", 10, "duplicates counted"
    )
    assert telemetry_stats(rclient, keys)["missing"] == "0"
    # a restart now continues after the last record on disk (a position in the new stream)
    node.terminate()
    assert node.wait(20) == 0
    node = start_node(procs, redis_server, config_dir, prefix, run_dir)
    for i in range(36, 41):
        rclient.xadd(keys.episodes, {"m": episode("a", i, float(i))})
    wait_until(lambda: len(lines(run_dir)) == 40, 20, f"5 more\n{read_log(node)}")
    # one more record, read after all before it: anything written twice would come first
    rclient.xadd(keys.episodes, {"m": episode("a", 41, 41.0)})
    wait_until(lambda: len(lines(run_dir)) >= 41, 20, f"the last one\n{read_log(node)}")
    recs = lines(run_dir)
    assert [r["client_episode"] for r in recs] == list(range(1, 42))


def test_busy_http_port_is_a_one_line_config_error(
    redis_server, prefix, config_dir, procs, tmp_path
):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        node = start_node(procs, redis_server, config_dir, prefix, tmp_path, port)
        assert node.wait(30) == 2
    out = read_log(node).strip()
    assert "Traceback" not in out and f"telemetry.http_port={port}" in out, out
    assert len(out.splitlines()) == 1


def post_declaring(port: int, length: int) -> bytes:
    """The status line the node answers to a POST that declares `length` bytes and sends none."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        head = (
            f"POST /grafana/query HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n"
        )
        s.sendall(head.encode())
        return s.recv(4096).split(b"\r\n")[0]


def post_streaming(port: int, total: int) -> int | None:
    """POST a JSON body of about `total` bytes, chunked (no Content-Length); the status, or None
    when the node hung up mid-body."""
    piece = b'{"target": "x"},' * 4096

    def body():
        yield b'{"targets": ['
        for _ in range(total // len(piece)):
            yield piece
        yield b"{}]}"

    conn = HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/grafana/query", body=body(), encode_chunked=True)
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


def test_regex_and_huge_bodies_neither_freeze_nor_bloat_the_node(
    redis_server, rclient, keys, prefix, config_dir, procs, tmp_path
):
    """Issue 15: a 45-byte query with a catastrophic regex froze HTTP, /metrics and the
    episode intake for a minute (Python's re holds the GIL), a 54 MB body took the node to
    20 GB. Now the regex is a name that matches nothing, and bodies over 1 MiB get 413."""
    run_dir, port = tmp_path / "run", free_port()
    run_dir.mkdir()
    node = start_node(procs, redis_server, config_dir, prefix, run_dir, port)
    wait_until(lambda: http_up(port), 30, f"HTTP up\n{read_log(node)}")
    assert listen_address(port) == "127.0.0.1"  # loopback unless telemetry.http_host says
    for i in range(1, 11):
        rclient.xadd(keys.episodes, {"m": episode("c1", i, float(i))})
    wait_until(lambda: len(lines(run_dir)) == 10, 20, f"10 records\n{read_log(node)}")
    rss_before = psutil.Process(node.pid).memory_info().rss
    evil = {"targets": [{"target": "(((\\w*)*)*)*!", "refId": "A"}]}
    evil_filter = {
        "targets": [{"target": "return"}],
        "adhocFilters": [{"key": "client_id", "operator": "=~", "value": "(((\\w*)*)*)*!"}],
    }
    answers: list[bytes | Exception] = []

    def attack(body: dict) -> None:
        try:
            answers.append(http(port, "/grafana/query", body, timeout=10))
        except OSError as e:  # a timeout: the request hung (as every one did before)
            answers.append(e)

    attackers = [threading.Thread(target=attack, args=(b,)) for b in (evil, evil_filter) * 2]
    for t in attackers:
        t.start()
    for i in range(11, 41):  # episodes keep being consumed meanwhile
        rclient.xadd(keys.episodes, {"m": episode("c1", i, float(i))})
    wait_until(lambda: len(lines(run_dir)) == 40, 20, f"intake went on\n{read_log(node)}")
    for t in attackers:
        t.join(15)
    assert len(answers) == 4 and all(isinstance(a, bytes) for a in answers), answers
    assert all(s["datapoints"] == [] for a in answers for s in json.loads(a))  # no match
    # 54 MB: refused from its Content-Length, unread; then streamed without one, cut off
    assert b" 413 " in post_declaring(port, 54_000_000)
    assert post_streaming(port, 54_000_000) in (413, None)
    assert http_up(port)
    grown = psutil.Process(node.pid).memory_info().rss - rss_before
    assert grown < 200 * 2**20, f"RSS grew by {grown / 2**20:.0f} MiB"
    node.terminate()
    assert node.wait(20) == 0


def test_token_file_guards_the_grafana_routes(redis_server, prefix, config_dir, procs, tmp_path):
    (config_dir / "telemetry.secret").write_text("")
    node = start_node(procs, redis_server, config_dir, prefix, tmp_path, free_port())
    assert node.wait(30) == 2  # an empty token file is a config error, not an open server
    out = read_log(node).strip()
    assert "telemetry.secret" in out and len(out.splitlines()) == 1, out
    (config_dir / "telemetry.secret").write_text("grafana-reads-this-token\n")
    port = free_port()
    node = start_node(procs, redis_server, config_dir, prefix, tmp_path, port)
    wait_until(lambda: http_summary(port), 30, f"HTTP up\n{read_log(node)}")
    with pytest.raises(urllib.error.HTTPError) as err:
        http(port, "/grafana/")
    assert err.value.code == 401
    assert b'"ok"' in http(port, "/grafana/", token="grafana-reads-this-token")
    node.terminate()
    assert node.wait(20) == 0


def http_summary(port: int) -> bool:
    try:
        return "episodes" in json.loads(http(port, "/api/summary"))
    except OSError:
        return False


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(chromium() is None, reason="no chromium on PATH (apt-get install chromium)")
def test_live_page_draws_the_curve_in_headless_chromium(
    redis_server, rclient, keys, prefix, config_dir, procs, tmp_path
):
    run_dir, port = tmp_path / "run", free_port()
    run_dir.mkdir()
    node = start_node(procs, redis_server, config_dir, prefix, run_dir, port)
    wait_until(lambda: http_up(port), 30, f"HTTP up\n{read_log(node)}")
    for i in range(1, 61):
        if i % 10 == 1:  # the training node's step count moves on between batches
            rclient.hset(keys.trainer_stats, mapping={"env_steps": 500 * i})
            steps = 500 * i
            wait_until(
                lambda steps=steps: json.loads(http(port, "/api/summary"))["env_steps"] == steps,
                20,
                "the node read the training node's step count",
            )
        rclient.xadd(keys.episodes, {"m": episode("c1", i, float(i % 20 * i))})
    wait_until(lambda: json.loads(http(port, "/api/summary"))["episodes"] == 60, 20, "records")
    url = f"http://127.0.0.1:{port}/"
    dom = run_chromium(["--dump-dom", url], tmp_path)
    assert 'data-state="live"' in dom, dom[-2000:]
    drawn = int(dom.split('id="points">')[1].split("<")[0])
    assert drawn >= 120  # return and length panels, raw and mean, 60 episodes each
    assert 'id="episodes">60<' in dom and 'id="last-return">0<' in dom  # 60 % 20 * 60 == 0
    shot = tmp_path / "page.png"
    run_chromium([f"--screenshot={shot}", "--window-size=1200,900", url], tmp_path)
    assert line_pixels(shot) > 500, "no curve visible in the screenshot"


def run_chromium(args: list[str], tmp_path: Path) -> str:
    profile = tempfile.mkdtemp(dir=tmp_path, prefix="chromium-")
    cmd = [
        str(chromium()),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
        *args,
    ]
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=90, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def line_pixels(png: Path) -> int:
    """Pixels in the return panel's curve colour (#1f77b4) in a screenshot."""
    import matplotlib.image as mpimg
    import numpy as np

    img = (mpimg.imread(png)[..., :3] * 255).round().astype(int)
    return int((np.abs(img - np.array([0x1F, 0x77, 0xB4])).sum(axis=-1) < 40).sum())

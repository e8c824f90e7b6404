"""PPO's iteration protocol with a real Redis and real processes: on-policy samples only,
clients that die or join late never stall training, and a short end-to-end run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from soulsai.transport.envelope import encode_experience
from tests.conftest import node_args, read_log, trainer_stats, wait_until

pytestmark = pytest.mark.integration
PIPE = {"capture_output": True, "text": True}


def _args(redis_server, config_dir: Path, prefix: str, tmp_path: Path, **ppo) -> list[str]:
    return node_args(
        redis_server,
        config_dir,
        prefix,
        tmp_path,
        "algo=ppo",
        "training.log_interval=1.0",
        "ppo.update_epochs=2",
        **{f"ppo.{k}": v for k, v in ppo.items()},
    )


def _model(rclient, keys) -> int:
    raw = rclient.get(keys.model_id)
    return -1 if raw is None else int(raw)


def _fragment(model_id: int, n: int = 32, seed: int = 0) -> bytes:
    """One CartPole fragment of n steps, as a client would send it."""
    rng = np.random.default_rng(seed)
    last = np.zeros(n, np.uint8)
    last[-1] = 1
    value = rng.normal(size=n).astype(np.float32)
    fields = {
        "obs": rng.normal(size=(n, 4)).astype(np.float32),
        "action": rng.integers(0, 2, n).astype(np.int64),
        "reward": np.ones(n, np.float32),
        "terminated": np.zeros(n, np.uint8),
        "truncated": np.zeros(n, np.uint8),
        "last": last,
        "logprob": np.full(n, np.log(0.5), np.float32),
        "value": value,
        "next_value": np.append(value[1:], 0.0).astype(np.float32),
        "disc_return": np.arange(1, n + 1, dtype=np.float32),
    }
    return encode_experience("tester", model_id, fields)


def _rejected(rclient, keys) -> dict[str, int]:
    return json.loads(trainer_stats(rclient, keys).get("rejected_by_reason", "{}"))


def test_iteration_trains_on_target_of_current_model_and_rejects_others(
    redis_server, rclient, keys, prefix, config_dir, procs, tmp_path
):
    args = _args(redis_server, config_dir, prefix, tmp_path, n_steps_total=96)
    node = procs.start("node", "training", *args, password=redis_server.password, name="ppo")
    wait_until(lambda: _model(rclient, keys) == 0, 60, f"model 0\n{read_log(node)}")
    rclient.lpush(keys.samples, _fragment(0), _fragment(0, seed=1))
    wait_until(lambda: trainer_stats(rclient, keys).get("collected") == "64", 10, "64 collected")
    assert _model(rclient, keys) == 0  # 64 < 96: no training yet
    rclient.lpush(keys.samples, _fragment(0, seed=2))
    wait_until(lambda: _model(rclient, keys) == 1, 20, "model 1 after 96 transitions")
    s = wait_until(
        lambda: (s := trainer_stats(rclient, keys))["iterations"] == "1" and s, 5, "stats"
    )
    assert s["accepted"] == "96" and int(s["updates"]) > 0
    rclient.lpush(keys.samples, _fragment(0), _fragment(7))  # older and future model ids
    want = {"stale_model": 32, "future_model": 1}
    wait_until(lambda: _rejected(rclient, keys) == want, 10, f"rejections {want}")
    assert trainer_stats(rclient, keys)["collected"] == "0" and node.poll() is None


def test_lost_clients_train_on_min_fraction_else_wait_and_say_why(
    redis_server, rclient, keys, prefix, config_dir, procs, tmp_path
):
    args = _args(
        redis_server,
        config_dir,
        prefix,
        tmp_path,
        n_steps_total=100,
        client_timeout=1.0,
        min_fraction=0.5,
    )
    node = procs.start("node", "training", *args, password=redis_server.password, name="ppo")
    wait_until(lambda: _model(rclient, keys) == 0, 60, f"model 0\n{read_log(node)}")
    rclient.lpush(keys.samples, _fragment(0), _fragment(0, seed=1))  # 64 >= 50
    wait_until(lambda: _model(rclient, keys) == 1, 10, "training on 64 of 100 after silence")
    assert "training on 64 of 100 transitions" in read_log(node)
    rclient.lpush(keys.samples, _fragment(1))  # 32 < 50: keep waiting, and say why
    waiting = wait_until(
        lambda: trainer_stats(rclient, keys).get("waiting"), 10, "a waiting reason"
    )
    assert "32/100" in waiting and "min_fraction" in waiting
    assert _model(rclient, keys) == 1
    wait_until(lambda: "waiting for samples" in read_log(node), 10, "the reason in the log")
    rclient.lpush(keys.samples, _fragment(1, seed=3))  # 64 now
    wait_until(lambda: _model(rclient, keys) == 2, 10, "training once enough arrived")
    assert trainer_stats(rclient, keys)["waiting"] == ""


def _heartbeats(rclient, keys) -> dict[str, dict]:
    out = {}
    for k in rclient.scan_iter(match=keys.heartbeat_pattern):
        out[k.decode().rsplit(":", 1)[1]] = json.loads(rclient.get(k) or b"{}")
    return out


def test_killed_and_late_clients_do_not_stall_iterations(
    redis_server, rclient, keys, prefix, config_dir, procs, tmp_path
):
    # client_timeout is long: if training waited for the dead client, the test would time out.
    args = _args(
        redis_server,
        config_dir,
        prefix,
        tmp_path,
        n_steps_total=128,
        fragment_length=16,
        client_timeout=120.0,
    )
    node = procs.start("node", "training", *args, password=redis_server.password, name="ppo")

    def client(name: str):
        return procs.start(
            "client", *args, "--client-id", name, password=redis_server.password, name=name
        )

    a, b = client("a"), client("b")

    def iterations() -> int:
        return int(trainer_stats(rclient, keys).get("iterations") or 0)

    wait_until(lambda: iterations() >= 3, 60, f"first iterations\n{read_log(node)}")
    a.kill()  # SIGKILL, mid-iteration: iterations are a few ms apart
    a.wait(10)
    start, b_steps = iterations(), _heartbeats(rclient, keys)["b"]["steps"]
    wait_until(lambda: iterations() >= start + 5, 30, "iterations after a client died")
    wait_until(lambda: _heartbeats(rclient, keys)["b"]["steps"] > b_steps, 10, "b sampling")
    c = client("c")  # joins late and samples with the current model

    def c_current():
        hb = _heartbeats(rclient, keys).get("c", {})
        return hb.get("steps", 0) > 0 and hb.get("model_id", -1) >= start + 5

    wait_until(c_current, 60, f"late client on a current model\n{read_log(c)}")
    start = iterations()
    wait_until(lambda: iterations() >= start + 5, 30, "iterations with the late client")
    wait_until(lambda: "a" not in _heartbeats(rclient, keys), 15, "a's heartbeat to expire")
    assert node.poll() is None and b.poll() is None and c.poll() is None
    assert set(_rejected(rclient, keys)) <= {"stale_model"}  # only the race at a batch's close


@pytest.mark.slow
def test_soulsai_train_ppo_learns_cartpole_after_losing_a_client(tmp_path):
    """End to end; `soulsai train` keeps training when one of its clients is SIGKILLed."""
    save = tmp_path / "saves"
    cmd = [sys.executable, "-m", "soulsai", "train", "--algo", "ppo", "--save-dir", str(save)]
    cmd += ["--max-steps", "100000", "--target-return", "400", "--no-progress"]
    cmd += ["--redis", "embedded", "--set", "training.metrics_port=0"]
    cmd += ["--set", "telemetry.http_port=0"]
    out = tmp_path / "train.out"
    with open(out, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:

        def client_pids() -> list[int]:
            ps = subprocess.run(["pgrep", "-P", str(proc.pid), "-f", "soulsai client"], **PIPE)
            return [int(x) for x in ps.stdout.split()]

        def sampling() -> bool:
            logs = list(save.glob("*/logs/client-*.log"))
            return len(logs) == 2 and all("sampling" in p.read_text() for p in logs)

        wait_until(sampling, 60, "two sampling clients")
        victim = client_pids()[-1]
        os.kill(victim, signal.SIGKILL)
        assert proc.wait(240) == 0, out.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "client-1 exited with code -9" in " ".join(out.read_text().split())
    (run,) = save.iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["solved"] is True, summary
    lines = (run / "episodes.jsonl").read_text().splitlines()
    assert len(lines) == summary["episodes"] and "model_id" in json.loads(lines[-1])
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["algo"] == "ppo" and state["iterations"] > 0 and state["env_steps"] > 0

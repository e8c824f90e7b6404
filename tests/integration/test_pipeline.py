"""client -> Redis -> training node -> weights -> client, with real processes and a real Redis."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from soulsai.transport.envelope import encode_experience
from tests.conftest import node_args, read_log, trainer_stats, wait_until

pytestmark = pytest.mark.integration


def _node_args(redis_server, config_dir: Path, prefix: str, tmp_path: Path, *extra: str):
    """The test stack's arguments, then `extra` ("--set", "key=value" pairs)."""
    return [*node_args(redis_server, config_dir, prefix, tmp_path), *extra]


def _envelope(model_id: int, n: int = 8, **override) -> bytes:
    rng = np.random.default_rng(0)
    fields = {
        "obs": rng.normal(size=(n, 4)).astype(np.float32),
        "action": rng.integers(0, 2, n).astype(np.int64),
        "reward": np.ones(n, np.float32),
        "next_obs": rng.normal(size=(n, 4)).astype(np.float32),
        "terminated": np.zeros(n, np.uint8),
        "steps": np.ones(n, np.uint8),
    }
    fields.update(override)
    return encode_experience("tester", model_id, fields)


def test_client_trainer_broadcast_and_hot_swap(
    redis_server, rclient, keys, prefix, config_dir, procs, tmp_path
):
    args = _node_args(
        redis_server,
        config_dir,
        prefix,
        tmp_path,
        "--set",
        "dqn.learning_starts=200",
        "--set",
        "dqn.update_samples=128",
    )
    trainer = procs.start("node", "training", *args, password=redis_server.password, name="trainer")
    client = procs.start(
        "client", *args, "--client-id", "c1", password=redis_server.password, name="client"
    )

    def progressed():
        s = trainer_stats(rclient, keys)
        return int(s.get("updates", 0)) > 20 and int(s.get("model_id", 0)) >= 3 and s

    stats = wait_until(progressed, 60, f"training progress\n{read_log(trainer)}")
    assert int(stats["accepted"]) > 200
    assert json.loads(stats["rejected_by_reason"]) == {}
    # The client hot-swapped to a newer model: its heartbeat reports the model it samples with.
    wait_until(
        lambda: json.loads(rclient.get(keys.heartbeat("c1")) or b"{}").get("model_id", 0) >= 2,
        30,
        "client to use a newer model",
    )
    # The effective config is published for clients that only know the Redis address.
    published = json.loads(rclient.get(keys.config))
    assert published["key_prefix"] == prefix and published["env"]["id"] == "CartPole-v1"
    # Episodes reach the stream with a cursor position, not fire-and-forget pub/sub.
    wait_until(lambda: rclient.xlen(keys.episodes) > 0, 30, "episode records")
    assert client.poll() is None and trainer.poll() is None
    client.terminate()
    assert client.wait(20) == 0
    wait_until(lambda: not rclient.exists(keys.heartbeat("c1")), 10, "heartbeat removal/expiry")


def test_stale_future_and_garbage_are_counted_and_node_survives(
    redis_server, rclient, keys, prefix, config_dir, procs, tmp_path
):
    args = _node_args(
        redis_server,
        config_dir,
        prefix,
        tmp_path,
        "--set",
        "dqn.update_samples=8",
        "--set",
        "dqn.max_model_delay=1",
        "--set",
        "dqn.learning_starts=8",
        "--set",
        "dqn.batch_size=8",
    )
    trainer = procs.start("node", "training", *args, password=redis_server.password, name="trainer")
    wait_until(lambda: rclient.get(keys.model_id) is not None, 60, "first weights")
    for _ in range(4):  # each accepted batch of 8 advances the model id by one
        mid = int(rclient.get(keys.model_id))
        rclient.lpush(keys.samples, _envelope(mid))
        wait_until(lambda m=mid: int(rclient.get(keys.model_id)) > m, 10, "model id to advance")
    newest = int(rclient.get(keys.model_id))
    assert newest >= 4
    rclient.lpush(keys.samples, _envelope(0))  # lags by more than max_model_delay
    rclient.lpush(keys.samples, _envelope(newest + 1000))  # forged future id
    rclient.lpush(keys.samples, b"\x00garbage\xff" * 10)
    rclient.lpush(keys.samples, _envelope(newest, reward=np.full(8, np.nan, np.float32)))
    rclient.lpush(keys.samples, _envelope(newest, action=np.full(8, 7, np.int64)))
    rclient.lpush(keys.trainer_commands, b'{"cmd": "format_disk"}')

    def counted():
        r = json.loads(trainer_stats(rclient, keys).get("rejected_by_reason", "{}"))
        want = {
            "stale_model",
            "future_model",
            "not_msgpack",
            "non_finite",
            "out_of_range",
            "command_unknown_command",
        }
        return want <= set(r) and r

    rejected = wait_until(counted, 20, "rejections to be counted")
    assert rejected["stale_model"] == 8  # counted in transitions
    assert trainer.poll() is None, read_log(trainer)
    accepted_before = int(trainer_stats(rclient, keys)["accepted"])
    rclient.lpush(keys.samples, _envelope(int(rclient.get(keys.model_id))))
    wait_until(
        lambda: int(trainer_stats(rclient, keys)["accepted"]) > accepted_before,
        10,
        "a good message after the garbage to be accepted",
    )


def test_wrong_password_and_unreachable_are_one_line(
    redis_server, config_dir, prefix, tmp_path, procs
):
    base = ["client", *node_args(redis_server, config_dir, prefix, tmp_path)]
    p = procs.start(*base, password="wrong", name="wrongpw")
    assert p.wait(60) == 1
    out = read_log(p).strip()
    assert "Traceback" not in out and len(out.splitlines()) == 1
    assert "refused the password" in out

    p = procs.start(
        *base, "--set", "redis_port=1", "--set", "connect_wait=1", password="x", name="unreachable"
    )
    assert p.wait(120) == 1
    out = read_log(p).strip()
    assert "Traceback" not in out and "cannot reach Redis at 127.0.0.1:1" in out


def test_weights_on_the_wire_are_safetensors_not_pickle(
    redis_server, rclient, keys, prefix, config_dir, procs, tmp_path
):
    args = _node_args(redis_server, config_dir, prefix, tmp_path)
    procs.start("node", "training", *args, password=redis_server.password, name="trainer")
    blob = wait_until(lambda: rclient.get(keys.weights), 60, "weights")
    header_len = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + header_len])
    assert header["__metadata__"]["model_id"] == "0"
    assert "mlp.1.weight" in header and header["mlp.1.weight"]["dtype"] == "F32"
    assert not blob.startswith(b"\x80")  # no pickle protocol marker


@pytest.mark.slow
def test_soulsai_train_learns_cartpole(tmp_path):
    """End to end: the one-command local run reaches a modest return in bounded time."""
    save = tmp_path / "saves"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "soulsai",
            "train",
            "--save-dir",
            str(save),
            "--max-steps",
            "120000",
            "--target-return",
            "150",
            "--no-progress",
            "--redis",
            "embedded",
            "--set",
            "training.metrics_port=0",
            "--set",
            "telemetry.http_port=0",
        ],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (run,) = save.iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["solved"] is True, summary
    assert summary["best_rolling_return"] >= 150
    for name in ("config.json", "episodes.jsonl", "telemetry.png", "checkpoint/state.json"):
        assert (run / name).exists(), name
    lines = (run / "episodes.jsonl").read_text().splitlines()
    rec = json.loads(lines[-1])
    for key in ("episode", "return", "length", "env_steps", "model_id", "client_id", "time"):
        assert key in rec
    assert len(lines) == summary["episodes"]
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["env_steps"] > 0 and state["updates"] > 0
    # nothing left running: the embedded redis and all children are gone
    ps = subprocess.run(["pgrep", "-f", str(save)], capture_output=True, text=True)
    assert ps.stdout.strip() == ""


def test_client_survives_env_crashes(
    redis_server, rclient, keys, prefix, config_dir, procs, tmp_path
):
    """A client whose env raises logs it, recreates the env and carries on sampling."""
    from tests.conftest import ROOT

    args = _node_args(
        redis_server,
        config_dir,
        prefix,
        tmp_path,
        "--set",
        "env.id=CrashyCartPole-v0",
        "--set",
        "env.imports=[tests.envs.crashy]",
        "--set",
        "client.env_retry_backoff=0.05",
    )
    env = {"PYTHONPATH": str(ROOT)}
    trainer = procs.start(
        "node", "training", *args, password=redis_server.password, name="trainer", extra_env=env
    )
    client = procs.start(
        "client",
        *args,
        "--client-id",
        "crashy",
        password=redis_server.password,
        name="client",
        extra_env=env,
    )
    wait_until(
        lambda: read_log(client).count("recreating it") >= 3,
        60,
        f"three env crashes\n{read_log(client)}\n{read_log(trainer)}",
    )
    episodes = rclient.xlen(keys.episodes)
    wait_until(lambda: rclient.xlen(keys.episodes) > episodes + 5, 30, "episodes after crashes")
    assert client.poll() is None and trainer.poll() is None
    assert "the game crashed" in read_log(client)

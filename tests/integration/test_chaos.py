"""Chaos: train CartPole DQN while killing a client, restarting Redis and injecting garbage.

Real processes (training node, telemetry node, two clients) against a real redis-server that
the test restarts (no persistence) mid-run. Passes when no node died, the run kept learning
(the later returns beat the early ones) and every injected message was counted, not fatal.
The summary of what was injected and counted is printed and written to chaos-report.txt.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import redis

from soulsai.transport.embedded import EmbeddedRedis
from soulsai.transport.envelope import encode_experience
from soulsai.transport.keys import Keys
from tests.conftest import node_args, read_hash, read_log, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEADLINE = 150.0  # seconds for the whole scenario
CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


def _returns(run_dir: Path) -> list[float]:
    path = run_dir / "episodes.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["return"] for line in path.read_text().splitlines() if line]


def _garbage(r: redis.Redis, keys: Keys) -> dict[str, int]:
    """Push hostile input to every key and channel a node reads; returns what was sent."""
    sent = {"samples": 0, "episodes": 0, "trainer_commands": 0, "channels": 0, "heartbeats": 0}
    rng = np.random.default_rng(7)
    bad = [
        b"",
        rng.bytes(300),
        b"\x81\xa1v\x02",  # msgpack {"v": 2}
        encode_experience("evil", 10**12, {"obs": np.zeros((2, 4), np.float32)}),
        encode_experience(
            "evil",
            0,
            {
                "obs": np.full((2, 4), np.nan, np.float32),
                "action": np.zeros(2, np.int64),
                "reward": np.zeros(2, np.float32),
                "next_obs": np.zeros((2, 4), np.float32),
                "terminated": np.zeros(2, np.uint8),
                "steps": np.ones(2, np.uint8),
            },
        ),
        b"\x00" * (17 << 20),  # over max_message_bytes
    ]
    for blob in bad:
        r.lpush(keys.samples, blob)
        sent["samples"] += 1
    for blob in (b"junk", b"\x81\xa1v\x01", b"x" * (10 << 20)):
        r.xadd(keys.episodes, {"m": blob})
        sent["episodes"] += 1
    r.xadd(keys.episodes, {"other": b"field"})
    sent["episodes"] += 1
    for blob in (b"{", b'{"cmd": "rm -rf"}', b"[1,2]", rng.bytes(64)):
        r.lpush(keys.trainer_commands, blob)
        sent["trainer_commands"] += 1
    for channel in (keys.commands, keys.model_channel):
        for blob in (b"\xff\xfe", b'{"cmd": 1}', b"99999999999999999999"):
            r.publish(channel, blob)
            sent["channels"] += 1
    r.set(keys.heartbeat("evil"), b"[not a dict", px=2000)
    sent["heartbeats"] += 1
    return sent


def test_training_survives_client_kill_redis_restart_and_garbage(procs, tmp_path):
    port_holder = EmbeddedRedis().start()
    port, password = port_holder.port, port_holder.password
    keys = Keys("soulsai")
    r = redis.Redis(host="127.0.0.1", port=port, password=password)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    sets = ("client.heartbeat_timeout=3", "checkpoint.every=0", "connect_wait=60")
    args = node_args(port_holder, CONFIG_DIR, keys.prefix, tmp_path, *sets)
    log: list[str] = []
    t_start = time.monotonic()
    try:
        trainer = procs.start(
            "node", "training", *args, "--run-dir", str(run_dir), password=password, name="trainer"
        )
        telemetry = procs.start(
            "node",
            "telemetry",
            *args,
            "--run-dir",
            str(run_dir),
            password=password,
            name="telemetry",
        )
        clients = [
            procs.start(
                "client", *args, "--client-id", f"c{i}", password=password, name=f"client{i}"
            )
            for i in range(2)
        ]
        wait_until(lambda: len(_returns(run_dir)) >= 20, 60, f"first episodes\n{read_log(trainer)}")
        early = float(np.mean(_returns(run_dir)[:20]))
        log.append(f"first 20 episodes: mean return {early:.1f}")

        sent = _garbage(r, keys)
        log.append(f"garbage injected: {sent}")

        os.kill(clients[0].pid, signal.SIGKILL)
        clients[0].wait()
        log.append("client c0 killed with SIGKILL")
        wait_until(lambda: not r.exists(keys.heartbeat("c0")), 10, "c0 heartbeat to expire")
        log.append("c0 heartbeat expired")
        clients.append(
            procs.start("client", *args, "--client-id", "c2", password=password, name="client2")
        )
        wait_until(lambda: r.exists(keys.heartbeat("c2")), 30, "replacement client to join")
        log.append("replacement client c2 joined")

        accepted_before = int(read_hash(r, keys.trainer_stats).get("accepted", 0))
        port_holder.stop()
        episodes_before = len(_returns(run_dir))
        log.append(f"redis stopped (accepted so far {accepted_before}, {episodes_before} episodes)")
        time.sleep(2.0)  # Redis stays down a while: riding out the outage is what is tested
        port_holder = EmbeddedRedis(port=port, password=password).start()
        r = redis.Redis(host="127.0.0.1", port=port, password=password)
        log.append("redis restarted empty on the same port")
        wait_until(
            lambda: r.exists(keys.config) and r.exists(keys.weights),
            30,
            "config and weights published again",
        )
        log.append("training node published config and weights again")
        wait_until(
            lambda: (
                int(read_hash(r, keys.trainer_stats).get("accepted", 0)) > accepted_before + 2000
            ),
            60,
            "samples to flow again after the restart",
        )
        log.append("samples flow again")

        def learned() -> bool:
            rets = _returns(run_dir)
            return (  # ... and on after the restart: the telemetry node saw it through too
                len(rets) >= max(60, episodes_before + 20)
                and float(np.mean(rets[-20:])) > max(early * 2, 100.0)
            )

        remaining = DEADLINE - (time.monotonic() - t_start)
        wait_until(learned, max(remaining, 10), "the return to rise")
        rets = _returns(run_dir)
        log.append(f"last 20 episodes: mean return {np.mean(rets[-20:]):.1f} ({len(rets)} total)")

        trainer_stats = read_hash(r, keys.trainer_stats)
        rejected = json.loads(trainer_stats.get("rejected_by_reason", "{}"))
        log.append(f"training node rejected (since its start): {rejected}")
        wait_until(  # published with the next batch of records or the next system sample
            lambda: read_hash(r, keys.telemetry_stats).get("rejected") is not None,
            30,
            "telemetry stats on the restarted Redis",
        )
        tel = read_hash(r, keys.telemetry_stats)
        log.append(f"telemetry node rejected: {tel.get('rejected')}")
        assert trainer.poll() is None, read_log(trainer)
        assert telemetry.poll() is None, read_log(telemetry)
        assert all(c.poll() is None for c in clients[1:])
        # Every hostile message was counted by reason (the node's counters outlive Redis).
        for reason in (
            "not_msgpack",
            "bad_version",
            "bad_field",
            "non_finite",
            "too_large",
            "command_not_json",
            "command_unknown_command",
        ):
            assert rejected.get(reason, 0) >= 1, (reason, rejected)
        assert sum(rejected.values()) >= sent["samples"] + sent["trainer_commands"]
        assert int(tel.get("rejected") or 0) >= 3  # the undecodable episode records
        assert "Traceback" not in read_log(trainer) + read_log(telemetry)
    finally:
        report = "\n".join(f"[{i}] {line}" for i, line in enumerate(log))
        (tmp_path / "chaos-report.txt").write_text(report + "\n")
        print("\nchaos report:\n" + report)
        procs.stop_all()
        port_holder.stop()

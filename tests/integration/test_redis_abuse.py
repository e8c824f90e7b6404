"""A client role (or anyone with the password) abusing Redis: bloated and flooded heartbeats,
an exhausted episode stream, an exhausted index counter, Redis at maxmemory, oversized
values, and a client cut off from Redis. Real redis-server, real node processes."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import redis

from soulsai.client.control import Control
from soulsai.client.outbox import Outbox
from soulsai.errors import ProtocolError
from soulsai.transport import ClientLink, TrainerLink, open_link
from soulsai.transport.client_link import CLIENT_INDEX_BOUND
from soulsai.transport.embedded import EmbeddedRedis
from soulsai.transport.heartbeats import MAX_HEARTBEATS, read_heartbeats
from tests.conftest import node_args as stack_args
from tests.conftest import read_log, trainer_stats, wait_until

pytestmark = pytest.mark.integration

INT64_MAX = 2**63 - 1
MAX_STREAM_ID = "18446744073709551615-18446744073709551615"


def node_args(redis_server, config_dir: Path, prefix: str, tmp: Path, *extra: str) -> list[str]:
    """The test stack's arguments for a node that learns early and never stops by itself."""
    return stack_args(
        redis_server,
        config_dir,
        prefix,
        tmp,
        "checkpoint.every=0",
        "dqn.learning_starts=200",
        "target_return=null",
        "max_steps=0",
        *extra,
    )


# ---------------------------------------------------------------- heartbeats


def test_bloated_and_flooded_heartbeats_are_read_bounded_and_deleted(
    redis_server, rclient, keys, prefix
) -> None:
    rclient.set(keys.heartbeat("bloat"), b"x" * (50 << 20))  # no expiry, 50 MB
    rclient.set(keys.heartbeat("bloat-ttl"), b"{" + b" " * (5 << 20), px=60_000)
    rclient.set(keys.heartbeat("forever"), b"{}", px=10**9)  # longer than any client sets
    rclient.lpush(keys.heartbeat("list"), b"{}")
    pipe = rclient.pipeline(transaction=False)
    for i in range(10_000):
        pipe.set(keys.heartbeat(f"fake{i}"), b"{}")  # no expiry
    pipe.execute()
    for cid in ("pc1", "pc2"):
        rclient.set(keys.heartbeat(cid), json.dumps({"dropped": 3}), px=5000)
    pattern = keys.heartbeat_pattern
    left = lambda: {k.decode() for k in rclient.scan_iter(match=pattern, count=1000)}  # noqa: E731
    for _ in range(20):  # each round reads (and deletes) at most MAX_HEARTBEATS keys
        assert len(read_heartbeats(rclient, keys)) <= MAX_HEARTBEATS
        if len(left()) == 2:
            break
    assert left() == {keys.heartbeat("pc1"), keys.heartbeat("pc2")}  # the rest was deleted
    assert read_heartbeats(rclient, keys) == {"pc1": {"dropped": 3}, "pc2": {"dropped": 3}}
    link = open_link(TrainerLink, redis_server.target, prefix)
    try:
        assert len(link.client_heartbeats()) == 2
    finally:
        link.close()


def test_training_node_keeps_learning_and_counting_clients_under_a_heartbeat_flood(
    redis_server, rclient, keys, prefix, config_dir, procs, tmp_path
) -> None:
    args = node_args(redis_server, config_dir, prefix, tmp_path)
    trainer = procs.start("node", "training", *args, password=redis_server.password, name="trn")
    client = procs.start(
        "client", *args, "--client-id", "honest", password=redis_server.password, name="cli"
    )
    logs = lambda: read_log(trainer)[-2000:] + read_log(client)[-2000:]  # noqa: E731
    wait_until(
        lambda: int(trainer_stats(rclient, keys).get("updates", 0)) > 0, 90, f"learning\n{logs()}"
    )
    rclient.set(keys.heartbeat("bloat"), b"x" * (50 << 20))
    pipe = rclient.pipeline(transaction=False)
    for i in range(10_000):
        pipe.set(keys.heartbeat(f"fake{i}"), b'{"dropped": 1000000}')
    pipe.execute()
    start = int(trainer_stats(rclient, keys)["updates"])
    wait_until(
        lambda: int(trainer_stats(rclient, keys).get("updates", 0)) >= start + 500,
        60,
        f"updates going on during the flood\n{logs()}",
    )
    wait_until(
        lambda: (
            trainer_stats(rclient, keys).get("clients") == "1"
            and rclient.exists(keys.heartbeat("bloat")) == 0
        ),
        30,
        f"the fakes deleted, one client counted\n{logs()}",
    )
    assert int(trainer_stats(rclient, keys).get("client_dropped", 0)) < 1000000
    assert trainer.poll() is None and client.poll() is None


# ---------------------------------------------------------------- maxmemory


def test_nodes_survive_redis_at_maxmemory_and_recover(
    redis_server, rclient, keys, prefix, config_dir, procs, tmp_path
) -> None:
    server = EmbeddedRedis().start()  # its own server: maxmemory would hit other tests
    try:
        r = redis.Redis(port=server.port, password=server.password)
        args = node_args(server, config_dir, prefix, tmp_path, "telemetry.update_interval=1")
        pw = server.password
        trainer = procs.start("node", "training", *args, password=pw, name="trn")
        telemetry = procs.start("node", "telemetry", *args, password=pw, name="tel")
        client = procs.start("client", *args, "--client-id", "c1", password=pw, name="cli")
        logs = lambda: "\n".join(read_log(p)[-1500:] for p in (trainer, telemetry, client))  # noqa: E731
        wait_until(
            lambda: int(trainer_stats(r, keys).get("updates", 0)) > 0, 90, f"learning\n{logs()}"
        )
        r.config_set("maxmemory", "1")  # every write that needs memory is refused now
        wait_until(
            lambda: (
                "OutOfMemoryError" in read_log(trainer)
                and "OutOfMemoryError" in read_log(telemetry)
            ),
            30,
            f"both nodes meeting OOM\n{logs()}",
        )
        time.sleep(2.0)  # a few rounds of refusals: nothing may die of them
        assert trainer.poll() is None and telemetry.poll() is None, logs()
        r.config_set("maxmemory", "0")
        before = int(trainer_stats(r, keys).get("updates", 0))
        episodes = r.xlen(keys.episodes)
        wait_until(
            lambda: (
                int(trainer_stats(r, keys).get("updates", 0)) > before + 100
                and r.xlen(keys.episodes) > episodes
            ),
            60,
            f"training and episodes going on again\n{logs()}",
        )
        assert trainer.poll() is None and telemetry.poll() is None and client.poll() is None
        assert "Traceback" not in logs()
    finally:
        procs.stop_all()
        server.stop()


# ---------------------------------------------------------------- the episode stream


def test_an_exhausted_episode_stream_is_repaired_and_nothing_is_sent_twice(
    redis_server, rclient, keys, prefix, config_dir, procs, tmp_path
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    args = node_args(redis_server, config_dir, prefix, tmp_path, "telemetry.update_interval=1")
    telemetry = procs.start(
        "node", "telemetry", *args, "--run-dir", str(run_dir), password=redis_server.password
    )
    from tests.integration.test_telemetry import episode, lines

    link = open_link(ClientLink, redis_server.target, prefix)
    outbox = Outbox(link, 10_000, 1000, 100_000, interval=0.05)
    try:
        for i in range(1, 6):
            outbox.put_episode(episode("c1", i, float(i)))
        wait_until(lambda: len(lines(run_dir)) == 5, 30, f"5 episodes\n{read_log(telemetry)}")
        rclient.xadd(keys.episodes, {"m": b"x"}, id=MAX_STREAM_ID)  # no id left for XADD *
        for i in range(6, 16):
            outbox.put_episode(episode("c1", i, float(i)))
            outbox.put_samples(b"s%d" % i)
        wait_until(
            lambda: len(lines(run_dir)) == 15,
            60,
            f"episodes after the repair\n{read_log(telemetry)}",
        )
        wait_until(lambda: outbox.pending() == 0, 10, "the outbox empty")
        samples = rclient.lrange(keys.samples, 0, -1)
        assert sorted(samples) == sorted(b"s%d" % i for i in range(6, 16))  # each exactly once
        assert [r["client_episode"] for r in lines(run_dir)] == list(range(1, 16))
        assert "deleted it with" in read_log(telemetry)
        assert telemetry.poll() is None
    finally:
        outbox.close()
        link.close()


def test_a_stream_id_far_ahead_of_the_clock_does_not_pin_the_time_axis(
    redis_server, rclient, keys, prefix, config_dir, procs, tmp_path
) -> None:
    """An id a month ahead leaves ids for XADD *, but Redis gives every later record its time:
    the node never places a record after its own clock (a Redis whose clock really runs ahead
    is test_telemetry's replaced-Redis case: records are kept, not repaired away)."""
    from tests.integration.test_telemetry import episode, lines

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    args = node_args(redis_server, config_dir, prefix, tmp_path, "telemetry.update_interval=1")
    telemetry = procs.start(
        "node", "telemetry", *args, "--run-dir", str(run_dir), password=redis_server.password
    )
    rclient.xadd(keys.episodes, {"m": episode("c1", 1, 1.0)})
    wait_until(lambda: len(lines(run_dir)) == 1, 30, f"the first\n{read_log(telemetry)}")
    ahead = int(time.time() * 1000) + 30 * 86_400_000  # a month ahead, below 2^47 ms
    rclient.xadd(keys.episodes, {"m": episode("c1", 2, 2.0)}, id=f"{ahead}-0")
    for i in range(3, 8):
        later = rclient.xadd(keys.episodes, {"m": episode("c1", i, float(i))})
        assert int(later.split(b"-")[0]) == ahead  # Redis stamps honest records with it
    wait_until(lambda: len(lines(run_dir)) == 7, 30, f"all seven\n{read_log(telemetry)}")
    recs = lines(run_dir)
    assert [r["client_episode"] for r in recs] == list(range(1, 8))
    assert max(r["wall_time"] for r in recs) < 3600, recs  # not a month into the run
    assert telemetry.poll() is None


def test_a_refusing_stream_holds_at_most_stream_maxlen_records_in_the_outbox(
    redis_server, rclient, keys, prefix
) -> None:
    link = open_link(ClientLink, redis_server.target, prefix)
    outbox = Outbox(link, 10_000, 100, 100_000, interval=0.05)
    try:
        rclient.xadd(keys.episodes, {"m": b"x"}, id=MAX_STREAM_ID)  # every XADD * refused
        for i in range(1000):
            outbox.put_episode(b"e%d" % i)
        assert outbox.pending() == 100 and outbox.dropped_episodes == 900
        rclient.delete(keys.episodes)
        wait_until(lambda: outbox.pending() == 0, 10, "the outbox empty")
        got = [f[b"m"] for _, f in rclient.xrange(keys.episodes)]
        assert got == [b"e%d" % i for i in range(900, 1000)]  # the newest, once each
    finally:
        outbox.close()
        link.close()


def test_deliver_resends_only_what_redis_refused(redis_server, rclient, keys, prefix) -> None:
    link = open_link(ClientLink, redis_server.target, prefix)
    try:
        rclient.xadd(keys.episodes, {"m": b"x"}, id=MAX_STREAM_ID)
        done = link.deliver([b"a", b"b"], [b"e1", b"e2"], 1000, 100)
        assert done.samples_ok and done.queued == 2 and done.episodes_ok == [False, False]
        assert "exhausted" in str(done.error)
        assert rclient.lrange(keys.samples, 0, -1) == [b"b", b"a"]
        rclient.delete(keys.episodes)
        done = link.deliver([], [b"e1", b"e2"], 1000, 100)  # the connection is still good
        assert done.error is None and done.episodes_ok == [True, True]
    finally:
        link.close()


# ---------------------------------------------------------------- the index counter


def test_an_exhausted_client_counter_gives_an_index_not_a_traceback(
    redis_server, rclient, keys, prefix
) -> None:
    link = open_link(ClientLink, redis_server.target, prefix)
    try:
        rclient.set(keys.client_seq, INT64_MAX)
        assert 0 <= link.register() < CLIENT_INDEX_BOUND
        rclient.set(keys.client_seq, INT64_MAX - 1)
        assert link.register() == (INT64_MAX - 1) % CLIENT_INDEX_BOUND
        rclient.set(keys.client_seq, b"not a number")
        assert 0 <= link.register() < CLIENT_INDEX_BOUND
    finally:
        link.close()


# ---------------------------------------------------------------- oversized values


def test_oversized_config_and_weights_are_refused_before_they_are_read(
    redis_server, rclient, keys, prefix
) -> None:
    link = open_link(ClientLink, redis_server.target, prefix)
    try:
        rclient.set(keys.weights, b"w" * (3 << 20))
        with pytest.raises(ProtocolError, match="too_large"):
            link.fetch_weights(1 << 20)
        assert link.fetch_weights(4 << 20) == b"w" * (3 << 20)
        rclient.set(keys.config, b"{" * ((1 << 20) + 10))
        with pytest.raises(ProtocolError, match="too_large"):
            link.fetch_config()
        rclient.set(keys.config, b"{}")
        assert link.fetch_config() == b"{}"
    finally:
        link.close()


def test_redis_refuses_a_value_over_its_bulk_limit() -> None:
    with EmbeddedRedis(max_bulk=1 << 20) as server:
        r = redis.Redis(port=server.port, password=server.password)
        with pytest.raises(redis.ResponseError, match="invalid bulk length"):
            r.lpush("q", b"x" * (2 << 20))  # refused before it is read; connection closed
        assert r.llen("q") == 0
        assert r.config_get("maxmemory")["maxmemory"] == str(server.maxmemory)


# ---------------------------------------------------------------- a client cut off


def test_a_client_cut_off_pauses_after_the_grace_and_resumes(redis_server, prefix) -> None:
    server = EmbeddedRedis().start()
    port = server.port
    link = open_link(ClientLink, server.target, prefix)
    link.r.set(link.keys.model_id, 1)
    stop = threading.Event()
    control = Control(
        link,
        "c1",
        {},
        lambda tensors: None,
        heartbeat_interval=0.2,
        heartbeat_timeout=1.0,
        poll_interval=0.2,
        max_bytes=1 << 20,
        status=dict,
        stop=stop,
        offline_grace=1.0,
    )
    control.model_id = 1
    control.start()
    try:
        wait_until(lambda: link.r.exists(link.keys.heartbeat("c1")), 10, "a heartbeat")
        assert control.may_sample.is_set()
        server.stop()
        wait_until(lambda: not control.may_sample.is_set(), 20, "the pause after the grace")
        assert control.offline and control.offline_pauses == 1
        server = EmbeddedRedis(port=port, password=server.password).start()
        fresh = redis.Redis(port=port, password=server.password)
        wait_until(lambda: fresh.exists(link.keys.heartbeat("c1")), 20, "the client reconnected")
        assert not control.may_sample.is_set()  # Redis is back, but no model is published yet
        fresh.set(link.keys.model_id, 1)
        wait_until(lambda: control.may_sample.is_set(), 20, "sampling again")
        assert not control.offline and control.offline_pauses == 1
    finally:
        stop.set()
        control.join(5.0)
        link.close()
        server.stop()

"""Weights from a training node's link to a client's control thread, through a real Redis."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from soulsai.client.control import Control
from soulsai.model.nets import QNetwork
from soulsai.model.numpy_q import NumpyQPolicy
from soulsai.transport import ClientLink, TelemetryLink, TrainerLink, open_link
from soulsai.transport.commands import decode_command, encode_command
from soulsai.transport.embedded import EmbeddedRedis
from soulsai.transport.weights import encode_weights, encode_weights_parts
from tests.conftest import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def links(redis_server: EmbeddedRedis, prefix: str):
    trainer = open_link(TrainerLink, redis_server.target, prefix)
    client = open_link(ClientLink, redis_server.target, prefix)
    yield trainer, client
    trainer.close()
    client.close()


def _q_net_and_control(
    client: ClientLink, poll_interval: float
) -> tuple[QNetwork, Control, threading.Event]:
    """A small Q-network and a client's control thread (not started) expecting its weights."""
    net = QNetwork((4,), 3, [64, 64], normalize_obs=True)
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    stop = threading.Event()
    control = Control(
        client,
        "c0",
        expected,
        lambda s: NumpyQPolicy(s, True),
        heartbeat_interval=1.0,
        heartbeat_timeout=5.0,
        poll_interval=poll_interval,
        max_bytes=1 << 24,
        status=dict,
        stop=stop,
    )
    return net, control, stop


@pytest.mark.parametrize("wire", ["float32", "float16"])
def test_client_swaps_in_each_published_model_and_rejects_a_bad_one(links, wire: str) -> None:
    trainer, client = links
    torch.manual_seed(0)
    net, control, stop = _q_net_and_control(client, poll_interval=1.0)
    trainer.publish_weights(encode_weights(net.state_dict(), 0, wire_dtype=wire), 0)
    assert control.load_current() and control.model_id == 0
    control.start()
    try:
        obs = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
        for mid in (1, 2):
            with torch.no_grad():
                for p in net.parameters():
                    p.mul_(1.1)
            blob = encode_weights(net.state_dict(), mid, {"env_steps": mid}, wire_dtype=wire)
            trainer.publish_weights(blob, mid)
            assert client.fetch_weights() == blob  # the value went up intact
            wait_until(
                lambda m=mid: control.latest is not None and control.latest[0] == m,
                10,
                f"model {mid} loaded",
            )
            _, policy, meta = control.latest
            assert meta["env_steps"] == mid
            with torch.no_grad():
                want = net(torch.from_numpy(obs)).numpy()
            tol = 1e-5 if wire == "float32" else 2e-2
            np.testing.assert_allclose(policy.q_values(obs), want, rtol=tol, atol=tol)
        bad = {k: v.clone() for k, v in net.state_dict().items()}
        bad["mlp.3.weight"][0, 0] = float("nan")
        trainer.publish_weights(encode_weights(bad, 3, wire_dtype=wire), 3)
        wait_until(lambda: control.rejected_weights >= 1, 10, "the NaN model rejected")
        assert control.latest is not None and control.latest[0] == 2
    finally:
        stop.set()
        control.join(2.0)


def test_a_burst_of_notices_costs_one_decode(links, monkeypatch, redis_server) -> None:
    """Models published while the client is busy downloading: it catches up with the newest
    in one go instead of fetching and decoding every model it missed."""
    import soulsai.client.control as control_mod

    trainer, client = links
    net, control, stop = _q_net_and_control(client, poll_interval=5.0)
    trainer.publish_weights(encode_weights(net.state_dict(), 0), 0)
    assert control.load_current()
    fetches, decodes, release = [], [], threading.Event()
    real_fetch, real_decode = client.fetch_weights, control_mod.decode_weights

    def slow_fetch(*args):
        fetches.append(1)
        release.wait(10)  # the first download takes until the whole burst is out
        return real_fetch(*args)

    def counting_decode(*args, **kwargs):
        decodes.append(1)
        return real_decode(*args, **kwargs)

    handled: list[bytes] = []
    real_handle = control._handle

    def recording_handle(msg):
        new_model = real_handle(msg)
        if msg.get("type") == "message":
            handled.append(msg.get("data"))
        return new_model

    monkeypatch.setattr(client, "fetch_weights", slow_fetch)
    monkeypatch.setattr(control_mod, "decode_weights", counting_decode)
    monkeypatch.setattr(control, "_handle", recording_handle)
    control.start()
    try:
        r = trainer.r
        wait_until(lambda: r.pubsub_numsub(client.keys.model_channel)[0][1] == 1, 10, "subscribed")
        for mid in range(1, 6):
            trainer.publish_weights(encode_weights(net.state_dict(), mid), mid)
        release.set()
        wait_until(lambda: control.model_id == 5, 10, "model 5 loaded")
        # every notice of the burst handled (published in order: the last one comes last)
        wait_until(lambda: b"5" in handled, 10, "the last notice handled")
        assert control.model_id == 5
        assert len(decodes) == 1 and len(fetches) <= 2
    finally:
        stop.set()
        control.join(2.0)


def test_fetch_reads_big_blobs_and_survives_a_killed_connection(links) -> None:
    trainer, client = links
    assert client.fetch_weights() is None  # nothing published yet
    blob = np.random.default_rng(0).bytes(12 << 20)
    trainer.publish_weights(blob, 1)
    got = client.fetch_weights()
    assert got == blob and len(got) == len(blob)
    trainer.r.client_kill_filter(_type="normal", skipme=True)  # every client connection but ours
    assert client.fetch_weights() == blob  # reconnects by itself
    trainer.r.set(trainer.keys.weights, b"")
    assert client.fetch_weights() == b""
    state = QNetwork((4,), 3, [64, 64], normalize_obs=True).state_dict()
    parts = encode_weights_parts(state, 2, wire_dtype="float16")
    trainer.publish_weights(parts, 2)  # sent piece by piece, stored as one value
    assert client.fetch_weights() == b"".join(parts)
    assert client.model_id() == 2


def test_read_bulk_takes_replies_in_pieces_and_rejects_others() -> None:
    import socket

    import redis

    from soulsai.transport.resp import read_bulk

    def reply(*pieces: bytes):
        a, b = socket.socketpair()
        a.settimeout(5)

        def send() -> None:
            for p in pieces:
                b.sendall(p)
                time.sleep(0.01)  # apart in time, so the reader gets the reply in pieces
            b.close()

        threading.Thread(target=send, daemon=True).start()
        return a

    payload = bytes(range(256)) * 1000
    sock = reply(b"$256", b"000\r\n" + payload[:1000], payload[1000:], b"\r\n")
    assert read_bulk(sock) == payload
    assert read_bulk(reply(b"$-1\r\n")) is None
    assert read_bulk(reply(b"_\r\n")) is None
    with pytest.raises(redis.ResponseError, match="NOPERM"):
        read_bulk(reply(b"-NOPERM no\r\n"))
    for bad in (b"+OK\r\n", b"$12x\r\n", b"$" + b"9" * 80, b"$3\r\nabcde\r\n", b"$3\r\nabcXY"):
        with pytest.raises((redis.InvalidResponse, redis.ConnectionError)):
            read_bulk(reply(bad))
    with pytest.raises(redis.ConnectionError):
        read_bulk(reply(b"$10\r\nabc"))  # closed halfway


def test_pause_resume_and_shutdown_reach_clients_as_the_bytes_they_always_were(
    links, redis_server: EmbeddedRedis, prefix: str
) -> None:
    """The training node's pause/resume and `soulsai train`'s shutdown (a telemetry link's
    `broadcast`, not its Redis client) arrive on the command channel as the same JSON bytes."""
    trainer, client = links
    ps = client.subscribe()
    channel = client.keys.commands
    wait_until(
        lambda: ps.get_message() is None and trainer.r.pubsub_numsub(channel)[0][1],
        10,
        "the client subscribed",
    )
    telemetry = open_link(TelemetryLink, redis_server.target, prefix)
    try:
        trainer.set_throttle(True)
        trainer.set_throttle(False)
        telemetry.broadcast(encode_command("shutdown"))
        got: list[bytes] = []

        def three() -> bool:
            msg = ps.get_message(timeout=0.1)
            if msg and msg["channel"].decode() == channel:
                got.append(msg["data"])
            return len(got) == 3

        wait_until(three, 10, "three commands")
        assert got == [b'{"cmd": "pause"}', b'{"cmd": "resume"}', b'{"cmd": "shutdown"}']
        allowed = {"pause", "resume", "shutdown"}
        assert [decode_command(m, allowed)["cmd"] for m in got] == ["pause", "resume", "shutdown"]
    finally:
        ps.close()
        telemetry.close()

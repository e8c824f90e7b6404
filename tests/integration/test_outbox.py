"""The client's outbox against a real Redis: batched rounds, eager wake-ups, nothing lost."""

from __future__ import annotations

import pytest
import redis

from soulsai.client.outbox import Outbox
from soulsai.transport import ClientLink, open_link
from tests.conftest import wait_until


def _arrive(rclient, keys, outbox: Outbox, n: int) -> None:
    """Put `n` more messages and wait (with a deadline) until all of them are in Redis."""
    before = rclient.llen(keys.samples)
    for i in range(n):
        outbox.put_samples(b"m%d" % (before + i))
    wait_until(lambda: rclient.llen(keys.samples) >= before + n, 10.0, "messages in Redis")


def test_eager_outbox_sends_at_once_batched_one_ships_a_round_in_one_push(
    redis_server, rclient, keys, prefix
) -> None:
    link = open_link(ClientLink, redis_server.target, prefix)
    pushes: list[int] = []
    real_deliver = link.deliver

    def counting_deliver(samples, *args):
        pushes.append(len(samples))
        return real_deliver(samples, *args)

    link.deliver = counting_deliver  # type: ignore[method-assign]
    # An hour between rounds: not woken per message, it ships the three on close, in one push.
    batched = Outbox(link, 100, 1000, 1000, interval=3600.0)
    for i in range(3):
        batched.put_samples(b"b%d" % i)
    assert batched.pending() == 3
    batched.close()
    assert pushes == [3] and rclient.llen(keys.samples) == 3
    rclient.delete(keys.samples)
    pushes.clear()
    # An hour between rounds: only the per-message wake-up can deliver these in time.
    eager = Outbox(link, 100, 1000, 1000, interval=3600.0, eager=True)
    try:
        _arrive(rclient, keys, eager, 3)  # PPO: the iteration waits for these
        _arrive(rclient, keys, eager, 6)  # ... every time, not only the first
    finally:
        eager.close()
    assert eager.sent_samples == 9 and eager.dropped == 0
    # LPUSH: newest first; every message arrived once, in order
    assert rclient.lrange(keys.samples, 0, -1)[::-1] == [b"m%d" % i for i in range(9)]
    link.close()


def test_push_trims_the_queue_keeps_episodes_in_order_and_survives_an_error_reply(
    redis_server, rclient, keys, prefix
) -> None:
    link = open_link(ClientLink, redis_server.target, prefix)
    try:
        assert link.push([b"s%d" % i for i in range(5)], [b"e0", b"e1"], 1000, 3) == 5
        assert rclient.lrange(keys.samples, 0, -1) == [b"s4", b"s3", b"s2"]  # the oldest went
        assert link.push([], [b"e2" * 1000], 1000, 3) == 0
        records = [fields[b"m"] for _, fields in rclient.xrange(keys.episodes)]
        assert records == [b"e0", b"e1", b"e2" * 1000]
        # An error reply (the queue key holds a string) fails the push; the connection is
        # dropped rather than left with replies unread, so the next push reads its own.
        rclient.delete(keys.samples)
        rclient.set(keys.samples, b"not a list")
        with pytest.raises(redis.ResponseError):
            link.push([b"x"], [b"e3"], 1000, 3)
        rclient.delete(keys.samples)
        assert link.push([b"y"], [b"e4"], 1000, 3) == 1
        assert rclient.lrange(keys.samples, 0, -1) == [b"y"]
        assert [f[b"m"] for _, f in rclient.xrange(keys.episodes)][-1] == b"e4"
        # The outbox counts what the trim dropped (the client reports it in its heartbeat).
        outbox = Outbox(link, 100, 1000, 3, interval=0.05)
        for i in range(5):
            outbox.put_samples(b"o%d" % i)
        outbox.close()
        assert (outbox.sent_samples, outbox.trimmed) == (5, 3)  # 1 + 5 queued, 3 kept
    finally:
        link.close()


def test_outbox_keeps_and_resends_what_redis_refused(redis_server, rclient, keys, prefix) -> None:
    rclient.set(keys.samples, b"not a list")  # every LPUSH gets an error reply
    link = open_link(ClientLink, redis_server.target, prefix)
    outbox = Outbox(link, 100, 1000, 1000, interval=0.05)
    try:
        outbox.put_samples(b"kept")
        wait_until(lambda: outbox.failures >= 2, 10.0, "the refused rounds")
        assert outbox.sent_samples == 0 and outbox.pending() == 1
        rclient.delete(keys.samples)
        wait_until(lambda: outbox.sent_samples == 1, 10.0, "the message after the refusals")
        assert rclient.lrange(keys.samples, 0, -1) == [b"kept"]
    finally:
        outbox.close()
        link.close()

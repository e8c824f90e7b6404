"""Replay-ratio control of the DQN node against a real Redis: the intake pauses the clients as
soon as the learner owes max_update_debt updates, what honest clients sent before they saw the
pause is owed in full however long it takes to drain, and only samples pushed long after it
(clients that ignore the pause) are forgiven."""

from __future__ import annotations

import threading

import pytest

from soulsai.training import node as node_module
from soulsai.training.node import DQNTrainingNode
from soulsai.transport.keys import Keys
from tests.conftest import cartpole_envelope

pytestmark = pytest.mark.integration


MSG = cartpole_envelope(0, 64)  # 64 transitions of model 0


def start(node: DQNTrainingNode) -> None:
    """One message before learning starts: the learner loop owes nothing for it."""
    assert node.intake.handle(MSG)
    assert node._owed_updates() == 0


@pytest.fixture
def node(redis_server, node_config, tmp_path):
    cfg = node_config(
        "dqn.hidden=[16]",
        "dqn.learning_starts=128",
        "dqn.batch_size=64",
        "dqn.replay_ratio=8",  # 1 update owed per 8 transitions
        "dqn.max_update_debt=40",
    )
    n = DQNTrainingNode(cfg, redis_server.target, tmp_path / "run", threading.Event())
    yield n
    n.link.close()


def pay(node: DQNTrainingNode, updates: int) -> None:
    """The learner does `updates` gradient steps, then the node decides on the pause."""
    for _ in range(updates):
        node.learner.update(node.buffer.sample(64))
    node._throttle()


def test_intake_pauses_at_once_and_honest_late_samples_are_owed(node, rclient, prefix):
    throttle = Keys(prefix).throttle
    start(node)
    assert not node.throttled and not rclient.exists(throttle)
    node.intake.handle_many([MSG] * 5)  # 320 transitions: 40 updates owed
    assert node.throttled and rclient.exists(throttle)  # set by the intake, not the learner
    node._paused_at -= 10 * node_module.PAUSE_GRACE  # a backlog that drains slowly
    node.intake.handle_many([MSG] * 20)  # sent before the clients saw the pause
    assert node._owed_updates() == 200 and node.forgiven == 0


def test_samples_long_after_the_pause_are_forgiven(node, rclient, prefix, monkeypatch):
    start(node)
    node.intake.handle_many([MSG] * 5)
    assert node.throttled
    node.intake.handle_many([MSG])  # still owed: the queue has not been empty since
    node.intake.drained_at = node._paused_at + node_module.PAUSE_GRACE + 0.1
    node.intake.handle_many([MSG] * 3)  # pushed after the queue was empty, late
    assert node.forgiven == 192 and node._owed_updates() == 48
    monkeypatch.setattr(node_module, "PAUSE_FLOOD", -1.0)  # a queue that never empties
    node.intake.drained_at = 0.0
    node.intake.handle_many([MSG])
    assert node.forgiven == 256 and node._owed_updates() == 48
    assert node.accepted == 11 * 64  # forgiven samples are still in the buffer
    assert len(node.buffer) == 11 * 64


def test_clients_resume_at_half_the_debt(node, rclient, prefix):
    throttle = Keys(prefix).throttle
    start(node)
    node.intake.handle_many([MSG] * 5)
    assert rclient.exists(throttle)
    pay(node, 19)
    assert node.throttled  # 21 owed > 40 // 2
    pay(node, 1)
    assert not node.throttled and not rclient.exists(throttle)


def test_what_waits_in_redis_counts_toward_the_pause(node, rclient, prefix):
    keys = Keys(prefix)
    start(node)
    rclient.lpush(keys.samples, *[MSG] * 6)
    raws, left = node.link.pop_samples(1, block=0)
    assert len(raws) == 1 and left == 5  # read in the same round trip as the pop
    node.intake.handle_many(raws)  # 8 updates owed: no pause on its own
    assert node._owed_updates() == 8 and not node.throttled
    node.intake.queued = left  # and 40 more for the 5 envelopes still queued
    node._throttle()
    assert node.throttled and rclient.exists(keys.throttle)
    raws, node.intake.queued = node.link.pop_samples(10, block=0)
    assert len(raws) == 5 and node.intake.queued == 0
    node.intake.handle_many(raws)
    assert node._owed_updates() == 48
    pay(node, 27)
    assert node.throttled  # 21 owed > 40 // 2
    pay(node, 1)
    assert not node.throttled and not rclient.exists(keys.throttle)

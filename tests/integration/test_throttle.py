"""Replay-ratio control of the DQN node against a real Redis: the intake pauses the clients as
soon as the learner owes max_update_debt updates, what honest clients sent before they saw the
pause is owed in full however long it takes to drain, and only samples pushed long after it
(clients that ignore the pause) are forgiven."""

from __future__ import annotations

import threading

import pytest

from soulsai.training.node import TrainingNode
from soulsai.training.ratio import PAUSE_GRACE
from soulsai.transport.keys import Keys
from tests.conftest import cartpole_envelope

pytestmark = pytest.mark.integration


MSG = cartpole_envelope(0, 64)  # 64 transitions of model 0


def start(node: TrainingNode) -> None:
    """One message before learning starts: the learner loop owes nothing for it."""
    assert node.intake.handle(MSG)
    assert node.driver.owed_updates() == 0


@pytest.fixture
def node(redis_server, node_config, tmp_path):
    cfg = node_config(
        "dqn.hidden=[16]",
        "dqn.learning_starts=128",
        "dqn.batch_size=64",
        "dqn.replay_ratio=8",  # 1 update owed per 8 transitions
        "dqn.max_update_debt=40",
    )
    n = TrainingNode(cfg, redis_server.target, tmp_path / "run", threading.Event())
    yield n
    n.link.close()


def pay(node: TrainingNode, updates: int) -> None:
    """The learner does `updates` gradient steps, then the node decides on the pause."""
    for _ in range(updates):
        node.learner.update(node.driver.buffer.sample(64))
    node.driver.throttle()


def test_intake_pauses_at_once_and_honest_late_samples_are_owed(node, rclient, prefix):
    throttle = Keys(prefix).throttle
    start(node)
    assert not node.driver.gate.paused and not rclient.exists(throttle)
    node.intake.handle_many([MSG] * 5)  # 320 transitions: 40 updates owed
    assert node.driver.gate.paused and rclient.exists(
        throttle
    )  # set by the intake, not the learner
    node.driver.gate.paused_at -= 10 * PAUSE_GRACE  # a backlog that drains slowly
    node.intake.handle_many([MSG] * 20)  # sent before the clients saw the pause
    assert node.driver.owed_updates() == 200 and node.driver.ratio.forgiven == 0


def test_samples_long_after_the_pause_are_forgiven(node, rclient, prefix):
    start(node)
    node.intake.handle_many([MSG] * 5)
    assert node.driver.gate.paused
    node.intake.handle_many([MSG])  # still owed: the queue has not been empty since
    node.intake.drained_at = node.driver.gate.paused_at + PAUSE_GRACE + 0.1
    node.intake.handle_many([MSG] * 3)  # pushed after the queue was empty, late
    assert node.driver.ratio.forgiven == 192 and node.driver.owed_updates() == 48
    node.driver.gate.flood = -1.0  # a queue that never empties
    node.intake.drained_at = 0.0
    node.intake.handle_many([MSG])
    assert node.driver.ratio.forgiven == 256 and node.driver.owed_updates() == 48
    assert node.accepted == 11 * 64  # forgiven samples are still in the buffer
    assert len(node.driver.buffer) == 11 * 64


def test_clients_resume_at_half_the_debt(node, rclient, prefix):
    throttle = Keys(prefix).throttle
    start(node)
    node.intake.handle_many([MSG] * 5)
    assert rclient.exists(throttle)
    pay(node, 19)
    assert node.driver.gate.paused  # 21 owed > 40 // 2
    pay(node, 1)
    assert not node.driver.gate.paused and not rclient.exists(throttle)


def test_what_waits_in_redis_counts_toward_the_pause(node, rclient, prefix):
    keys = Keys(prefix)
    start(node)
    rclient.lpush(keys.samples, *[MSG] * 6)
    raws, left = node.link.pop_samples(1, block=0)
    assert len(raws) == 1 and left == 5  # read in the same round trip as the pop
    node.intake.handle_many(raws)  # 8 updates owed: no pause on its own
    assert node.driver.owed_updates() == 8 and not node.driver.gate.paused
    node.intake.queued = left  # and 40 more for the 5 envelopes still queued
    node.driver.throttle()
    assert node.driver.gate.paused and rclient.exists(keys.throttle)
    raws, node.intake.queued = node.link.pop_samples(10, block=0)
    assert len(raws) == 5 and node.intake.queued == 0
    node.intake.handle_many(raws)
    assert node.driver.owed_updates() == 48
    pay(node, 27)
    assert node.driver.gate.paused  # 21 owed > 40 // 2
    pay(node, 1)
    assert not node.driver.gate.paused and not rclient.exists(keys.throttle)

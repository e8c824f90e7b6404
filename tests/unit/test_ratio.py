"""The DQN replay-ratio and pause arithmetic without Redis (soulsai.training.ratio)."""

from __future__ import annotations

import pytest

from soulsai.training.ratio import PauseGate, ReplayRatio


def ratio(replay_ratio: float = 8, batch_size: int = 64, debt: int = 40, throttle: bool = True):
    return ReplayRatio(replay_ratio, batch_size, debt, throttle)


@pytest.mark.parametrize(
    ("replay_ratio", "batch_size", "accepted", "updates", "owed"),
    [
        (8, 64, 320, 0, 40),  # 1 update per 8 transitions
        (8, 64, 327, 0, 40),  # a fraction of a step is not owed yet
        (8, 64, 328, 0, 41),
        (8, 64, 320, 15, 25),  # paid updates come off
        (1, 32, 3200, 0, 100),
        (0.25, 64, 1024, 1, 3),
    ],
)
def test_owed_updates_are_accepted_times_ratio_over_batch_less_paid(
    replay_ratio, batch_size, accepted, updates, owed
):
    r = ratio(replay_ratio, batch_size, debt=10**6)
    assert r.owed(accepted, updates, learning=True) == owed
    assert r.forgiven == 0


def test_nothing_is_owed_for_what_arrives_before_learning_starts():
    r = ratio()
    assert r.owed(128, 0, learning=False) == 0
    assert r.base == 128
    assert r.owed(128 + 64, 0, learning=True) == 8  # only what came after warm-up
    assert r.settled(0) == 128


def test_a_resumed_node_owes_nothing_for_the_checkpoints_samples_or_updates():
    r = ratio()
    r.restart(accepted=10_000, updates=500)
    assert r.owed(10_000, 500, learning=True) == 0
    assert r.owed(10_080, 501, learning=True) == 9
    assert r.paid(501) == 1


def test_without_throttling_debt_beyond_the_cap_is_forgiven():
    r = ratio(debt=40, throttle=False)
    assert r.owed(640, 0, learning=True) == 40  # 80 owed, 40 forgiven
    assert r.forgiven == 320 and r.base == 320
    assert r.owed(640, 10, learning=True) == 30  # the forgiven part stays forgiven


def test_with_throttling_the_whole_debt_is_owed():
    r = ratio(debt=40, throttle=True)
    assert r.owed(640, 0, learning=True) == 80
    assert r.forgiven == 0


def test_forgiven_samples_owe_nothing_and_count_as_settled():
    r = ratio()
    r.forgive(64)
    assert r.owed(128, 0, learning=True) == 8 and r.forgiven == 64
    assert r.settled(4) == 64 + 4 * 64 / 8


def test_what_waits_in_redis_counts_toward_the_pause_but_is_not_owed_yet():
    r = ratio()
    assert r.pending(64, 0, queued_steps=320, learning=True) == 48
    assert r.owed(64, 0, learning=True) == 8
    assert r.pending(64, 0, queued_steps=320, learning=False) == 0


def test_pause_at_the_cap_and_resume_only_at_half():
    g = PauseGate(max_update_debt=40)
    assert g.decide(39, now=0.0) is None  # below the cap: nothing to change
    assert g.decide(40, now=0.0) is True
    g.applied(True, now=0.0)
    assert g.paused and g.paused_at == 0.0 and g.count == 1
    assert g.decide(21, now=0.5) is None  # 21 > 40 // 2: still paused, no renewal due
    assert g.decide(20, now=0.5) is False
    g.applied(False, now=0.5)
    assert not g.paused
    assert g.decide(21, now=0.6) is None  # not paused and under the cap: stays off


def test_a_pause_is_renewed_every_second_while_it_lasts():
    g = PauseGate(max_update_debt=40, renew=1.0)
    g.applied(True, now=10.0)
    assert g.decide(50, now=10.9) is None
    assert g.decide(50, now=11.0) is True
    g.applied(True, now=11.0)
    assert g.paused_at == 10.0  # a renewal is not a new pause
    assert g.renew_at == 12.0


def test_samples_long_into_a_pause_come_from_clients_that_ignore_it():
    g = PauseGate(max_update_debt=40, grace=2.0, flood=30.0)
    g.applied(True, now=100.0)
    assert not g.ignored(drained_at=101.9, now=105.0)  # in flight before the clients saw it
    assert g.ignored(drained_at=102.1, now=105.0)  # pushed after the queue was empty
    assert not g.ignored(drained_at=0.0, now=129.9)  # a long backlog is still owed
    assert g.ignored(drained_at=0.0, now=130.1)  # but not one that never ends

"""NStepAccumulator: hand-computed cases and a reward-sum property."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from soulsai.client.nstep import NStepAccumulator, NStepTransition

G = 0.9
REWARDS = [1.0, 2.0, 3.0, 4.0, 5.0]


def _run(acc: NStepAccumulator, rewards: list[float], end: str) -> list[list[NStepTransition]]:
    """Feed an episode with obs t at step t (next obs t+1); return the output of each push."""
    outs = []
    for t, r in enumerate(rewards):
        last = t == len(rewards) - 1
        outs.append(acc.push(t, 10 + t, r, t + 1, last and end == "term", last and end == "trunc"))
    return outs


def test_terminated_episode_n3() -> None:
    outs = _run(NStepAccumulator(3, G), REWARDS, "term")
    assert [len(o) for o in outs] == [0, 0, 1, 1, 3]
    r = pytest.approx
    t0, t1, t2 = outs[2][0], outs[3][0], outs[4]
    assert t0 == NStepTransition(0, 10, r(1 + 0.9 * 2 + 0.81 * 3), 3, False, 3)
    assert t1 == NStepTransition(1, 11, r(2 + 0.9 * 3 + 0.81 * 4), 4, False, 3)
    assert t2[0] == NStepTransition(2, 12, r(3 + 0.9 * 4 + 0.81 * 5), 5, True, 3)
    assert t2[1] == NStepTransition(3, 13, r(4 + 0.9 * 5), 5, True, 2)
    assert t2[2] == NStepTransition(4, 14, r(5.0), 5, True, 1)
    assert t0.reward == pytest.approx(5.23) and t2[1].reward == pytest.approx(8.5)


def test_truncated_episode_n3() -> None:
    outs = _run(NStepAccumulator(3, G), REWARDS, "trunc")
    assert [len(o) for o in outs] == [0, 0, 1, 1, 3]
    flat = [tr for o in outs for tr in o]
    assert [tr.terminated for tr in flat] == [False] * 5
    assert [tr.next_obs for tr in flat] == [3, 4, 5, 5, 5]
    assert [tr.steps for tr in flat] == [3, 3, 3, 2, 1]
    assert [tr.obs for tr in flat] == [0, 1, 2, 3, 4]
    assert [tr.reward for tr in flat] == pytest.approx([5.23, 7.94, 10.65, 8.5, 5.0])


def test_episode_shorter_than_n() -> None:
    acc = NStepAccumulator(5, 0.5)
    outs = _run(acc, [1.0, 1.0], "term")
    assert outs[0] == []
    assert outs[1] == [
        NStepTransition(0, 10, 1.5, 2, True, 2),
        NStepTransition(1, 11, 1.0, 2, True, 1),
    ]
    assert len(acc) == 0


def test_consecutive_episodes_do_not_mix() -> None:
    acc = NStepAccumulator(3, G)
    _run(acc, REWARDS, "term")
    outs = [acc.push(f"b{t}", t, 100.0, f"b{t + 1}", False, False) for t in range(3)]
    assert outs[:2] == [[], []]
    assert outs[2] == [NStepTransition("b0", 0, pytest.approx(100 * 2.71), "b3", False, 3)]


def test_reset_drops_pending() -> None:
    acc = NStepAccumulator(3, G)
    acc.push(0, 0, 1.0, 1, False, False)
    acc.push(1, 0, 1.0, 2, False, False)
    acc.reset()
    assert len(acc) == 0
    assert acc.push(7, 0, 1.0, 8, False, True) == [NStepTransition(7, 0, 1.0, 8, False, 1)]


def test_n1_equals_raw_transitions() -> None:
    acc = NStepAccumulator(1, G)
    outs = _run(acc, REWARDS, "term")
    assert outs == [
        [NStepTransition(t, 10 + t, r, t + 1, t == 4, 1)] for t, r in enumerate(REWARDS)
    ]


@given(
    rewards=st.lists(st.floats(-10, 10, allow_nan=False), min_size=1, max_size=30),
    n=st.integers(1, 6),
    gamma=st.floats(0.0, 1.0),
    end=st.sampled_from(["term", "trunc", "none"]),
)
def test_reward_is_discounted_sum(rewards: list[float], n: int, gamma: float, end: str) -> None:
    outs = _run(NStepAccumulator(n, gamma), rewards, end)
    flat = [tr for o in outs for tr in o]
    length = len(rewards)
    expected_starts = list(range(length if end != "none" else max(length - n + 1, 0)))
    assert [tr.obs for tr in flat] == expected_starts
    for tr in flat:
        t, k = tr.obs, tr.steps
        assert k == min(n, length - t)
        assert tr.next_obs == t + k
        assert tr.terminated == (end == "term" and t + k == length)
        expected = sum(gamma**i * rewards[t + i] for i in range(k))
        assert math.isclose(tr.reward, expected, rel_tol=1e-9, abs_tol=1e-9)

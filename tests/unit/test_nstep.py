"""n-step folding: a per-step reference accumulator (hand-computed cases, a reward-sum
property), and the client's vectorized fold and DQNActor checked against it on random
episodes of several env copies, with messages cut at random places."""

from __future__ import annotations

import math
from collections import deque
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from soulsai.client.dqn_actor import DQNActor
from soulsai.client.nstep import fold_nstep
from soulsai.config import load_config

ROOT = Path(__file__).resolve().parents[2]


class NStepTransition(NamedTuple):
    """A folded transition of `steps` (1..n) environment steps."""

    obs: Any
    action: Any
    reward: float
    next_obs: Any
    terminated: bool
    steps: int


class NStepAccumulator:
    """The reference: one env copy's 1-step transitions in, n-step transitions out, per step.

    While an episode runs, every push after the first n-1 emits the transition that started
    n steps back. When the episode ends (terminated or truncated) all pending transitions are
    emitted, each spanning the steps up to the end, and the accumulator starts empty again.
    """

    def __init__(self, n: int, gamma: float) -> None:
        self.n = n
        self.gamma = gamma
        self._pending: deque[tuple[Any, Any, float]] = deque()  # (obs, action, reward)

    def __len__(self) -> int:
        return len(self._pending)

    def push(
        self, obs: Any, action: Any, reward: float, next_obs: Any, terminated: bool, truncated: bool
    ) -> list[NStepTransition]:
        self._pending.append((obs, action, float(reward)))
        if terminated or truncated:
            out: list[NStepTransition] = []
            ret = 0.0
            for k, (o, a, r) in enumerate(reversed(self._pending), start=1):
                ret = r + self.gamma * ret
                out.append(NStepTransition(o, a, ret, next_obs, bool(terminated), k))
            self._pending.clear()
            out.reverse()
            return out
        if len(self._pending) < self.n:
            return []
        ret = 0.0
        for _, _, r in reversed(self._pending):
            ret = r + self.gamma * ret
        o, a, _ = self._pending.popleft()
        return [NStepTransition(o, a, ret, next_obs, False, self.n)]

    def reset(self) -> None:
        self._pending.clear()


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


# ------------------------------------------------------------------ the vectorized fold


def test_fold_block_by_hand() -> None:
    # one copy, n=3, gamma 0.9: rewards 1..5, terminated at row 4
    reward = np.array([[1.0], [2.0], [3.0], [4.0], [5.0]])
    term = np.array([[0], [0], [0], [0], [1]], bool)
    f = fold_nstep(reward, term, np.zeros_like(term), np.zeros(1, np.int64), 3, G)
    assert list(f.row) == [0, 1, 2, 3, 4]
    assert list(f.steps) == [3, 3, 3, 2, 1]
    assert list(f.ended) == [False, False, True, True, True]
    assert f.reward == pytest.approx([5.23, 7.94, 10.65, 8.5, 5.0])
    assert list(f.next_start) == [5]
    # the same rows, episode still running: only rows 0..2 have 3 steps after them
    f = fold_nstep(reward, np.zeros_like(term), np.zeros_like(term), np.zeros(1, np.int64), 3, G)
    assert list(f.row) == [0, 1, 2] and list(f.next_start) == [3]
    # rows before start were folded already
    f = fold_nstep(reward, term, np.zeros_like(term), np.array([3]), 3, G)
    assert list(f.row) == [3, 4]


class _Policy:
    """Acts 7 on copy 0, 8 on copy 1, ...: actions are recognizable, randomness is not needed
    (the env has no action mask, so `mask` is always None)."""

    def act(self, obs: np.ndarray, epsilon: float, rng: np.random.Generator, out=None, mask=None):
        assert mask is None
        actions = 7 + np.arange(len(obs))
        if out is not None:
            out[...] = actions
        return actions


def _dqn_actor(n_envs: int, n: int, gamma: float, batch: int) -> DQNActor:
    cfg = load_config(ROOT / "config")
    cfg.env.num_envs, cfg.dqn.n_step, cfg.dqn.gamma = n_envs, n, gamma
    cfg.client.batch_size, cfg.client.flush_interval = batch, 60.0
    cfg.dqn.hidden = [4]
    obs_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    actor = DQNActor(cfg, obs_space, gym.spaces.Discrete(16), 0, np.random.default_rng(0))
    actor.set_model(0, _Policy(), {})
    return actor


def _transitions(fields: dict[str, np.ndarray]) -> list[tuple]:
    """(copy, obs id, action, reward, next obs id, terminated, steps) per row of a message."""
    return [
        (
            int(fields["obs"][j, 0]),
            int(fields["obs"][j, 1]),
            int(fields["action"][j]),
            float(fields["reward"][j]),
            int(fields["next_obs"][j, 1]),
            bool(fields["terminated"][j]),
            int(fields["steps"][j]),
        )
        for j in range(len(fields["reward"]))
    ]


@settings(max_examples=150, deadline=None)
@given(
    n_envs=st.integers(1, 3),
    n=st.integers(1, 5),
    gamma=st.sampled_from([0.0, 0.5, 0.99, 1.0]),
    batch=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1),
    steps=st.integers(1, 80),
)
def test_dqn_actor_matches_the_reference(n_envs, n, gamma, batch, seed, steps) -> None:
    """Random episodes per copy (terminated, truncated or running at the end), messages cut
    by batch size, model swaps and env restarts: the same transitions as per-step folding,
    with the true final observation and float32-equal rewards."""
    rng = np.random.default_rng(seed)
    actor = _dqn_actor(n_envs, n, gamma, batch)
    refs = [NStepAccumulator(n, gamma) for _ in range(n_envs)]
    rows = actor.rows
    next_id = [1] * n_envs  # obs ids per copy; final observations get negative ids

    def first_obs() -> None:
        for i in range(n_envs):
            rows.obs[rows.t, i] = (i, next_id[i])
            next_id[i] += 1

    got: list[tuple] = []
    want: list[tuple] = []
    first_obs()
    for _ in range(steps):
        obs_ids = [int(rows.obs[rows.t, i, 1]) for i in range(n_envs)]
        actor.act(rows.obs[rows.t], 0)
        for i in range(n_envs):
            t = rows.t
            reward = float(rng.normal())
            end = rng.choice(["none", "term", "trunc"], p=[0.8, 0.1, 0.1])
            rows.reward[t, i] = reward
            nxt = next_id[i]
            next_id[i] += 1
            if end != "none":  # as the env does: end flags are written only where set
                rows.terminated[t, i] = end == "term"
                rows.truncated[t, i] = end == "trunc"
                rows.final_obs[t, i] = (i, -nxt)  # the true final observation
                nxt = next_id[i]  # the new episode's first observation
                next_id[i] += 1
            rows.obs[t + 1, i] = (i, nxt)
            reported = -nxt + 1 if end != "none" else nxt
            done = (end == "term", end == "trunc")
            for tr in refs[i].push(obs_ids[i], 7 + i, reward, reported, *done):
                reward32 = float(np.float32(tr.reward))
                want.append((i, tr.obs, tr.action, reward32, tr.next_obs, tr.terminated, tr.steps))
        for _, fields in actor.observe():
            got += _transitions(fields)
        event = rng.random()
        if event < 0.05:  # a new model: everything complete is sent under the old one
            for _, fields in actor.set_model(1, _Policy(), {}):
                got += _transitions(fields)
        elif event < 0.08:  # the env restarts: complete ones are sent, partial ones dropped
            for _, fields in actor.reset():
                got += _transitions(fields)
            for ref in refs:
                ref.reset()
            first_obs()
    for _, fields in actor.finish():
        got += _transitions(fields)
    assert sorted(got) == sorted(want)
    assert all(1 <= tr[6] <= n for tr in got)


def test_dqn_actor_messages_are_about_batch_size() -> None:
    actor = _dqn_actor(2, 3, 0.9, 10)
    rows = actor.rows
    sizes = []
    for _ in range(2 * rows.capacity):
        actor.act(rows.obs[rows.t], 0)
        sizes += [len(f["reward"]) for _, f in actor.observe()]
    assert sizes and all(10 <= s < 20 for s in sizes)


@pytest.mark.parametrize("step_s", [0.05, 0.001, 0.0002])
def test_dqn_actor_flushes_on_time_at_any_step_rate(monkeypatch, step_s) -> None:
    """A partial block leaves after client.flush_interval (0.5 s here), however fast the env
    steps: the clock is read less often at high rates, never too rarely to keep time."""
    from types import SimpleNamespace

    import soulsai.client.dqn_actor as actors

    clock = [1000.0]
    monkeypatch.setattr(actors, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    actor = _dqn_actor(1, 3, 0.9, 4096)  # a batch too large to fill: only time flushes
    actor.cfg.client.flush_interval = 0.5
    actor.set_model(0, _Policy(), {})  # the deadline counts from here, with the new interval
    rows = actor.rows
    sent_at = []
    for _ in range(int(3.0 / step_s)):
        clock[0] += step_s
        actor.act(rows.obs[rows.t], 0)
        if actor.observe():
            sent_at.append(clock[0])
    gaps = np.diff([1000.0, *sent_at])
    assert len(sent_at) >= 5
    assert all(0.5 <= g <= 0.5 + max(step_s, 0.5 / actor.CLOCK_CHECKS) * 1.5 for g in gaps), gaps

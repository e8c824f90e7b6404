"""The epsilon a DQN client acts with follows the schedule of the run's global env steps.

The training node's `env_steps` (sent with each model) already holds every client's steps up to
the model, this client's included; a client adds only the steps it took since the model came.
These tests drive real DQNActors the way the sampler does (act, observe, swap models) against a
node count kept by hand, with one and with two clients.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from soulsai.client.dqn_actor import DQNActor
from soulsai.config import load_config
from soulsai.model.schedules import epsilon

ROOT = Path(__file__).resolve().parents[2]
DECAY = 20_000


class _RecordingPolicy:
    """Greedy action 0; remembers the epsilon of every act()."""

    def __init__(self) -> None:
        self.eps: list[float] = []

    def act(self, obs: np.ndarray, eps: float, rng: np.random.Generator, out=None, mask=None):
        self.eps.append(eps)
        actions = np.zeros(len(obs), dtype=np.intp)
        if out is not None:
            out[...] = actions
        return actions


def _actor(index: int) -> DQNActor:
    cfg = load_config(ROOT / "config", ["dqn.exploration=schedule", f"dqn.eps_decay_steps={DECAY}"])
    cfg.dqn.hidden = [4]
    obs_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    return DQNActor(cfg, obs_space, gym.spaces.Discrete(2), index, np.random.default_rng(index))


class _Client:
    """One sampling client: an actor and its own step counter, as in Sampler.run."""

    def __init__(self, index: int) -> None:
        self.actor = _actor(index)
        self.steps = 0
        self.policy = _RecordingPolicy()

    def swap(self, model_id: int, node_env_steps: int, num_clients: int) -> None:
        self.policy = _RecordingPolicy()
        meta = {"env_steps": node_env_steps, "num_clients": num_clients}
        self.actor.set_model(model_id, self.policy, meta)

    def step(self, n: int) -> None:
        obs = np.zeros((1, 2), np.float32)
        for _ in range(n):
            self.actor.act(obs, self.steps)
            self.steps += 1
            self.actor.observe()


@pytest.mark.parametrize("num_clients", [1, 2])
def test_a_client_acts_with_the_schedule_of_the_global_step_count(num_clients: int) -> None:
    """Models come every 1,000 global steps; right after each swap every client acts with
    epsilon(node count at the model), and in between it lags the true global count by at most
    what the other clients did since the model plus one EPSILON_EVERY."""
    cfg = _actor(0).cfg.dqn
    slope = (cfg.eps_start - cfg.eps_end) / DECAY
    share = 1000 // num_clients
    # what a client cannot know: its peers' steps since the model, and one EPSILON_EVERY
    max_lag = (num_clients - 1) * (share + 1) + DQNActor.EPSILON_EVERY
    clients = [_Client(i) for i in range(num_clients)]
    node_env_steps = 0  # the training node's count: everything every client has stepped
    for c in clients:
        c.swap(0, node_env_steps, num_clients)
    for model_id in range(1, 16):
        for c in clients:
            c.step(share)
            node_env_steps += share
            acted = c.policy.eps[-1]
            assert abs(acted - epsilon(cfg, node_env_steps, 0, 1)) <= slope * max_lag + 1e-9
        for c in clients:
            c.swap(model_id, node_env_steps, num_clients)
            c.step(1)
            node_env_steps += 1
            assert c.policy.eps[0] == pytest.approx(epsilon(cfg, node_env_steps - 1, 0, 1))


def test_a_client_that_sampled_long_before_a_model_does_not_count_its_past_steps_again() -> None:
    """A client that took 12,000 steps with old models receives a model at a node count of
    8,000 (say, a restarted node, or one that dropped stale samples): it explores at the
    schedule's value for 8,000, not for 20,000."""
    c = _Client(0)
    c.swap(0, 0, 1)
    c.step(12_000)
    c.swap(5, 8_000, 1)
    c.step(1)
    cfg = c.actor.cfg.dqn
    assert c.policy.eps[0] == pytest.approx(epsilon(cfg, 8_000, 0, 1))
    assert c.policy.eps[0] > cfg.eps_end + 0.5 * (cfg.eps_start - cfg.eps_end)

"""DQNLearner, epsilon, and the shared networks (ObsNormalizer, QNetwork)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from soulsai.config.schema import DQNConfig
from soulsai.model.nets import ObsNormalizer, QNetwork, greedy_actions
from soulsai.model.schedules import epsilon
from soulsai.training.algorithms.dqn import DQNLearner
from soulsai.training.replay import ReplayBatch

torch.set_num_threads(1)

DEFAULTS = Path(__file__).resolve().parents[2] / "config" / "config_d.yaml"


def make_cfg(**overrides: Any) -> DQNConfig:
    base = yaml.safe_load(DEFAULTS.read_text())["dqn"]
    return DQNConfig(**{**base, **overrides})


def make_batch(seed: int = 0, n: int = 8, obs_dim: int = 3, n_actions: int = 2) -> ReplayBatch:
    g = torch.Generator().manual_seed(seed)
    return ReplayBatch(
        obs=torch.randn(n, obs_dim, generator=g),
        action=torch.randint(0, n_actions, (n,), generator=g),
        reward=torch.randn(n, generator=g),
        next_obs=torch.randn(n, obs_dim, generator=g),
        discount=torch.full((n,), 0.9**3),
    )


def huber(x: torch.Tensor, delta: float) -> torch.Tensor:
    a = x.abs()
    return torch.where(a <= delta, 0.5 * x**2, delta * (a - 0.5 * delta)).mean()


def params(net: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


def all_equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


# ---------------------------------------------------------------- networks


def test_obs_normalizer_matches_numpy_moments() -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(3.0, 2.0, size=(100, 4)).astype(np.float64)
    norm = ObsNormalizer((4,))
    for chunk in (data[:1], data[1:30], torch.from_numpy(data[30:])):
        norm.update(chunk)
    np.testing.assert_allclose(norm.mean.numpy(), data.mean(0), rtol=1e-5)
    np.testing.assert_allclose(norm.var.numpy(), data.var(0), rtol=1e-5)
    assert norm.count.dtype == torch.float64 and norm.count.shape == () and norm.count == 100
    out = norm(torch.from_numpy(data[:5]))
    assert out.dtype == torch.float32
    expected = (data[:5] - data.mean(0)) / np.sqrt(data.var(0) + 1e-8)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-4, atol=1e-5)
    assert norm(torch.full((1, 4), 1e6)).max() == 10.0


def test_obs_normalizer_disabled_is_identity() -> None:
    norm = ObsNormalizer((2,), enabled=False)
    norm.update(np.array([[5, 7], [9, 9]], dtype=np.uint8))
    x = torch.tensor([[1, 2]], dtype=torch.uint8)
    torch.testing.assert_close(norm(x), torch.tensor([[1.0, 2.0]]))
    assert set(norm.state_dict()) == {"mean", "var", "count"}


def test_qnetwork_state_dict_is_broadcastable() -> None:
    net = QNetwork((2, 3), 4, [8, 8], normalize_obs=True)
    state = net.state_dict()
    assert {"obs_norm.mean", "obs_norm.var", "obs_norm.count"} <= set(state)
    assert all(t.is_contiguous() for t in state.values())
    ptrs = [t.untyped_storage().data_ptr() for t in state.values()]
    assert len(set(ptrs)) == len(ptrs)
    obs = np.zeros((5, 2, 3), dtype=np.uint8)
    assert net(torch.from_numpy(obs)).shape == (5, 4)
    actions = greedy_actions(net, obs)
    assert actions.dtype == np.int64 and actions.shape == (5,)


# ---------------------------------------------------------------- learner


def test_update_matches_hand_computed_double_dqn() -> None:
    cfg = make_cfg(hidden=[4], huber_delta=0.5, target_update="hard", target_update_interval=1000)
    learner = DQNLearner(cfg, (3,), 2, seed=0)
    with torch.no_grad():  # target head = -online head: target argmax = online argmin
        for t_param, o_param in zip(
            learner.target.mlp[-1].parameters(), learner.online.mlp[-1].parameters(), strict=True
        ):
            t_param.copy_(-o_param)
    batch = make_batch()
    with torch.no_grad():
        next_actions = learner.online(batch.next_obs).argmax(1)
        next_q = learner.target(batch.next_obs)[torch.arange(8), next_actions]
        td_target = batch.reward + batch.discount * next_q
        q = learner.online(batch.obs)[torch.arange(8), batch.action]
        max_target = batch.reward + batch.discount * learner.target(batch.next_obs).amax(1)
    expected_loss = huber(q - td_target, 0.5)
    # plain DQN (max over the target) gives another loss: the double-DQN selection is checked
    assert not torch.allclose(expected_loss, huber(q - max_target, 0.5), rtol=1e-3)
    info = learner.update(batch)
    assert info["loss"] == pytest.approx(expected_loss.item(), rel=1e-5)
    assert info["q_mean"] == pytest.approx(q.mean().item(), rel=1e-5)
    assert info["grad_norm"] > 0 and learner.updates == 1


def test_update_without_double_dqn_takes_the_target_nets_max() -> None:
    cfg = make_cfg(hidden=[4], huber_delta=0.5, target_update="hard", double=False)
    learner = DQNLearner(cfg, (3,), 2, seed=0)
    with torch.no_grad():  # target head = -online head: the two nets pick opposite actions
        for t_param, o_param in zip(
            learner.target.mlp[-1].parameters(), learner.online.mlp[-1].parameters(), strict=True
        ):
            t_param.copy_(-o_param)
    batch = make_batch()
    with torch.no_grad():
        q = learner.online(batch.obs)[torch.arange(8), batch.action]
        max_target = batch.reward + batch.discount * learner.target(batch.next_obs).amax(1)
        pick = learner.online(batch.next_obs).argmax(1)
        double = (
            batch.reward + batch.discount * learner.target(batch.next_obs)[torch.arange(8), pick]
        )
    assert not torch.allclose(huber(q - max_target, 0.5), huber(q - double, 0.5), rtol=1e-3)
    info = learner.update(batch)
    assert info["loss"] == pytest.approx(huber(q - max_target, 0.5).item(), rel=1e-5)


def test_zero_discount_target_is_reward() -> None:
    cfg = make_cfg(hidden=[4], huber_delta=1.0)
    learner = DQNLearner(cfg, (3,), 2, seed=1)
    with torch.no_grad():
        for p in learner.target.parameters():
            p.fill_(1e3)
    batch = make_batch(seed=2)._replace(discount=torch.zeros(8))
    with torch.no_grad():
        q = learner.online(batch.obs)[torch.arange(8), batch.action]
    info = learner.update(batch)
    assert info["loss"] == pytest.approx(huber(q - batch.reward, 1.0).item(), rel=1e-5)


def test_hard_target_update_at_interval() -> None:
    cfg = make_cfg(hidden=[4], lr=0.01, target_update="hard", target_update_interval=3)
    learner = DQNLearner(cfg, (3,), 2, seed=0)
    initial = params(learner.target)
    for i in range(1, 7):
        learner.update(make_batch(seed=i))
        target, online = params(learner.target), params(learner.online)
        if i % 3 == 0:
            assert all_equal(target, online), i
            synced = target
        else:
            assert all_equal(target, initial if i < 3 else synced), i
            assert not all_equal(target, online), i


def test_polyak_update() -> None:
    cfg = make_cfg(hidden=[4], lr=0.01, target_update="polyak", tau=1.0)
    learner = DQNLearner(cfg, (3,), 2, seed=0)
    learner.update(make_batch())
    assert all_equal(params(learner.target), params(learner.online))

    learner = DQNLearner(make_cfg(hidden=[4], lr=0.01, tau=0.25), (3,), 2, seed=0)
    before = params(learner.target)
    learner.update(make_batch())
    for t, b, o in zip(params(learner.target), before, params(learner.online), strict=True):
        torch.testing.assert_close(t, 0.75 * b + 0.25 * o)


def test_normalizer_shared_with_target() -> None:
    learner = DQNLearner(make_cfg(hidden=[4], normalize_obs=True), (3,), 2, seed=0)
    learner.update_normalizer(np.arange(12, dtype=np.float32).reshape(4, 3))
    for name in ("mean", "var", "count"):
        assert torch.equal(
            getattr(learner.target.obs_norm, name), getattr(learner.online.obs_norm, name)
        )
    assert learner.online.obs_norm.count == 4
    assert "obs_norm.count" in learner.policy_state()

    off = DQNLearner(make_cfg(hidden=[4], normalize_obs=False), (3,), 2, seed=0)
    off.update_normalizer(np.ones((4, 3), dtype=np.float32))
    assert off.online.obs_norm.count == 0


def test_policy_state_is_a_detached_copy() -> None:
    learner = DQNLearner(make_cfg(hidden=[4], lr=0.01), (3,), 2, seed=0)
    state = learner.policy_state()
    assert all(
        t.is_contiguous() and not t.requires_grad and t.device.type == "cpu" for t in state.values()
    )
    before = {k: v.clone() for k, v in state.items()}
    learner.update(make_batch())
    assert all(torch.equal(state[k], before[k]) for k in state)


def test_state_dict_round_trip() -> None:
    cfg = make_cfg(
        hidden=[8], lr=0.01, target_update="hard", target_update_interval=2, normalize_obs=True
    )
    learner = DQNLearner(cfg, (3,), 2, seed=0)
    learner.update_normalizer(np.random.default_rng(0).normal(size=(16, 3)))
    for i in range(3):
        learner.update(make_batch(seed=i))
    buf = io.BytesIO()
    torch.save(learner.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)

    other = DQNLearner(cfg, (3,), 2, seed=123)
    other.load_state_dict(state)
    assert other.updates == 3
    probe = make_batch(seed=50).obs
    with torch.no_grad():
        assert torch.equal(other.online(probe), learner.online(probe))
        assert torch.equal(other.target(probe), learner.target(probe))
    batch = make_batch(seed=9)
    assert other.update(batch) == learner.update(batch)
    assert all_equal(params(other.online), params(learner.online))
    assert all_equal(params(other.target), params(learner.target))


def test_learns_two_state_problem() -> None:
    """s0 --a--> s1 with reward [1, 0][a] and discount 0.9; s1 --a--> end with reward [0, 2][a].

    True values: Q(s1) = [0, 2], Q(s0) = [1, 0] + 0.9 * 2 = [2.8, 1.8].
    """
    cfg = make_cfg(hidden=[16], lr=0.01, target_update="polyak", tau=0.1, normalize_obs=True)
    learner = DQNLearner(cfg, (2,), 2, seed=0)
    s0, s1 = [1.0, 0.0], [0.0, 1.0]
    batch = ReplayBatch(
        obs=torch.tensor([s0, s0, s1, s1]),
        action=torch.tensor([0, 1, 0, 1]),
        reward=torch.tensor([1.0, 0.0, 0.0, 2.0]),
        next_obs=torch.tensor([s1, s1, s1, s1]),
        discount=torch.tensor([0.9, 0.9, 0.0, 0.0]),
    )
    learner.update_normalizer(batch.obs.numpy())
    for _ in range(400):
        learner.update(batch)
    with torch.no_grad():
        q = learner.online(torch.tensor([s0, s1]))
    torch.testing.assert_close(q, torch.tensor([[2.8, 1.8], [0.0, 2.0]]), atol=0.05, rtol=0)
    assert greedy_actions(learner.online, np.array([s0, s1])).tolist() == [0, 1]


# ---------------------------------------------------------------- exploration


def test_epsilon_schedule() -> None:
    cfg = make_cfg(exploration="schedule", eps_start=1.0, eps_end=0.1, eps_decay_steps=1000)
    assert epsilon(cfg, 0, 0, 4) == 1.0
    assert epsilon(cfg, 500, 3, 4) == pytest.approx(0.55)
    assert epsilon(cfg, 1000, 0, 1) == pytest.approx(0.1)
    assert epsilon(cfg, 10**9, 0, 1) == pytest.approx(0.1)


def test_epsilon_ladder() -> None:
    cfg = make_cfg(exploration="ladder", ladder_eps=0.4, ladder_alpha=7.0)
    assert epsilon(cfg, 0, 0, 1) == 0.4
    assert epsilon(cfg, 123, 0, 8) == pytest.approx(0.4)
    assert epsilon(cfg, 123, 7, 8) == pytest.approx(0.4**8)
    assert epsilon(cfg, 123, 1, 3) == pytest.approx(0.4**4.5)
    with pytest.raises(ValueError):
        epsilon(cfg, 0, 8, 8)

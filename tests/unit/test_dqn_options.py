"""Issue 19's DQN options wired in: dueling, noisy and quantile heads, prioritized replay.

- QNetwork's state_dict follows dqn_weight_shapes for every option combination, and with all
  options off it is the plain mlp.<i> network older checkpoints and clients know;
- the client's numpy policy equals the torch network for each combination (bare Box and Dict
  observations, with and without a mask); a noisy client's actions vary with its own noise and
  equal torch's given the same noise;
- the learner's QR-DQN target is the masked double-DQN one (by hand), and prioritized replay
  weights the per-sample loss by the importance weights (by hand) and changes priorities.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import soulsai.envs.soulslike  # noqa: F401  (registers soulsai/IudexLike-v0)
from soulsai.client.dqn_actor import DQNActor
from soulsai.config import load_config
from soulsai.model.heads import NoisyLinear
from soulsai.model.masks_torch import masked_argmax
from soulsai.model.nets import QNetwork
from soulsai.model.numpy_q import dqn_policy
from soulsai.model.obs import env_layout, obs_leaves
from soulsai.model.shapes import dqn_weight_shapes
from soulsai.training.algorithms.dqn import DQNLearner
from soulsai.training.algorithms.losses import quantile_huber_loss
from soulsai.training.replay import ReplayBatch

ROOT = Path(__file__).resolve().parents[2]
COMBOS = list(itertools.product([False, True], [False, True], [1, 5]))  # dueling, noisy, N


def dqn_cfg(*sets: str):  # noqa: ANN201
    return load_config(ROOT / "config", ["algo=dqn", *sets])


def options(dueling: bool, noisy: bool, n: int) -> list[str]:
    return [f"dqn.dueling={dueling}", f"dqn.noisy={noisy}", f"dqn.n_quantiles={n}"]


def net_of(cfg, obs, n_actions: int, seed: int = 0) -> QNetwork:  # noqa: ANN001
    torch.manual_seed(seed)
    d = cfg.dqn
    return QNetwork(
        obs, n_actions, d.hidden, d.normalize_obs, dueling=d.dueling, noisy=d.noisy,
        n_quantiles=d.n_quantiles, noisy_sigma0=d.noisy_sigma0,
    )  # fmt: skip


def shapes(net: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


@pytest.mark.parametrize(("dueling", "noisy", "n"), COMBOS)
def test_weight_shapes_follow_the_options(dueling: bool, noisy: bool, n: int) -> None:
    cfg = dqn_cfg(*options(dueling, noisy, n), "dqn.hidden=[16,8]")
    net = net_of(cfg, (4,), 3)
    assert dqn_weight_shapes(cfg.dqn, (4,), 3) == shapes(net)
    assert any(k.startswith("head.") for k in shapes(net)) == (dueling or noisy or n > 1)


def test_all_options_off_is_the_plain_network_of_older_checkpoints() -> None:
    """The tensor names and shapes of before the options: an old state_dict loads."""
    old = {
        "obs_norm.mean": (4,), "obs_norm.var": (4,), "obs_norm.count": (),
        "mlp.1.weight": (16, 4), "mlp.1.bias": (16,), "mlp.3.weight": (8, 16),
        "mlp.3.bias": (8,), "mlp.5.weight": (3, 8), "mlp.5.bias": (3,),
    }  # fmt: skip
    cfg = dqn_cfg("dqn.hidden=[16,8]")
    net = net_of(cfg, (4,), 3)
    assert shapes(net) == old == dqn_weight_shapes(cfg.dqn, (4,), 3)
    state = {k: torch.randn(s) if s else torch.tensor(3.0, dtype=torch.float64)
             for k, s in old.items()}  # fmt: skip
    state["obs_norm.var"] = state["obs_norm.var"].abs() + 0.5
    net.load_state_dict(state)  # strict: names and shapes as saved before the options
    learner = DQNLearner(cfg.dqn, (4,), 3, seed=0)
    saved = learner.state_dict()
    saved["online"] = {**state}
    saved["target"] = {**state}
    learner.load_state_dict(saved)
    x = torch.randn(5, 4)
    torch.testing.assert_close(learner.online(x), net(x))


def copy_noise(policy, net: QNetwork) -> None:  # noqa: ANN001
    """Give the torch net's noisy layers the numpy policy's noise, layer by layer (by name)."""
    numpy_layers = {**policy.noisy_layers}
    numpy_layers |= {f"head.{k}": v for k, v in policy.head.layers.items()}
    torch_layers = {n: m for n, m in net.named_modules() if isinstance(m, NoisyLinear)}
    assert set(numpy_layers) == set(torch_layers) and len(torch_layers) >= 2
    for name, module in torch_layers.items():
        layer = numpy_layers[name]
        module.set_noise(torch.from_numpy(layer.eps_in), torch.from_numpy(layer.eps_out))


def _twin_check(cfg, obs, n_actions, batch, torch_batch, mask) -> None:  # noqa: ANN001
    net = net_of(cfg, obs, n_actions, seed=3)
    if isinstance(obs, tuple):  # a normalizer that does something
        net.obs_norm.update(np.random.default_rng(9).normal(1.0, 3.0, size=(64, *obs)))
    layout = obs if not isinstance(obs, tuple) else None
    policy = dqn_policy(net.state_dict(), cfg.dqn, layout, n_actions, cfg.env.discrete_obs)
    if cfg.dqn.noisy:  # the twin starts with the noise the state carries: torch's
        with torch.no_grad():
            want = net(torch_batch).numpy()
        np.testing.assert_allclose(policy.q_values(batch), want, rtol=1e-5, atol=1e-5)
        policy.reset_noise(np.random.default_rng(7))
        copy_noise(policy, net)
    with torch.no_grad():
        want = net(torch_batch).numpy()
    got = policy.q_values(batch)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    rng = np.random.default_rng(0)
    actions = policy.act(batch, 0.0, rng, mask=mask)
    if mask is None:
        np.testing.assert_array_equal(actions, want.argmax(axis=1))
    else:
        np.testing.assert_array_equal(actions, np.where(mask, want, -np.inf).argmax(axis=1))
    # evaluation: the means only, as torch in eval mode
    policy_eval = dqn_policy(
        net.state_dict(), cfg.dqn, layout, n_actions, cfg.env.discrete_obs, use_noise=False
    )
    net.eval()
    with torch.no_grad():
        want_eval = net(torch_batch).numpy()
    np.testing.assert_allclose(policy_eval.q_values(batch), want_eval, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize(("dueling", "noisy", "n"), COMBOS)
def test_numpy_twin_equals_torch_on_a_box(dueling: bool, noisy: bool, n: int, masked: bool) -> None:
    cfg = dqn_cfg(*options(dueling, noisy, n), "dqn.hidden=[16,8]", "dqn.normalize_obs=true")
    x = np.random.default_rng(1).normal(size=(32, 4)).astype(np.float32)
    mask = np.random.default_rng(2).random((32, 3)) < 0.6 if masked else None
    if mask is not None:
        mask[:, 0] = True
    _twin_check(cfg, (4,), 3, x, torch.from_numpy(x), mask)


@pytest.mark.parametrize(("dueling", "noisy", "n"), COMBOS)
def test_numpy_twin_equals_torch_on_dict_observations_with_masks(
    dueling: bool, noisy: bool, n: int
) -> None:
    cfg = load_config(
        ROOT / "config",
        ["algo=dqn", "env.id=soulsai/IudexLike-v0", 'env.imports=["soulsai.envs.soulslike"]',
         "env.action_mask=action_mask", "dqn.hidden=[32,16]", "dqn.normalize_obs=true",
         *options(dueling, noisy, n)],
    )  # fmt: skip
    env = gym.make("soulsai/IudexLike-v0")
    layout = env_layout(cfg.env, env.observation_space)
    rows, masks = [], []
    obs, info = env.reset(seed=0)
    for _ in range(24):
        rows.append(obs_leaves(layout, obs, batched=False))
        masks.append(info["action_mask"].astype(bool))
        obs, _, term, trunc, info = env.step(int(np.flatnonzero(info["action_mask"])[0]))
        if term or trunc:
            obs, info = env.reset()
    leaves = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    n_actions = int(env.action_space.n)
    _twin_check(
        cfg, layout, n_actions, leaves, {k: torch.as_tensor(v) for k, v in leaves.items()},
        np.stack(masks),
    )  # fmt: skip


def test_noisy_client_acts_greedily_on_its_own_noise_which_varies() -> None:
    cfg = dqn_cfg("dqn.noisy=true", "dqn.noisy_sigma0=2.0", "dqn.hidden=[16]", "env.num_envs=1")
    env = gym.make("CartPole-v1")
    actor = DQNActor(cfg, env.observation_space, env.action_space, 0, np.random.default_rng(5))
    net = net_of(cfg, (4,), 2, seed=4)
    assert shapes(net) == actor.expected
    actor.set_model(1, actor.make_policy(net.state_dict()), {"env_steps": 0})
    obs = np.zeros((1, 4), np.float32)
    seen = set()
    for step in range(60):
        action = int(actor.act(obs, step)[0])
        assert actor.epsilon == 0.0
        seen.add(action)
        copy_noise(actor.policy, net)
        with torch.no_grad():
            assert action == int(net(torch.from_numpy(obs)).argmax(dim=1)[0])
    assert seen == {0, 1}  # the same observation, different noise: both actions


def _batch(n_obs: int = 3, b: int = 4, seed: int = 0) -> ReplayBatch:
    g = torch.Generator().manual_seed(seed)
    return ReplayBatch(
        obs=torch.randn(b, n_obs, generator=g),
        action=torch.randint(0, 3, (b,), generator=g),
        reward=torch.randn(b, generator=g),
        next_obs=torch.randn(b, n_obs, generator=g),
        discount=torch.tensor([0.9, 0.0, 0.81, 0.9])[:b],
        next_mask=torch.tensor(
            [[False, True, True], [False, False, False], [True, False, False], [True, True, False]]
        )[:b],
    )


def _quantile_learner(*sets: str) -> tuple[DQNLearner, ReplayBatch, QNetwork, QNetwork]:
    """A 4-quantile learner whose target net differs from its online one, `_batch()`, and
    copies of both nets as they were before any update."""
    cfg = dqn_cfg(
        "dqn.n_quantiles=4", "dqn.hidden=[8]", "dqn.quantile_kappa=1.0", "dqn.lr=0.01", *sets
    )
    learner = DQNLearner(cfg.dqn, (3,), 3, seed=0)
    with torch.no_grad():  # a target net unlike the online one
        for p in learner.target.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return learner, _batch(), copy.deepcopy(learner.online), copy.deepcopy(learner.target)


def test_quantile_learner_uses_the_masked_double_dqn_target_by_hand() -> None:
    learner, batch, online, target = _quantile_learner()
    with torch.no_grad():
        q_next = online(batch.next_obs)  # (B, A): the quantile mean
        theta_next = target.quantiles(batch.next_obs)  # (B, A, N)
        want_rows = []
        for i in range(4):
            valid = batch.next_mask[i]
            a_star = int(torch.where(valid, q_next[i], -torch.inf).argmax()) if valid.any() else 0
            want_rows.append(batch.reward[i] + batch.discount[i] * theta_next[i, a_star])
        target_theta = torch.stack(want_rows)
    theta = online.quantiles(batch.obs)[torch.arange(4), batch.action]
    want_loss = quantile_huber_loss(theta, target_theta, 1.0).mean()
    info = learner.update(batch)
    assert info["loss"] == pytest.approx(want_loss.item(), rel=1e-6)
    # the unmasked argmax gives another loss: the mask mattered in this batch
    with torch.no_grad():
        a_free = q_next.argmax(dim=1)
        free = batch.reward[:, None] + batch.discount[:, None] * theta_next[torch.arange(4), a_free]
    assert quantile_huber_loss(theta, free, 1.0).mean().item() != pytest.approx(info["loss"])


def test_quantile_learner_without_double_dqn_picks_on_the_target_mean_among_valid() -> None:
    learner, batch, online, target = _quantile_learner("dqn.double=false")

    def loss_picking_on(q_next: torch.Tensor) -> float:
        with torch.no_grad():
            theta_next = target.quantiles(batch.next_obs)
            a_star = masked_argmax(q_next, batch.next_mask)
            want = (
                batch.reward[:, None]
                + batch.discount[:, None] * theta_next[torch.arange(4), a_star]
            )
            theta = online.quantiles(batch.obs)[torch.arange(4), batch.action]
            return quantile_huber_loss(theta, want, 1.0).mean().item()

    with torch.no_grad():
        by_target, by_online = target(batch.next_obs), online(batch.next_obs)
    assert loss_picking_on(by_target) != pytest.approx(loss_picking_on(by_online))
    info = learner.update(batch)
    assert info["loss"] == pytest.approx(loss_picking_on(by_target), rel=1e-6)


def test_prioritized_loss_is_the_importance_weighted_per_sample_loss() -> None:
    cfg = dqn_cfg("dqn.hidden=[8]", "dqn.huber_delta=1.0")
    learner = DQNLearner(cfg.dqn, (3,), 3, seed=0)
    batch = _batch()
    weights = torch.tensor([1.0, 0.25, 0.5, 0.1])
    online, target = copy.deepcopy(learner.online), copy.deepcopy(learner.target)
    with torch.no_grad():
        q_next = online(batch.next_obs).masked_fill(~batch.next_mask, -torch.inf)
        a_star = q_next.argmax(dim=1)
        td_target = batch.reward + batch.discount * target(batch.next_obs)[torch.arange(4), a_star]
        q = online(batch.obs)[torch.arange(4), batch.action]
        per_sample = torch.nn.functional.huber_loss(q, td_target, reduction="none")
    info = learner.update(batch, weights)
    assert info["loss"] == pytest.approx((weights * per_sample).mean().item(), rel=1e-6)
    assert info["loss"] != pytest.approx(per_sample.mean().item(), rel=1e-3)
    np.testing.assert_allclose(learner.td_errors, (td_target - q).abs().numpy(), rtol=1e-6)


def test_quantile_priorities_are_the_per_sample_quantile_loss() -> None:
    cfg = dqn_cfg("dqn.n_quantiles=3", "dqn.hidden=[8]")
    learner = DQNLearner(cfg.dqn, (3,), 3, seed=0)
    batch = _batch()
    online = copy.deepcopy(learner.online)
    learner.update(batch, torch.ones(4))
    assert learner.td_errors is not None and learner.td_errors.shape == (4,)
    assert (learner.td_errors >= 0).all()
    with torch.no_grad():
        theta = online.quantiles(batch.obs)[torch.arange(4), batch.action]
    assert np.isfinite(learner.td_errors).all() and theta.shape == (4, 3)


def test_noisy_learner_draws_new_noise_for_both_nets_every_step() -> None:
    cfg = dqn_cfg("dqn.noisy=true", "dqn.hidden=[8]")
    learner = DQNLearner(cfg.dqn, (3,), 3, seed=0)
    before = [m.eps_in.clone() for n in (learner.online, learner.target) for m in n.modules()
              if isinstance(m, NoisyLinear)]  # fmt: skip
    learner.update(_batch())
    after = [m.eps_in for n in (learner.online, learner.target) for m in n.modules()
             if isinstance(m, NoisyLinear)]  # fmt: skip
    assert len(before) == 4  # the hidden layer and the head, of each net
    assert all(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert not torch.equal(after[0], after[2])  # online and target: their own noise


def test_nonfinite_step_is_refused_with_every_option_on() -> None:
    cfg = dqn_cfg(*options(True, True, 4), "dqn.hidden=[8]")
    learner = DQNLearner(cfg.dqn, (3,), 3, seed=0)
    batch = _batch()._replace(reward=torch.tensor([float("inf"), 0.0, 0.0, 0.0]))
    weights_before = copy.deepcopy(learner.online.state_dict())
    info = learner.update(batch, torch.ones(4))
    assert np.isnan(info["loss"]) and learner.nonfinite_updates == 1
    assert learner.td_errors is None
    for k, v in learner.online.state_dict().items():
        if "eps_" not in k:  # the noise was redrawn; the weights are untouched
            torch.testing.assert_close(v, weights_before[k])

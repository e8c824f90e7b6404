"""The client's numpy policy computes what the torch QNetwork computes, and explores as asked."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from soulsai.config import load_config
from soulsai.model.nets import QNetwork
from soulsai.model.numpy_q import NumpyQPolicy
from soulsai.model.shapes import dqn_weight_shapes
from soulsai.transport.weights import decode_weights, encode_weights

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[2]


def make_net(
    obs_shape: tuple[int, ...] = (4,),
    n_actions: int = 3,
    hidden: list[int] | None = None,
    normalize: bool = True,
    seed: int = 0,
    feed: bool = True,
) -> QNetwork:
    """A QNetwork with random weights (and biases), its normalizer fed non-trivial data."""
    torch.manual_seed(seed)
    net = QNetwork(obs_shape, n_actions, [32, 16] if hidden is None else hidden, normalize)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.5)
    if feed:
        rng = np.random.default_rng(seed)
        scale = rng.uniform(0.1, 5.0, size=obs_shape)
        for _ in range(3):
            net.obs_norm.update(rng.normal(2.0, 1.0, size=(50, *obs_shape)) * scale)
    return net


def observations(n: int, obs_shape: tuple[int, ...] = (4,), seed: int = 1) -> np.ndarray:
    return (np.random.default_rng(seed).normal(1.0, 4.0, size=(n, *obs_shape))).astype(np.float32)


def torch_q(net: QNetwork, obs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.as_tensor(obs)).numpy()


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_q_values_match_qnetwork(normalize: bool, seed: int) -> None:
    net = make_net(normalize=normalize, seed=seed)
    assert net.obs_norm.count.item() == 150 and not torch.all(net.obs_norm.mean == 0)
    policy = NumpyQPolicy(net.state_dict(), normalize_obs=normalize)
    obs = observations(256, seed=seed + 10)
    q = policy.q_values(obs)
    assert q.shape == (256, 3) and q.dtype == np.float32
    np.testing.assert_allclose(q, torch_q(net, obs), rtol=1e-5, atol=1e-5)


def test_normalization_changes_the_result() -> None:
    """Guards the test above: with fed statistics, normalizing really makes a difference."""
    net = make_net()
    obs = observations(32)
    with_norm = NumpyQPolicy(net.state_dict(), normalize_obs=True).q_values(obs)
    without = NumpyQPolicy(net.state_dict(), normalize_obs=False).q_values(obs)
    assert not np.allclose(with_norm, without, atol=1e-3)


def test_normalized_observations_are_clipped_like_torch() -> None:
    net = make_net()
    obs = observations(16) * 1e4  # far outside the statistics: clipped at +-10
    policy = NumpyQPolicy(net.state_dict(), normalize_obs=True)
    np.testing.assert_allclose(policy.q_values(obs), torch_q(net, obs), rtol=1e-5, atol=1e-5)


def test_fresh_normalizer_matches() -> None:
    net = make_net(feed=False)  # mean 0, var 1, count 0
    policy = NumpyQPolicy(net.state_dict(), normalize_obs=True)
    obs = observations(64)
    np.testing.assert_allclose(policy.q_values(obs), torch_q(net, obs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "obs_shape, hidden, n_actions",
    [((4,), [8], 2), ((2, 3), [16, 16, 16], 5), ((8,), [], 4), ((1,), [64], 2)],
)
def test_q_values_match_for_other_shapes(
    obs_shape: tuple[int, ...], hidden: list[int], n_actions: int
) -> None:
    net = make_net(obs_shape, n_actions, hidden)
    policy = NumpyQPolicy(net.state_dict(), normalize_obs=True)
    obs = observations(40, obs_shape)
    q = policy.q_values(obs)
    assert q.shape == (40, n_actions)
    np.testing.assert_allclose(q, torch_q(net, obs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float64, np.int64, np.uint8])
def test_other_observation_dtypes(dtype: type) -> None:
    net = make_net()
    obs = np.abs(observations(20)).astype(dtype)
    before = obs.copy()
    policy = NumpyQPolicy(net.state_dict(), normalize_obs=True)
    np.testing.assert_allclose(policy.q_values(obs), torch_q(net, obs), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(obs, before)  # the caller's array is untouched


def test_observations_are_not_modified() -> None:
    net = make_net(normalize=False)
    obs = observations(8)
    before = obs.copy()
    NumpyQPolicy(net.state_dict(), normalize_obs=False).act(obs, 0.0, np.random.default_rng(0))
    np.testing.assert_array_equal(obs, before)


def test_weights_from_the_wire_and_numpy_state() -> None:
    net = make_net()
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    tensors, _ = decode_weights(encode_weights(net.state_dict(), 5), shapes, 1 << 20)
    obs = observations(32)
    expected = torch_q(net, obs)
    for state in (tensors, {k: v.numpy() for k, v in net.state_dict().items()}):
        q = NumpyQPolicy(state, normalize_obs=True).q_values(obs)
        np.testing.assert_allclose(q, expected, rtol=1e-5, atol=1e-5)


def test_policy_does_not_alias_the_state() -> None:
    net = make_net()
    policy = NumpyQPolicy(net.state_dict(), normalize_obs=True)
    obs = observations(8)
    q = policy.q_values(obs)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
        net.obs_norm.update(np.full((10, 4), 100.0))
    np.testing.assert_array_equal(policy.q_values(obs), q)


# ---------------------------------------------------------------- acting


def test_epsilon_zero_is_greedy() -> None:
    net = make_net(n_actions=4)
    policy = NumpyQPolicy(net.state_dict(), normalize_obs=True)
    obs = observations(500)
    rng = np.random.default_rng(0)
    actions = policy.act(obs, 0.0, rng)
    assert actions.dtype == np.int64 and actions.shape == (500,)
    np.testing.assert_array_equal(actions, policy.q_values(obs).argmax(axis=1))
    q = torch_q(net, obs)
    top2 = np.sort(q, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-4  # ignore near-ties between float implementations
    np.testing.assert_array_equal(actions[clear], q.argmax(axis=1)[clear])
    assert len(set(actions.tolist())) > 1, "random weights should prefer different actions"


def test_epsilon_one_is_uniform_in_range() -> None:
    n_actions = 4
    net = make_net(n_actions=n_actions)
    policy = NumpyQPolicy(net.state_dict(), normalize_obs=True)
    obs = np.repeat(observations(1), 8000, axis=0)  # one state: greedy would always agree
    actions = policy.act(obs, 1.0, np.random.default_rng(0))
    assert actions.dtype == np.int64
    assert actions.min() >= 0 and actions.max() < n_actions
    counts = np.bincount(actions, minlength=n_actions)
    assert counts.shape == (n_actions,)
    # each count is Binomial(8000, 1/4): mean 2000, sd ~39; 6 sd of slack
    assert np.all(np.abs(counts - 2000) < 240), counts


def test_intermediate_epsilon_mixes_greedy_and_random() -> None:
    net = make_net(n_actions=2)
    policy = NumpyQPolicy(net.state_dict(), normalize_obs=True)
    obs = np.repeat(observations(1), 10000, axis=0)
    greedy = policy.act(obs[:1], 0.0, np.random.default_rng(0))[0]
    actions = policy.act(obs, 0.3, np.random.default_rng(1))
    # greedy with probability 0.7 + 0.3 / 2
    assert abs(np.mean(actions == greedy) - 0.85) < 0.02


def test_acting_is_reproducible_with_the_same_rng() -> None:
    policy = NumpyQPolicy(make_net().state_dict(), normalize_obs=True)
    obs = observations(300)
    a = policy.act(obs, 0.5, np.random.default_rng(7))
    b = policy.act(obs, 0.5, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)


def test_actions_written_into_out_are_the_same() -> None:
    policy = NumpyQPolicy(make_net().state_dict(), normalize_obs=True)
    obs = observations(300)
    out = np.full(len(obs), -1, dtype=np.intp)
    a = policy.act(obs, 0.5, np.random.default_rng(7))
    b = policy.act(obs, 0.5, np.random.default_rng(7), out=out)
    assert b is out
    np.testing.assert_array_equal(a, out)


# ---------------------------------------------------------------- expected shapes


@pytest.mark.parametrize(
    "sets, obs_shape, n_actions",
    [
        ([], (4,), 2),
        (["dqn.hidden=[64]", "dqn.normalize_obs=false"], (8,), 4),
        (["dqn.hidden=[16, 8, 4]"], (2, 3), 5),
    ],
)
def test_dqn_weight_shapes_match_qnetwork(
    tmp_path: Path, sets: list[str], obs_shape: tuple[int, ...], n_actions: int
) -> None:
    shutil.copy(ROOT / "config" / "config_d.yaml", tmp_path / "config_d.yaml")
    cfg = load_config(tmp_path, sets)
    shapes = dqn_weight_shapes(cfg.dqn, obs_shape, n_actions)
    net = QNetwork(obs_shape, n_actions, cfg.dqn.hidden, cfg.dqn.normalize_obs)
    assert shapes == {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert list(shapes) == list(net.state_dict())
    assert shapes["obs_norm.mean"] == obs_shape and shapes["obs_norm.count"] == ()
    last = 2 * len(cfg.dqn.hidden) + 1
    assert shapes[f"mlp.{last}.weight"] == (n_actions, cfg.dqn.hidden[-1])
    # a network built to these shapes is accepted by the wire decoder and drives the policy
    tensors, _ = decode_weights(encode_weights(net.state_dict(), 1), shapes, 1 << 24)
    obs = observations(3, obs_shape)
    policy = NumpyQPolicy(tensors, cfg.dqn.normalize_obs)
    np.testing.assert_allclose(policy.q_values(obs), torch_q(net, obs), rtol=1e-5, atol=1e-5)

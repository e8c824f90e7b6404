"""PPO: GAE by hand, the clipped objective on a tiny batch, the learner, the client's numpy
actor-critic against the torch one, and the rollout fragments a PPO client builds."""

from __future__ import annotations

import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from soulsai.client.ppo_actor import PPOActor
from soulsai.config import load_config
from soulsai.model.nets import ActorCritic
from soulsai.model.numpy_ac import NumpyActorCritic
from soulsai.model.specs import ppo_experience_spec
from soulsai.training.algorithms.ppo import PPOLearner, clipped_surrogate, value_loss
from soulsai.training.rollout import RolloutBatch, RolloutBuffer, compute_gae
from soulsai.transport.envelope import decode_experience, encode_experience

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    d = tmp_path_factory.mktemp("cfg")
    shutil.copy(ROOT / "config" / "config_d.yaml", d / "config_d.yaml")
    return load_config(d, ["algo=ppo"])


# ---------------------------------------------------------------- GAE


def test_gae_hand_computed_with_termination_truncation_and_fragment_end() -> None:
    # One fragment of 5 rows: an episode terminates at t=1, the next is truncated at t=3, and
    # the fragment ends at t=4 (mid-episode). gamma = lambda = 0.5, so gamma * lambda = 0.25.
    rewards = np.array([1, 2, 3, 4, 5], np.float32)
    values = np.array([0.5, 1.0, 1.5, 2.0, 2.5], np.float32)
    # V(s_{t+1}): t=1 terminated (ignored), t=3 the truncated episode's final obs, t=4 the obs
    # after the fragment.
    next_values = np.array([1.0, 99.0, 2.0, 4.0, 6.0], np.float32)
    terminated = np.array([0, 1, 0, 0, 0], np.float32)
    ends = np.array([0, 1, 0, 1, 1], bool)
    adv, ret = compute_gae(rewards, values, next_values, terminated, ends, 0.5, 0.5)
    # deltas: 1+0.5*1-0.5=1.0 | 2-1=1.0 | 3+0.5*2-1.5=2.5 | 4+0.5*4-2=4.0 | 5+0.5*6-2.5=5.5
    # A_4=5.5, A_3=4.0 (episode ended), A_2=2.5+0.25*4=3.5, A_1=1.0, A_0=1.0+0.25*1=1.25
    np.testing.assert_allclose(adv, [1.25, 1.0, 3.5, 4.0, 5.5])
    np.testing.assert_allclose(ret, [1.75, 2.0, 5.0, 6.0, 8.0])


def test_gae_truncation_bootstraps_termination_does_not() -> None:
    args = (np.ones(1, np.float32), np.zeros(1, np.float32), np.full(1, 10.0, np.float32))
    truncated, _ = compute_gae(*args, np.zeros(1), np.ones(1, bool), 0.9, 0.95)
    terminated, _ = compute_gae(*args, np.ones(1), np.ones(1, bool), 0.9, 0.95)
    assert truncated[0] == pytest.approx(1 + 0.9 * 10) and terminated[0] == pytest.approx(1.0)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(-10, 10), min_size=1, max_size=20),
    st.floats(0.5, 1.0),
    st.floats(-5, 5),
)
def test_gae_lambda_one_is_the_bootstrapped_discounted_return(rewards, gamma, boot) -> None:
    n = len(rewards)
    r = np.array(rewards, np.float32)
    values = np.random.default_rng(n).normal(size=n).astype(np.float32)
    next_values = np.append(values[1:], boot).astype(np.float32)
    ends = np.zeros(n, bool)
    ends[-1] = True
    _, ret = compute_gae(r, values, next_values, np.zeros(n), ends, gamma, 1.0)
    want = [
        sum(gamma**k * r[t + k] for k in range(n - t)) + gamma ** (n - t) * boot for t in range(n)
    ]
    np.testing.assert_allclose(ret, want, rtol=1e-4, atol=1e-3)


def _fragment(n: int, start: float, last_at: list[int]) -> dict[str, np.ndarray]:
    last = np.zeros(n, np.uint8)
    last[last_at] = 1
    return {
        "obs": np.arange(n * 4, dtype=np.float32).reshape(n, 4) + start,
        "action": np.zeros(n, np.int64),
        "reward": np.arange(n, dtype=np.float32) + start,
        "terminated": np.zeros(n, np.uint8),
        "truncated": np.zeros(n, np.uint8),
        "last": last,
        "logprob": np.full(n, -0.7, np.float32),
        "value": np.linspace(0, 1, n, dtype=np.float32),
        "next_value": np.linspace(0.1, 1.1, n, dtype=np.float32),
        "disc_return": np.zeros(n, np.float32),
    }


def test_rollout_buffer_runs_gae_per_fragment_and_concatenates() -> None:
    buf = RolloutBuffer(0.9, 0.8)
    a, b = _fragment(6, 0.0, [2, 5]), _fragment(3, 100.0, [2])  # a holds two copies' fragments
    buf.add(a)
    buf.add(b)
    assert len(buf) == 9
    parts = buf.take()
    assert len(buf) == 0
    batch = buf.compute_returns_and_advantage(parts)
    want = []
    for f, cuts in ((a, [(0, 3), (3, 6)]), (b, [(0, 3)])):
        for lo, hi in cuts:
            ends = np.zeros(hi - lo, bool)
            ends[-1] = True
            adv, _ = compute_gae(
                f["reward"][lo:hi],
                f["value"][lo:hi],
                f["next_value"][lo:hi],
                np.zeros(hi - lo),
                ends,
                0.9,
                0.8,
            )
            want.append(adv)
    np.testing.assert_allclose(batch.advantages.numpy(), np.concatenate(want), rtol=1e-6)
    np.testing.assert_allclose(batch.returns - batch.values, batch.advantages, rtol=1e-6)
    assert batch.obs.shape == (9, 4) and batch.actions.dtype == torch.int64


def test_reward_scale_multiplies_and_clips_rewards() -> None:
    buf = RolloutBuffer(0.0, 0.0)  # gamma 0: advantage = reward - value
    f = _fragment(3, 0.0, [2])
    f["value"][:] = 0.0
    f["reward"][:] = [1.0, 100.0, -100.0]
    batch = buf.compute_returns_and_advantage([f], reward_scale=0.5)
    np.testing.assert_allclose(batch.advantages.numpy(), [0.5, 10.0, -10.0])


# ---------------------------------------------------------------- losses


def test_clipped_surrogate_on_a_tiny_batch() -> None:
    old = torch.zeros(3)
    new = torch.log(torch.tensor([0.5, 1.0, 1.5])).requires_grad_()
    adv = torch.tensor([1.0, -1.0, 1.0])
    pg_loss, approx_kl, clipfrac = clipped_surrogate(new, old, adv, 0.2)
    # -A*r = [-0.5, 1, -1.5]; -A*clip(r) = [-0.8, 1, -1.2]; the max (pessimistic) of each
    assert pg_loss.item() == pytest.approx((-0.5 + 1.0 - 1.2) / 3)
    assert clipfrac.item() == pytest.approx(2 / 3)
    ratio = np.array([0.5, 1.0, 1.5])
    assert approx_kl.item() == pytest.approx(np.mean((ratio - 1) - np.log(ratio)))
    pg_loss.backward()
    # d/d logprob of -A*r/3 is -A*r/3 where unclipped; the clipped third sample gets none.
    np.testing.assert_allclose(new.grad.numpy(), [-0.5 / 3, 1 / 3, 0.0], atol=1e-6)


def test_value_loss_clipping() -> None:
    old = torch.tensor([0.0, 0.0])
    new = torch.tensor([1.0, 0.1])
    returns = torch.tensor([2.0, 2.0])
    assert value_loss(new, old, returns, 0.2, False).item() == pytest.approx(
        0.5 * ((1 - 2) ** 2 + (0.1 - 2) ** 2) / 2
    )
    # clipped: v = 0.2 for the first (further from 2 than 1.0 is), 0.1 for the second
    assert value_loss(new, old, returns, 0.2, True).item() == pytest.approx(
        0.5 * ((0.2 - 2) ** 2 + (0.1 - 2) ** 2) / 2
    )


# ---------------------------------------------------------------- learner and nets


def _spaces(kind: str) -> tuple[gym.Space, gym.Space]:
    obs = gym.spaces.Box(-5, 5, (3,), np.float32)
    if kind == "discrete":
        return obs, gym.spaces.Discrete(3)
    return obs, gym.spaces.Box(-2, 2, (2,), np.float32)


@pytest.mark.parametrize("kind", ["discrete", "box"])
@pytest.mark.parametrize("shared", [False, True])
def test_learner_moves_probability_towards_positive_advantage(cfg, kind, shared) -> None:
    p = cfg.ppo.model_copy(update={"shared_network": shared, "lr": 3e-3, "update_epochs": 4})
    obs_space, act_space = _spaces(kind)
    learner = PPOLearner(p, obs_space, act_space, seed=0)
    n = 64
    obs = torch.zeros(n, 3)
    if kind == "discrete":
        actions = torch.tensor([0, 1] * (n // 2))
    else:
        actions = torch.tensor([[1.0, -1.0], [-1.0, 1.0]] * (n // 2))
    adv = torch.tensor([1.0, -1.0] * (n // 2))
    with torch.no_grad():
        _, logprob, _, value = learner.net.get_action_and_value(obs, actions)
    batch = RolloutBatch(obs, actions, logprob, adv, value + adv, value)
    before = logprob[0].item()
    info = learner.update(batch)
    with torch.no_grad():
        after = learner.net.get_action_and_value(obs[:1], actions[:1])[1].item()
    assert after > before
    assert learner.updates == p.update_epochs * p.num_minibatches and learner.iterations == 1
    assert np.isfinite(info["loss"]) and 0 <= info["clipfrac"] <= 1


def test_learner_state_dict_round_trip(cfg) -> None:
    obs_space, act_space = _spaces("box")
    p = cfg.ppo.model_copy(update={"scale_rewards": True})
    a = PPOLearner(p, obs_space, act_space, seed=1)
    a.reward_scale(np.array([1.0, 2.0, 3.0]))
    b = PPOLearner(p, obs_space, act_space, seed=2)
    b.load_state_dict(a.state_dict())
    for k, v in a.policy_state().items():
        torch.testing.assert_close(b.policy_state()[k], v)
    assert b.reward_scale(np.array([2.0])) == pytest.approx(a.reward_scale(np.array([2.0])))


def _fed_net(kind: str, shared: bool, activation: str) -> ActorCritic:
    obs_space, act_space = _spaces(kind)
    torch.manual_seed(0)
    net = ActorCritic(
        (3,), 3 if kind == "discrete" else 2, kind == "discrete", [16, 8], shared, activation
    )
    with torch.no_grad():
        for prm in net.parameters():
            prm.normal_(0.0, 0.5)
    rng = np.random.default_rng(0)
    net.obs_norm.update(rng.normal(2.0, 3.0, size=(100, 3)))
    return net


@pytest.mark.parametrize("kind", ["discrete", "box"])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_numpy_actor_critic_matches_torch(kind, shared, activation) -> None:
    net = _fed_net(kind, shared, activation)
    policy = NumpyActorCritic(net.state_dict(), kind == "discrete", True, activation)
    obs = np.random.default_rng(1).normal(1.0, 4.0, size=(32, 3)).astype(np.float32)
    with torch.no_grad():
        out, value = net(torch.as_tensor(obs))
    np_out, np_value = policy.forward(obs)
    np.testing.assert_allclose(np_out, out.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np_value, value.numpy(), rtol=1e-5, atol=1e-5)
    actions, logprob, v = policy.act(obs, np.random.default_rng(2))
    with torch.no_grad():
        _, t_logprob, _, _ = net.get_action_and_value(
            torch.as_tensor(obs), torch.as_tensor(actions)
        )
    np.testing.assert_allclose(logprob, t_logprob.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(v, value.numpy(), rtol=1e-5, atol=1e-5)


def test_numpy_sampling_follows_the_distribution() -> None:
    net = _fed_net("discrete", False, "tanh")
    policy = NumpyActorCritic(net.state_dict(), True, True, "tanh")
    obs = np.zeros((20000, 3), np.float32)
    actions, _, _ = policy.act(obs, np.random.default_rng(0))
    with torch.no_grad():
        probs = torch.softmax(net(torch.zeros(1, 3))[0], -1)[0].numpy()
    np.testing.assert_allclose(np.bincount(actions, minlength=3) / len(actions), probs, atol=0.015)
    net = _fed_net("box", False, "tanh")
    policy = NumpyActorCritic(net.state_dict(), False, True, "tanh")
    actions, _, _ = policy.act(obs, np.random.default_rng(0))
    with torch.no_grad():
        mean = net(torch.zeros(1, 3))[0][0].numpy()
    std = net.log_std.exp().detach().numpy()
    np.testing.assert_allclose(actions.mean(0), mean, atol=0.05 * std.max())
    np.testing.assert_allclose(actions.std(0), std, rtol=0.03)


# ---------------------------------------------------------------- the client's fragments


class FakePolicy:
    """V(s) = s[0]; actions 1 (discrete) or 3.0 (box, beyond the space); logprob -s[0]."""

    def __init__(self, box: bool = False) -> None:
        self.box = box

    def value(self, obs: np.ndarray) -> np.ndarray:
        return obs[:, 0].astype(np.float32)

    def act(self, obs, rng, mask=None):
        n = len(obs)
        actions = np.full((n, 1), 3.0, np.float32) if self.box else np.ones(n, np.int64)
        return actions, -obs[:, 0].astype(np.float32), self.value(obs)


def _obs(*firsts: float) -> np.ndarray:
    return np.array([[f, 0.0, 0.0] for f in firsts], np.float32)


def _actor(cfg, n_envs=2, length=3, box=False) -> PPOActor:
    c = cfg.model_copy(deep=True)
    c.env.num_envs, c.ppo.fragment_length, c.ppo.gamma = n_envs, length, 0.5
    obs_space, act_space = _spaces("box" if box else "discrete")
    if box:
        act_space = gym.spaces.Box(-2, 2, (1,), np.float32)
    return PPOActor(c, obs_space, act_space, 0, np.random.default_rng(0))


def test_ppo_actor_fragments_carry_exact_next_values(cfg) -> None:
    actor = _actor(cfg)
    actor.set_model(7, FakePolicy(), {})
    no = np.zeros(2, bool)
    # step 0 -> obs 1/11; step 1: copy 0 truncated (final obs 50), copy 1 terminated;
    # step 2: fragment ends, next obs 3/13.
    steps = [
        (_obs(0, 10), _obs(1, 11), no, no, None),
        (_obs(1, 11), _obs(2, 12), np.array([False, True]), np.array([True, False])),
        (_obs(2, 12), _obs(3, 13), no, no, None),
    ]
    steps[1] = (*steps[1], np.array([_obs(50)[0], _obs(60)[0]], dtype=object))
    out = []
    for obs, nxt, term, trunc, final in steps:
        assert list(actor.act(obs, 0)) == [1, 1]
        out += actor.record(obs, np.array([1.0, 2.0]), term, trunc, nxt, final)
    ((model_id, f),) = out
    assert model_id == 7
    # rows: copy 0 t=0..2, then copy 1 t=0..2
    np.testing.assert_array_equal(f["obs"][:, 0], [0, 1, 2, 10, 11, 12])
    np.testing.assert_array_equal(f["value"], [0, 1, 2, 10, 11, 12])
    np.testing.assert_array_equal(f["next_value"], [1, 50, 3, 11, 0, 13])
    np.testing.assert_array_equal(f["last"], [0, 0, 1, 0, 0, 1])
    np.testing.assert_array_equal(f["terminated"], [0, 0, 0, 0, 1, 0])
    np.testing.assert_array_equal(f["truncated"], [0, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(f["logprob"], -f["value"])
    # discounted return so far (gamma 0.5), restarting after each episode end
    np.testing.assert_allclose(f["disc_return"], [1, 1.5, 1, 2, 3, 2])
    spec = ppo_experience_spec(*_spaces("discrete"), 4096, 1 << 20)
    decoded = decode_experience(encode_experience("c", model_id, f), spec)
    assert decoded.n == 6


def test_ppo_actor_drops_partial_fragments_of_an_old_model(cfg) -> None:
    actor = _actor(cfg)
    actor.set_model(1, FakePolicy(), {})
    no = np.zeros(2, bool)
    actor.act(_obs(0, 0), 0)
    assert actor.record(_obs(0, 0), np.ones(2), no, no, _obs(1, 1), None) == []
    assert actor.set_model(2, FakePolicy(), {}) == []
    assert actor.discarded == 2
    out = []
    for t in range(3):
        actor.act(_obs(t, t), 0)
        out += actor.record(_obs(t, t), np.ones(2), no, no, _obs(t + 1, t + 1), None)
    ((model_id, f),) = out
    assert model_id == 2 and len(f["reward"]) == 6


def _fragments_until_share(actor, limit=20) -> int:
    """Record whole fragments until the actor says its share is sent; how many it took."""
    no = np.zeros(2, bool)
    for n in range(1, limit + 1):
        for t in range(3):
            actor.act(_obs(t, t), 0)
            actor.record(_obs(t, t), np.ones(2), no, no, _obs(t + 1, t + 1), None)
        if actor.share_sent:
            return n
    return limit + 1


def test_ppo_actor_share_of_an_iteration(cfg) -> None:
    # 2 copies x 3 steps = 6 rows per message; 60 rows per iteration over 3 clients = 20 rows
    # each, rounded up to whole messages: 4 messages (24 rows).
    cfg = cfg.model_copy(deep=True)
    cfg.ppo.n_steps_total, cfg.ppo.share_wait = 60, 1.0
    actor = _actor(cfg)
    actor.set_model(1, FakePolicy(), {"num_clients": 3})
    assert _fragments_until_share(actor) == 4
    actor.share_waited()  # the next model was late: sample on without waiting again
    assert _fragments_until_share(actor) == 21
    actor.set_model(2, FakePolicy(), {"num_clients": 1})  # a new model: a new share (all 60)
    assert not actor.share_sent
    assert _fragments_until_share(actor) == 10
    cfg.ppo.share_wait = 0.0  # off: never waits
    actor = _actor(cfg)
    actor.set_model(1, FakePolicy(), {"num_clients": 3})
    assert _fragments_until_share(actor) == 21


def test_ppo_actor_box_actions_clipped_for_the_env_raw_for_training(cfg) -> None:
    actor = _actor(cfg, n_envs=1, length=1, box=True)
    actor.set_model(0, FakePolicy(box=True), {})
    env_actions = actor.act(_obs(0), 0)
    np.testing.assert_array_equal(env_actions, [[2.0]])
    no = np.zeros(1, bool)
    ((_, f),) = actor.record(_obs(0), np.ones(1), no, no, _obs(1), None)
    np.testing.assert_array_equal(f["action"], [[3.0]])


@pytest.mark.parametrize("kind", ["discrete", "box"])
def test_evaluate_builder_acts_deterministically(cfg, kind) -> None:
    from soulsai.errors import CheckpointError
    from soulsai.training.policies import build_policy

    obs_space, act_space = _spaces(kind)
    learner = PPOLearner(cfg.ppo, obs_space, act_space, seed=0)
    with torch.no_grad():
        learner.net.actor[-1].weight.normal_(0.0, 3.0)  # means well outside the Box
    act = build_policy(cfg, {"learner": learner.state_dict()}, obs_space, act_space)
    obs = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
    with torch.no_grad():
        out, _ = learner.net(torch.as_tensor(obs))
    if kind == "discrete":
        np.testing.assert_array_equal(act(obs), out.argmax(1).numpy())
    else:
        np.testing.assert_allclose(act(obs), np.clip(out.numpy(), -2, 2), rtol=1e-5, atol=1e-5)
    other = cfg.model_copy(update={"ppo": cfg.ppo.model_copy(update={"hidden": [8]})})
    with pytest.raises(CheckpointError, match="ppo.hidden"):
        build_policy(other, {"policy": learner.policy_state()}, obs_space, act_space)

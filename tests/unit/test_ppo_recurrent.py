"""Recurrent PPO: the numpy cores against torch step by step, the BPTT loss over a fragment with
an episode start inside against a hand-unrolled one, the initial states through the client,
the wire, the node's intake, the rollout and checkpoints, and the learner's sequence
minibatches."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch

from soulsai.client.ppo_actor import PPOActor
from soulsai.config import load_config
from soulsai.errors import ProtocolError
from soulsai.model.cores import STATE_BOUND, NumpyCore, gather_state, spread_state
from soulsai.model.cores_torch import make_core, unroll
from soulsai.model.nets import ActorCritic, cpu_state
from soulsai.model.numpy_ac import NumpyActorCritic
from soulsai.model.obs import build_layout, obs_leaves
from soulsai.model.shapes import ppo_weight_shapes
from soulsai.model.specs import ppo_experience_spec
from soulsai.training.algorithms.ppo import (
    PPOLearner,
    build_actor_critic,
    clipped_surrogate,
    ppo_deterministic,
    value_loss,
)
from soulsai.training.algorithms.ppo_driver import PPODriver
from soulsai.training.checkpoint import load_checkpoint, save_checkpoint
from soulsai.training.rollout import RolloutBuffer, episode_starts
from soulsai.transport.envelope import decode_experience, encode_experience

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
DICT_SPACE = gym.spaces.Dict(
    {
        "pos": gym.spaces.Box(-3.0, 3.0, (2,), np.float32),
        "phase": gym.spaces.Discrete(3),
        "flags": gym.spaces.MultiBinary(2),
    }
)


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    d = tmp_path_factory.mktemp("cfg")
    shutil.copy(ROOT / "config" / "config_d.yaml", d / "config_d.yaml")
    return load_config(d, ["algo=ppo"])


def _ppo(cfg, kind: str, **kw):
    return cfg.ppo.model_copy(update={"recurrent": kind, "recurrent_size": 8, **kw})


def _shapes(net) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


# ---------------------------------------------------------------- the cores


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_numpy_core_equals_the_torch_layer_step_by_step(kind) -> None:
    torch.manual_seed(0)
    layer = torch.nn.LSTM(5, 7) if kind == "lstm" else torch.nn.GRU(5, 7)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0.0, 0.7)  # every gate far from its init, so a swapped gate shows
    twin = NumpyCore(kind, {f"core.{k}": v for k, v in layer.state_dict().items()})
    x = np.random.default_rng(1).normal(0.0, 2.0, (12, 3, 5)).astype(np.float32)
    state = np.zeros((3, twin.state_size), np.float32)
    h = torch.zeros(1, 3, 7)
    c = torch.zeros(1, 3, 7)
    for t in range(12):
        out, state = twin.step(x[t], state)
        with torch.no_grad():
            if kind == "lstm":
                t_out, (h, c) = layer(torch.as_tensor(x[t : t + 1]), (h, c))
                want_state = torch.cat([h[0], c[0]], 1).numpy()
            else:
                t_out, h = layer(torch.as_tensor(x[t : t + 1]), h)
                want_state = h[0].numpy()
        np.testing.assert_allclose(out, t_out[0].numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(state, want_state, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_unroll_resets_at_episode_starts_like_the_layer_run_segment_by_segment(kind) -> None:
    torch.manual_seed(0)
    core = make_core(kind, 4, 6)
    x = torch.randn(9, 2, 4)
    state = torch.randn(2, 12 if kind == "lstm" else 6) * 0.5
    starts = torch.zeros(9, 2, dtype=torch.bool)
    starts[4, 0] = starts[1, 1] = starts[7, 1] = True
    out, final = unroll(core, x, state, starts)
    for b, cuts in ((0, [0, 4, 9]), (1, [0, 1, 7, 9])):
        s = state[b : b + 1]
        for a, z in zip(cuts[:-1], cuts[1:], strict=True):
            s = s if a == 0 else torch.zeros_like(s)  # an episode starts at a
            h0 = s[:, :6].unsqueeze(0)
            if kind == "lstm":
                seg, (h, c) = core(x[a:z, b : b + 1], (h0, s[:, 6:].unsqueeze(0)))
                s = torch.cat([h[0], c[0]], 1)
            else:
                seg, h = core(x[a:z, b : b + 1], h0)
                s = h[0]
            torch.testing.assert_close(out[a:z, b : b + 1], seg, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(final[b : b + 1], s, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("space", ["box", "dict"])
def test_numpy_actor_critic_equals_torch_step_by_step(cfg, kind, shared, space) -> None:
    obs_space = DICT_SPACE if space == "dict" else gym.spaces.Box(-5, 5, (3,), np.float32)
    p = _ppo(cfg, kind, shared_network=shared, hidden=[16])
    torch.manual_seed(0)
    net = build_actor_critic(p, obs_space, gym.spaces.Discrete(3))
    with torch.no_grad():
        for prm in net.parameters():
            prm.normal_(0.0, 0.5)
    assert ppo_weight_shapes(p, obs_space, gym.spaces.Discrete(3)) == _shapes(net)
    twin = NumpyActorCritic(cpu_state(net), True, True, p.activation, net.layout, recurrent=kind)
    obs_space.seed(0)
    seqs = [[obs_space.sample() for _ in range(6)] for _ in range(2)]  # 2 copies, 6 steps
    state = np.zeros((2, net.state_size), np.float32)
    outs, values = [], []
    for t in range(6):
        batch = _batch(net.layout, [seqs[0][t], seqs[1][t]])
        out, value, state = twin.step(batch, state)
        outs.append(out)
        values.append(value)
    rows = _batch(net.layout, seqs[0] + seqs[1])  # sequence after sequence
    with torch.no_grad():
        t_in = (
            {k: torch.as_tensor(v) for k, v in rows.items()}
            if isinstance(rows, dict)
            else (torch.as_tensor(rows))
        )
        t_out, t_value, t_final = net.unroll(t_in, torch.zeros(2, net.state_size))
    np.testing.assert_allclose(
        np.stack(outs, 1).reshape(12, -1), t_out.numpy(), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(np.stack(values, 1).reshape(-1), t_value.numpy(), atol=1e-5)
    np.testing.assert_allclose(state, t_final.numpy(), rtol=1e-5, atol=1e-5)


def _batch(layout, items):
    if layout.plain:
        return np.stack(items).astype(np.float32)
    leaves = [obs_leaves(layout, o, batched=False) for o in items]
    return {k: np.concatenate([leaf[k] for leaf in leaves]) for k in leaves[0]}


def test_feed_forward_state_dict_is_unchanged_by_the_recurrent_option(cfg) -> None:
    space = gym.spaces.Box(-5, 5, (3,), np.float32)
    off = build_actor_critic(cfg.ppo, space, gym.spaces.Discrete(2))
    assert cfg.ppo.recurrent is None
    assert not any(k.startswith("core.") for k in off.state_dict())
    on = build_actor_critic(_ppo(cfg, "gru"), space, gym.spaces.Discrete(2))
    assert {"core.weight_ih_l0", "core.weight_hh_l0"} <= set(on.state_dict())


# ---------------------------------------------------------------- the BPTT loss


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_bptt_loss_over_a_fragment_with_an_episode_start_inside_equals_a_hand_unroll(
    cfg, kind
) -> None:
    """Two fragments of 6 rows; the first terminates its episode at row 2, so row 3 starts a
    new one: the batch must zero the state there. The hand computation runs the torch layer one
    step at a time with a fresh zero state at row 3, then the same heads and PPO loss."""
    L = 6
    p = _ppo(cfg, kind, hidden=[16])
    torch.manual_seed(0)
    net = build_actor_critic(p, gym.spaces.Box(-5, 5, (3,), np.float32), gym.spaces.Discrete(3))
    net.obs_norm.update(np.random.default_rng(0).normal(1.0, 2.0, (50, 3)))
    rng = np.random.default_rng(1)
    terminated = np.zeros(2 * L, np.uint8)
    terminated[2] = 1
    last = np.zeros(2 * L, np.uint8)
    last[[L - 1, 2 * L - 1]] = 1
    part = {
        "obs": rng.normal(size=(2 * L, 3)).astype(np.float32),
        "action": rng.integers(0, 3, 2 * L).astype(np.int64),
        "reward": rng.normal(size=2 * L).astype(np.float32),
        "terminated": terminated,
        "truncated": np.zeros(2 * L, np.uint8),
        "last": last,
        "logprob": np.full(2 * L, -1.1, np.float32),
        "value": rng.normal(size=2 * L).astype(np.float32),
        "next_value": rng.normal(size=2 * L).astype(np.float32),
        "disc_return": np.zeros(2 * L, np.float32),
        "initial_state": rng.normal(0.0, 0.3, (2, net.state_size)).astype(np.float32),
    }
    batch = RolloutBuffer(p.gamma, p.gae_lambda).compute_returns_and_advantage([part])
    assert batch.starts is not None and batch.states is not None
    assert np.flatnonzero(batch.starts.numpy()).tolist() == [3]

    def loss_of(newlogprob, entropy, newvalue):
        adv = batch.advantages
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        pg, _, _ = clipped_surrogate(newlogprob, batch.logprobs, adv, p.clip_coef)
        v = value_loss(newvalue, batch.values, batch.returns, p.clip_coef, p.clip_vloss)
        return pg - p.ent_coef * entropy.mean() + p.vf_coef * v - 0.01 * entropy.mean()

    _, newlogprob, entropy, newvalue = net.get_action_and_value(
        batch.obs, batch.actions, None, batch.states, batch.starts
    )
    loss = loss_of(newlogprob, entropy, newvalue)
    grads = torch.autograd.grad(loss, list(net.parameters()))

    # by hand: the torch layer step by step
    feats = net.torso(net.obs_norm(batch.obs))
    hs = []
    for b in range(2):
        state = batch.states[b : b + 1]
        for t in range(L):
            if b == 0 and t == 3:
                state = torch.zeros_like(state)  # the episode that starts at row 3
            x = feats[b * L + t].reshape(1, 1, -1)
            h0 = state[:, :8].unsqueeze(0)
            if kind == "lstm":
                out, (h, c) = net.core(x, (h0, state[:, 8:].unsqueeze(0)))
                state = torch.cat([h[0], c[0]], 1)
            else:
                out, h = net.core(x, h0)
                state = h[0]
            hs.append(out[0])
    h_all = torch.cat(hs)
    dist = torch.distributions.Categorical(logits=net.actor(h_all))
    hand = loss_of(dist.log_prob(batch.actions), dist.entropy(), net.critic(h_all).squeeze(-1))
    hand_grads = torch.autograd.grad(hand, list(net.parameters()))
    torch.testing.assert_close(loss, hand, rtol=1e-5, atol=1e-6)
    for (name, _), g, hg in zip(net.named_parameters(), grads, hand_grads, strict=True):
        torch.testing.assert_close(g, hg, rtol=1e-4, atol=1e-6, msg=name)
    assert grads[[n for n, _ in net.named_parameters()].index("core.weight_hh_l0")].abs().sum() > 0


def test_learner_minibatches_are_whole_fragments_with_their_states(cfg, monkeypatch) -> None:
    L, n_frag = 4, 6
    p = _ppo(cfg, "lstm", hidden=[8], num_minibatches=3, update_epochs=2, fragment_length=L)
    learner = PPOLearner(p, gym.spaces.Box(-5, 5, (3,), np.float32), gym.spaces.Discrete(2), 0)
    rng = np.random.default_rng(0)
    n = L * n_frag
    obs = np.repeat(np.arange(n_frag, dtype=np.float32), L)[:, None] * np.ones((1, 3), np.float32)
    obs[:, 1] = np.tile(np.arange(L), n_frag)  # fragment id, step
    last = np.tile(np.eye(L, dtype=np.uint8)[-1], n_frag)
    states = np.arange(n_frag, dtype=np.float32)[:, None] * np.ones((1, 16), np.float32) * 0.1
    part = {
        "obs": obs,
        "action": rng.integers(0, 2, n).astype(np.int64),
        "reward": np.ones(n, np.float32),
        "terminated": np.zeros(n, np.uint8),
        "truncated": np.zeros(n, np.uint8),
        "last": last,
        "logprob": np.full(n, np.log(0.5), np.float32),
        "value": np.zeros(n, np.float32),
        "next_value": np.zeros(n, np.float32),
        "disc_return": np.zeros(n, np.float32),
        "initial_state": states,
    }
    batch = RolloutBuffer(p.gamma, p.gae_lambda).compute_returns_and_advantage([part])
    calls = []
    real = learner.net.get_action_and_value

    def spy(o, a=None, m=None, state=None, starts=None):
        calls.append((o.clone(), state.clone(), starts.clone()))
        return real(o, a, m, state, starts)

    monkeypatch.setattr(learner.net, "get_action_and_value", spy)
    learner.update(batch)
    assert len(calls) == 2 * 3
    for o, state, starts in calls:
        frags = o[:, 0].reshape(-1, L)
        assert (frags == frags[:, :1]).all()  # whole fragments, each in time order
        assert (o[:, 1].reshape(-1, L) == torch.arange(L)).all()
        torch.testing.assert_close(state, torch.as_tensor(states)[frags[:, 0].long()])
        assert not starts.any()
    assert learner.updates == 6


# ---------------------------------------------------------------- the client's states


def _actor(cfg, kind="lstm", n_envs=2, length=3, obs_space=None) -> PPOActor:
    c = cfg.model_copy(deep=True)
    c.env.num_envs, c.ppo.fragment_length = n_envs, length
    c.ppo.recurrent, c.ppo.recurrent_size, c.ppo.hidden = kind, 4, [8]
    obs_space = obs_space or gym.spaces.Box(-5, 5, (3,), np.float32)
    actor = PPOActor(c, obs_space, gym.spaces.Discrete(2), 0, np.random.default_rng(0))
    torch.manual_seed(0)
    net = build_actor_critic(c.ppo, obs_space, gym.spaces.Discrete(2), c.env)
    with torch.no_grad():
        for prm in net.parameters():
            prm.normal_(0.0, 0.6)
    actor.set_model(1, actor.make_policy(cpu_state(net)), {})
    return actor


def _step(actor, obs, term=None, trunc=None, nxt=None):
    n = len(obs)
    no = np.zeros(n, bool)
    actor.act(obs, 0)
    term = no if term is None else term
    trunc = no if trunc is None else trunc
    nxt = obs + 1 if nxt is None else nxt
    return actor.record(obs, np.ones(n), term, trunc, nxt, nxt)


def test_client_carries_state_across_fragments_resets_at_episode_start_and_keeps_it_on_new_weights(
    cfg,
) -> None:
    actor = _actor(cfg, length=3)
    twin = actor.policy
    assert twin is not None
    obs = np.random.default_rng(0).normal(size=(8, 2, 3)).astype(np.float32)
    state = np.zeros((2, 8), np.float32)
    messages = []
    for t in range(6):
        term = np.array([t == 4, False])  # copy 0's episode terminates at step 4
        messages += _step(actor, obs[t], term=term)
        if t == 4:  # copy 0 starts a new episode with a blank memory
            assert not actor.state[0].any() and actor.state[1].any()
        _, _, state = twin.step(obs[t], state)
        if t == 2:
            after_first = state.copy()
        state[term] = 0.0
    (_, f1), (_, f2) = messages
    starts = spread_state(np.zeros((2, 8), np.float32), 3)
    np.testing.assert_array_equal(f1["state"], starts)  # fresh episodes: zero states
    np.testing.assert_allclose(gather_state(f2["state"], f2["last"], 8, 3), after_first, atol=1e-6)
    np.testing.assert_allclose(actor.state, state, atol=1e-6)
    # new weights mid-episode: the partial fragment goes, the state stays
    _step(actor, obs[6])
    kept = actor.state.copy()
    actor.set_model(2, actor.policy, {})
    np.testing.assert_array_equal(actor.state, kept)
    actor.reset()
    assert not actor.state.any()


def test_initial_states_round_trip_wire_intake_and_rollout(cfg) -> None:
    """A real recurrent client's fragments, encoded, decoded against the node's spec,
    reassembled by the driver's intake and turned into a batch: the states are the client's."""
    actor = _actor(cfg, length=5, obs_space=DICT_SPACE)
    space = DICT_SPACE
    space.seed(0)
    layout = build_layout(space)
    out = []
    initial = []
    for t in range(10):
        if t % 5 == 0:
            initial.append(actor.state.copy())
        o = _batch(layout, [space.sample(), space.sample()])
        term = np.array([t == 6, False])
        actor.act(o, 0)
        out += actor.record(o, np.ones(2), term, np.zeros(2, bool), o, o)
    assert len(out) == 2 and np.abs(initial[1]).sum() > 0
    c = actor.cfg
    spec = ppo_experience_spec(
        space, gym.spaces.Discrete(2), 4096, 1 << 20, layout=layout, state_size=8,
        fragment_length=5,
    )  # fmt: skip
    host = _host(c, space)
    driver = PPODriver(host, space, gym.spaces.Discrete(2))
    for model_id, fields in out:
        exp = decode_experience(encode_experience("c", model_id, fields), spec)
        exp.model_id = host.model_id
        driver.accept(exp)
    assert dict(host.intake.rejected) == {}
    parts = driver.rollout.take()
    batch = driver.rollout.compute_returns_and_advantage(parts)
    assert batch.states is not None and batch.starts is not None
    want = np.concatenate([initial[0], initial[1]])  # message 1: copies 0, 1; then message 2
    np.testing.assert_allclose(batch.states.numpy(), want[[0, 1, 2, 3]], atol=0)
    # copy 0 terminated at step 6 = row 1 of its second fragment: row 2 starts an episode
    assert np.flatnonzero(batch.starts.numpy()).tolist() == [10 + 2]


def _host(c, space):
    import threading
    from collections import Counter

    c = c.model_copy(deep=True)
    return SimpleNamespace(
        cfg=c,
        log=__import__("logging").getLogger("test"),
        lock=threading.Lock(),
        data_ready=threading.Event(),
        intake=SimpleNamespace(rejected=Counter()),
        model_id=0,
        accepted=0,
    )


@pytest.mark.parametrize(
    ("change", "reason"),
    [("padding", "out_of_range"), ("last", "bad_structure"), ("rows", "bad_structure")],
)
def test_node_rejects_fragments_whose_states_break_the_layout(cfg, change, reason) -> None:
    actor = _actor(cfg, length=3)  # 8 floats of state in 3 rows of 3: one of padding
    msgs = []
    obs = np.ones((2, 3), np.float32)
    while not msgs:
        msgs = _step(actor, obs)
    (_, fields) = msgs[0]
    fields = {k: v.copy() for k, v in fields.items()}
    if change == "padding":
        fields["state"][2, 2] = 0.5  # element 8 of fragment 0's state: padding
    elif change == "last":
        fields["last"][1] = 1
    else:
        fields = {k: v[:5] for k, v in fields.items()}
    host = _host(actor.cfg, gym.spaces.Box(-5, 5, (3,), np.float32))
    driver = PPODriver(host, gym.spaces.Box(-5, 5, (3,), np.float32), gym.spaces.Discrete(2))
    spec = driver.spec
    exp = decode_experience(encode_experience("c", 0, fields), spec)
    driver.accept(exp)
    assert host.intake.rejected[reason] == 1 and len(driver.rollout) == 0


def test_spec_bounds_the_state_values(cfg) -> None:
    spec = ppo_experience_spec(
        gym.spaces.Box(-5, 5, (3,), np.float32), gym.spaces.Discrete(2), 64, 1 << 20,
        state_size=8, fragment_length=4,
    )  # fmt: skip
    assert spec.fields["state"].shape == (2,)
    assert spec.fields["state"].high == STATE_BOUND and spec.fields["state"].low == -STATE_BOUND
    actor = _actor(cfg, length=4)
    msgs = []
    while not msgs:
        msgs = _step(actor, np.ones((2, 3), np.float32))
    fields = {k: v.copy() for k, v in msgs[0][1].items()}
    decode_experience(encode_experience("c", 0, fields), spec)
    fields["state"][0, 0] = 2 * STATE_BOUND
    with pytest.raises(ProtocolError) as e:
        decode_experience(encode_experience("c", 0, fields), spec)
    assert e.value.reason == "out_of_range"


def test_episode_starts_never_at_a_fragments_first_row() -> None:
    term = np.array([0, 1, 0, 1, 0, 0], np.uint8)
    trunc = np.array([0, 0, 0, 0, 0, 1], np.uint8)
    last = np.array([0, 0, 1, 1, 0, 1], np.uint8)  # fragments of 3? rows 2, 3, 5 end
    assert np.flatnonzero(episode_starts(term, trunc, last)).tolist() == [2]


# ---------------------------------------------------------------- checkpoints and evaluate


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_checkpoint_round_trip_and_the_evaluate_policy_carries_and_resets_state(
    cfg, kind, tmp_path
) -> None:
    c = cfg.model_copy(deep=True)
    c.ppo.recurrent, c.ppo.recurrent_size, c.ppo.hidden = kind, 8, [16]
    c.env.id = "soulsai/CartPoleNoVel-v1"
    space, act = gym.spaces.Box(-5, 5, (2,), np.float32), gym.spaces.Discrete(2)
    learner = PPOLearner(c.ppo, space, act, 3, env=c.env)
    with torch.no_grad():
        for prm in learner.net.parameters():
            prm.add_(torch.randn_like(prm) * 0.3)
    state = {"policy": learner.policy_state(), "learner": learner.state_dict()}
    save_checkpoint(tmp_path / "ck", state, {"env_steps": 1})
    loaded, _ = load_checkpoint(tmp_path / "ck")
    again = PPOLearner(c.ppo, space, act, 4, env=c.env)
    again.load_state_dict(loaded["learner"])
    for k, v in learner.net.state_dict().items():
        torch.testing.assert_close(again.net.state_dict()[k], v)
    # the checkpoint's config holds the recurrent settings
    back = type(c).model_validate_json(c.model_dump_json())
    assert (back.ppo.recurrent, back.ppo.recurrent_size) == (kind, 8)
    policy = ppo_deterministic(back, loaded, space, act)
    obs = np.random.default_rng(0).normal(size=(7, 1, 2)).astype(np.float32)
    with torch.no_grad():
        logits, _, _ = learner.net.unroll(
            torch.as_tensor(obs[:, 0]), torch.zeros(1, learner.net.state_size)
        )
    want = logits.argmax(1).numpy()
    assert [int(policy(o)[0]) for o in obs] == want.tolist()
    policy.reset()  # a new episode: the same observations give the same actions again
    assert [int(policy(o)[0]) for o in obs] == want.tolist()
    assert hasattr(policy, "state") and policy.state.shape == (1, learner.net.state_size)
    assert isinstance(learner.net, ActorCritic)


# ---------------------------------------------------------------- masks and Box actions


def _part(n_frag: int, length: int, state_size: int, rng, box: bool = False, n_act: int = 4):
    n = n_frag * length
    last = np.tile(np.eye(length, dtype=np.uint8)[-1], n_frag)
    terminated = np.zeros(n, np.uint8)
    terminated[length // 2] = 1  # an episode starts inside the first fragment
    part = {
        "obs": rng.normal(size=(n, 3)).astype(np.float32),
        "action": (
            rng.normal(size=(n, 2)).astype(np.float32)
            if box
            else rng.integers(0, 2, n).astype(np.int64)
        ),
        "reward": rng.normal(size=n).astype(np.float32),
        "terminated": terminated,
        "truncated": np.zeros(n, np.uint8),
        "last": last,
        "logprob": np.full(n, -1.0, np.float32),
        "value": np.zeros(n, np.float32),
        "next_value": np.zeros(n, np.float32),
        "disc_return": np.zeros(n, np.float32),
        "initial_state": rng.normal(0.0, 0.2, (n_frag, state_size)).astype(np.float32),
    }
    if not box:
        mask = np.ones((n, n_act), bool)
        mask[::2, 2:] = False  # every other row allows actions 0 and 1 only
        part["mask"] = mask
    return part


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_masked_recurrent_update_keeps_invalid_actions_at_probability_zero(cfg, kind) -> None:
    p = _ppo(cfg, kind, hidden=[8], num_minibatches=2, update_epochs=2, fragment_length=6)
    space = gym.spaces.Box(-5, 5, (3,), np.float32)
    learner = PPOLearner(p, space, gym.spaces.Discrete(4), 0)
    part = _part(4, 6, learner.net.state_size, np.random.default_rng(0))
    batch = RolloutBuffer(p.gamma, p.gae_lambda).compute_returns_and_advantage([part])
    assert batch.masks is not None
    info = learner.update(batch)
    assert learner.updates == 4 and np.isfinite(info["loss"])
    with torch.no_grad():
        logits, _ = learner.net(batch.obs, batch.states, batch.starts)
        probs = torch.softmax(logits.masked_fill(~batch.masks, -torch.inf), -1)
    assert (probs[~batch.masks] == 0).all()
    actions, logprob, entropy, _ = learner.net.get_action_and_value(
        batch.obs, None, batch.masks, batch.states, batch.starts
    )
    assert batch.masks[torch.arange(len(actions)), actions].all()
    assert torch.isfinite(logprob).all() and torch.isfinite(entropy).all()


def test_recurrent_box_actions_train_and_the_twin_matches(cfg) -> None:
    p = _ppo(cfg, "lstm", hidden=[8], num_minibatches=2, update_epochs=1, fragment_length=5)
    space, act = gym.spaces.Box(-5, 5, (3,), np.float32), gym.spaces.Box(-1, 1, (2,), np.float32)
    learner = PPOLearner(p, space, act, 0)
    part = _part(4, 5, learner.net.state_size, np.random.default_rng(1), box=True)
    batch = RolloutBuffer(p.gamma, p.gae_lambda).compute_returns_and_advantage([part])
    before = cpu_state(learner.net)["core.weight_hh_l0"].clone()
    learner.update(batch)
    after = cpu_state(learner.net)
    assert not torch.equal(after["core.weight_hh_l0"], before)
    twin = NumpyActorCritic(after, False, True, p.activation, recurrent="lstm")
    obs = part["obs"][:5]
    state = part["initial_state"][:1]
    got = []
    for t in range(5):
        actions, logprob, _, new_state = twin.act_step(
            obs[t : t + 1], np.random.default_rng(t), None, state
        )
        want = twin.log_prob(obs[t : t + 1], actions, None, state)
        np.testing.assert_allclose(logprob, want, rtol=1e-5, atol=1e-5)
        got.append(twin.step(obs[t : t + 1], state)[0])
        state = new_state if t + 1 != 5 // 2 + 1 else np.zeros_like(new_state)
    with torch.no_grad():
        means, _ = learner.net(
            torch.as_tensor(obs), torch.as_tensor(part["initial_state"][:1]), batch.starts[:5]
        )
    np.testing.assert_allclose(np.concatenate(got), means.numpy(), rtol=1e-5, atol=1e-5)

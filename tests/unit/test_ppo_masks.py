"""PPO on SoulsGym's interface: Dict observations and valid-action masks. MaskablePPO's
log-prob and entropy through the learner's loss by hand, the client's numpy actor-critic
against the torch one on IudexLike observations, and a real PPOActor on a real IudexLike
vector env that never draws an invalid action and sends the masks it drew under."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces as S

import soulsai.envs.soulslike  # noqa: F401  (registers soulsai/IudexLike-v0)
from soulsai.client.envs import LocalVectorEnv
from soulsai.client.ppo_actor import PPOActor
from soulsai.config import load_config
from soulsai.model.masks import unpack_mask
from soulsai.model.nets import cpu_state
from soulsai.model.numpy_ac import NumpyActorCritic
from soulsai.model.obs import continuous_features, obs_leaves
from soulsai.model.obs_wire import from_fields
from soulsai.model.specs import ppo_experience_spec
from soulsai.training.algorithms.ppo import PPOLearner, build_actor_critic
from soulsai.training.rollout import RolloutBatch
from soulsai.transport.envelope import decode_experience, encode_experience

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
IUDEX = "soulsai/IudexLike-v0"


@pytest.fixture(scope="module")
def cfg_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cfg")
    shutil.copy(ROOT / "config" / "config_d.yaml", d / "config_d.yaml")
    return d


def _cfg(cfg_dir: Path, *sets: str):
    return load_config(cfg_dir, ["algo=ppo", f"env.id={IUDEX}", *sets])


# ---------------------------------------------------------------- the loss by hand


def test_masked_log_prob_and_entropy_by_hand_through_the_learners_loss(cfg_dir) -> None:
    # A Dict observation and 4 actions whose logits are log(1, 2, 3, 4) whatever the input
    # (the actor's last layer: zero weights, these biases).
    # Row A, mask [1, 0, 1, 1]: probabilities (1, 3, 4) / 8 over the valid actions; action 2
    #   has log(3/8); entropy -(1/8 log 1/8 + 3/8 log 3/8 + 1/2 log 1/2).
    # Row B, mask [0, 1, 0, 0]: action 1 is certain: log-prob 0, entropy 0.
    # Unmasked, row A's action 2 would have log(3/10) and the entropy of (1, 2, 3, 4) / 10.
    space = S.Dict({"hp": S.Box(0.0, 1.0, (1,), np.float32), "anim": S.Discrete(3, start=-1)})
    p = _cfg(cfg_dir).ppo.model_copy(
        update={"update_epochs": 1, "num_minibatches": 1, "norm_adv": False, "clip_vloss": False}
    )
    learner = PPOLearner(p, space, S.Discrete(4), seed=0)
    with torch.no_grad():
        learner.net.actor[-1].weight.zero_()
        learner.net.actor[-1].bias.copy_(torch.log(torch.tensor([1.0, 2.0, 3.0, 4.0])))
    n = 8  # rows A, B, A, B, ...
    obs = {
        "hp": torch.rand(n, 1),
        "anim": torch.tensor([-1, 0, 1, 0, -1, 1, 0, 1], dtype=torch.int8),
    }
    masks = torch.tensor([[1, 0, 1, 1], [0, 1, 0, 0]] * (n // 2), dtype=torch.bool)
    actions = torch.tensor([2, 1] * (n // 2))
    h_a = -(1 / 8 * math.log(1 / 8) + 3 / 8 * math.log(3 / 8) + 1 / 2 * math.log(1 / 2))
    want_logp = torch.tensor([math.log(3 / 8), 0.0] * (n // 2))

    with torch.no_grad():
        _, logp, entropy, value = learner.net.get_action_and_value(obs, actions, masks)
    torch.testing.assert_close(logp, want_logp)
    torch.testing.assert_close(entropy, torch.tensor([h_a, 0.0] * (n // 2)))

    # The learner's loss path: the clients' (masked) log-probs give a ratio of exactly 1, and
    # the entropy it reports is the masked one.
    adv = torch.ones(n)
    batch = RolloutBatch(obs, actions, want_logp, adv, value + adv, value, masks)
    info = learner.update(batch, lr_frac=0.0)  # lr 0: the weights stay as they are
    assert info["entropy"] == pytest.approx(h_a / 2, abs=1e-6)
    assert info["approx_kl"] == pytest.approx(0.0, abs=1e-7)
    assert info["clipfrac"] == 0.0
    assert info["policy_loss"] == pytest.approx(-1.0, abs=1e-6)  # -mean(A * ratio), ratio 1


# ---------------------------------------------------------------- the numpy twin


def _iudex_batch(n: int = 300, seed: int = 0) -> tuple[gym.Space, list, np.ndarray]:
    """IudexLike observations and masks along random valid play (episode ends included)."""
    env = gym.make(IUDEX)
    obs, info = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    out, masks = [], []
    for _ in range(n):
        out.append(obs)
        masks.append(np.asarray(info["action_mask"], bool))
        obs, _, term, trunc, info = env.step(int(rng.choice(np.flatnonzero(info["action_mask"]))))
        if term or trunc:
            obs, info = env.reset()
    return env.observation_space, out, np.stack(masks)


@pytest.mark.parametrize("discrete_obs", ["onehot", "embedding"])
@pytest.mark.parametrize("shared", [False, True])
def test_numpy_actor_critic_equals_torch_on_iudex_dict_observations(
    cfg_dir, discrete_obs, shared
) -> None:
    cfg = _cfg(cfg_dir, f"env.discrete_obs={discrete_obs}", "env.embedding_dim=4")
    p = cfg.ppo.model_copy(update={"shared_network": shared, "hidden": [32, 16]})
    space, observations, masks = _iudex_batch()
    torch.manual_seed(0)
    net = build_actor_critic(p, space, S.Discrete(20), cfg.env)
    with torch.no_grad():
        for prm in net.parameters():
            prm.normal_(0.0, 0.3)
    layout = net.layout
    assert "player_max_hp" not in layout.names and "boss_animation" in layout.names
    leaves = {
        name: np.concatenate([obs_leaves(layout, o, batched=False)[name] for o in observations])
        for name in layout.names
    }
    net.obs_norm.update(continuous_features(layout, leaves))
    twin = NumpyActorCritic(cpu_state(net), True, True, p.activation, layout, discrete_obs)
    tensors = {k: torch.as_tensor(v) for k, v in leaves.items()}
    actions, logp, values = twin.act(leaves, np.random.default_rng(1), masks)
    assert masks[np.arange(len(actions)), actions].all()
    with torch.no_grad():
        _, t_logp, _, t_values = net.get_action_and_value(
            tensors, torch.as_tensor(actions), torch.as_tensor(masks)
        )
    np.testing.assert_allclose(logp, t_logp.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(values, t_values.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(twin.log_prob(leaves, actions, masks), logp, atol=1e-6)


# ---------------------------------------------------------------- a real actor on a real env


def _biased_policy(cfg, actor: PPOActor, obs_space: gym.Space) -> NumpyActorCritic:
    """A policy that prefers the attacks (16, 17), often invalid while an animation runs."""
    torch.manual_seed(0)
    net = build_actor_critic(cfg.ppo, obs_space, S.Discrete(20), cfg.env)
    with torch.no_grad():
        net.actor[-1].bias[16:18] = 4.0
    return actor.make_policy(cpu_state(net))


def test_a_real_ppo_actor_on_iudexlike_never_draws_an_invalid_action(cfg_dir) -> None:
    cfg = _cfg(cfg_dir, "env.action_mask=action_mask", "env.num_envs=2", "ppo.fragment_length=64")
    env = LocalVectorEnv(cfg.env)
    obs_space, act_space = env.single_observation_space, env.single_action_space
    actor = PPOActor(cfg, obs_space, act_space, 0, np.random.default_rng(0))
    policy = _biased_policy(cfg, actor, obs_space)
    actor.set_model(3, policy, {})
    rows = actor.rows
    env.reset(rows, seed=0)
    messages, blocked = [], 0
    for step in range(1500):
        truth = np.stack([e.unwrapped.action_masks() for e in env.envs])  # the env's own word
        blocked += int((~truth[:, 16:18]).any(axis=1).sum())
        actions = actor.act(rows.obs_rows[0], step)
        assert truth[np.arange(2), actions].all(), (step, actions, truth)
        env.step(actions, rows)
        messages += actor.observe()
    assert blocked > 500  # the preferred attacks were often invalid: the mask did the work
    spec = ppo_experience_spec(
        obs_space, act_space, 4096, 1 << 22, layout=actor.layout, masked=True
    )
    assert len(messages) == 1500 // 64
    for model_id, fields in messages:
        exp = decode_experience(encode_experience("c", model_id, fields), spec)
        mask = unpack_mask(exp.fields["mask"], 20)
        assert mask[np.arange(exp.n), exp.fields["action"]].all()
        leaves = from_fields(actor.layout, exp.fields)
        np.testing.assert_allclose(  # the log-prob sent is the masked one of the action sent
            policy.log_prob(leaves, exp.fields["action"], mask), exp.fields["logprob"], atol=1e-5
        )


def test_the_evaluate_policy_of_a_dict_masked_checkpoint_is_greedy_among_valid_actions(
    cfg_dir,
) -> None:
    from soulsai.training.policies import build_policy

    cfg = _cfg(cfg_dir, "env.action_mask=action_mask")
    space, observations, masks = _iudex_batch(100)
    learner = PPOLearner(cfg.ppo, space, S.Discrete(20), seed=0, env=cfg.env)
    with torch.no_grad():
        learner.net.actor[-1].bias[17] = 5.0  # the heavy attack, invalid in many states
    act = build_policy(cfg, {"learner": learner.state_dict()}, space, S.Discrete(20))
    layout = learner.layout
    for obs, mask in zip(observations, masks, strict=True):
        leaves = obs_leaves(layout, obs, batched=False)
        (action,) = act(leaves, mask[None])
        assert mask[action]
        with torch.no_grad():
            logits, _ = learner.net({k: torch.as_tensor(v) for k, v in leaves.items()})
        assert action == int(np.where(mask, logits[0].numpy(), -np.inf).argmax())
    assert not masks[:, 17].all()  # the unmasked argmax (17) would have been invalid somewhere


@pytest.mark.parametrize(
    "sets",
    [
        [],
        ["env.discrete_obs=embedding", "env.embedding_dim=3"],
        ["env.obs_keys=[-boss_pose,-camera_pose]", "ppo.shared_network=true"],
        ["env.drop_constant_obs=false"],
    ],
)
def test_weight_shapes_the_client_checks_equal_the_dict_actor_critic(cfg_dir, sets) -> None:
    from soulsai.model.shapes import ppo_weight_shapes

    cfg = _cfg(cfg_dir, *sets)
    space = gym.make(IUDEX).observation_space
    net = build_actor_critic(cfg.ppo, space, S.Discrete(20), cfg.env)
    got = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert ppo_weight_shapes(cfg.ppo, space, S.Discrete(20), cfg.env) == got

"""DQN on SoulsGym's interface (issue 17): Dict observations and action masks, client and node.

- the client's numpy Q-network equals the torch QNetwork on the IudexLike layout (one-hot and
  embedding);
- a real DQNActor stepping IudexLike with env.action_mask never acts outside the mask it acted
  on, and its transitions carry obs.<leaf>/next_obs.<leaf> and the next mask as bits;
- the learner's double-DQN target takes the argmax over the stored next mask (by hand).
"""

from __future__ import annotations

import copy
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import soulsai.envs.soulslike  # noqa: F401  (registers soulsai/IudexLike-v0)
from soulsai.client.dqn_actor import DQNActor
from soulsai.client.envs import LocalVectorEnv
from soulsai.config import load_config
from soulsai.errors import ConfigError
from soulsai.model.masks import pack_mask, unpack_mask
from soulsai.model.nets import QNetwork
from soulsai.model.numpy_q import NumpyQPolicy
from soulsai.model.obs import env_layout, obs_leaves
from soulsai.model.specs import dqn_experience_spec
from soulsai.training.algorithms.dqn import DQNLearner
from soulsai.training.replay import ReplayBatch, ReplayBuffer

ROOT = Path(__file__).resolve().parents[2]
IUDEX = ["env.id=soulsai/IudexLike-v0", 'env.imports=["soulsai.envs.soulslike"]']


def iudex_cfg(*sets: str):  # noqa: ANN201
    return load_config(ROOT / "config", ["algo=dqn", *IUDEX, *sets])


def iudex_leaves(layout, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """`n` observations of IudexLike, stepped with random valid actions, as leaves."""
    env = gym.make("soulsai/IudexLike-v0")
    rng = np.random.default_rng(seed)
    obs, info = env.reset(seed=seed)
    rows = []
    for _ in range(n):
        rows.append(obs_leaves(layout, obs, batched=False))
        obs, _, term, trunc, info = env.step(int(rng.choice(np.flatnonzero(info["action_mask"]))))
        if term or trunc:
            obs, info = env.reset()
    return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}


@pytest.mark.parametrize("discrete_obs", ["onehot", "embedding"])
def test_numpy_q_equals_torch_qnetwork_on_iudex_leaves(discrete_obs: str) -> None:
    cfg = iudex_cfg(f"env.discrete_obs={discrete_obs}")
    space = gym.make("soulsai/IudexLike-v0").observation_space
    layout = env_layout(cfg.env, space)
    assert not layout.plain and layout.n_continuous == 19
    torch.manual_seed(0)
    net = QNetwork(layout, 20, [32, 16], True, discrete_obs, 4)
    leaves = iudex_leaves(layout, 64)
    feats = np.concatenate(
        [leaves[leaf.name].reshape(64, -1) for leaf in layout.leaves if leaf.kind == "box"], 1
    )
    net.obs_norm.update(feats)  # a normalizer that does something
    with torch.no_grad():
        want = net({k: torch.as_tensor(v) for k, v in leaves.items()}).numpy()
    got = NumpyQPolicy(net.state_dict(), True, layout, discrete_obs).q_values(leaves)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    if discrete_obs == "embedding":
        assert any(k.startswith("encoder.embeddings.") for k in net.state_dict())


def test_dqn_actor_on_iudex_never_acts_outside_its_mask_and_sends_leaves_and_bits() -> None:
    cfg = iudex_cfg(
        "env.action_mask=action_mask",
        "env.num_envs=2",
        "dqn.n_step=3",
        "dqn.eps_start=0.7",
        "dqn.eps_end=0.7",
        "client.batch_size=256",
    )
    env = LocalVectorEnv(cfg.env)
    actor = DQNActor(
        cfg, env.single_observation_space, env.single_action_space, 0, np.random.default_rng(0)
    )
    layout = actor.layout
    torch.manual_seed(1)
    net = QNetwork(layout, 20, cfg.dqn.hidden, True)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes == actor.expected
    actor.set_model(1, actor.make_policy(net.state_dict()), {})
    rows = actor.rows
    env.reset(rows, seed=0)
    sent: list[dict[str, np.ndarray]] = []
    invalid_seen = 0
    for step in range(3000):
        mask = rows.mask[rows.t].copy()
        invalid_seen += int((~mask).any())
        actions = actor.act(rows.obs_rows[rows.t], step)
        assert mask[np.arange(2), actions].all(), f"step {step}: {actions} outside {mask}"
        env.step(actions, rows)
        sent += [fields for _, fields in actor.observe()]
    sent += [fields for _, fields in actor.finish()]
    assert invalid_seen > 500  # the mask did forbid actions, often
    spec = dqn_experience_spec(
        env.single_observation_space, env.single_action_space, 3, 4096, 1 << 24,
        layout=layout, masked=True,
    )  # fmt: skip
    assert all(fields.keys() == spec.fields.keys() for fields in sent)
    assert "obs.player_animation" in spec.fields and "next_mask" in spec.fields
    assert "obs.player_max_hp" not in spec.fields  # constant by its space: dropped
    f = {k: np.concatenate([m[k] for m in sent]) for k in sent[0]}
    assert len(f["action"]) > 5000
    for name, fs in spec.fields.items():
        assert f[name].dtype == fs.dtype and f[name].shape[1:] == fs.shape
    mask = unpack_mask(f["next_mask"], 20)
    assert (mask.any(axis=1) | (f["terminated"] == 1)).all()
    assert mask[:, 19].all()  # no-op: always valid


def test_a_bad_mask_from_the_env_is_a_client_error_naming_the_setting() -> None:
    cfg = iudex_cfg("env.action_mask=boss_hp", "env.kwargs={obs: image}")
    env = LocalVectorEnv(cfg.env)
    actor = DQNActor(
        cfg, env.single_observation_space, env.single_action_space, 0, np.random.default_rng(0)
    )
    with pytest.raises(ConfigError, match=r"env.action_mask: info\['boss_hp'\] has shape"):
        env.reset(actor.rows, seed=0)


def test_masked_double_dqn_target_through_the_learners_update_by_hand() -> None:
    """Two actions; s' has Q_online = (5, 1) and Q_target = (100, 2). Unmasked, the target
    would bootstrap from action 0 (Q_target 100); with only action 1 valid it takes 2."""
    cfg = iudex_cfg("dqn.hidden=[2]", "dqn.normalize_obs=false", "dqn.lr=1e-9").dqn
    learner = DQNLearner(cfg, (1,), 2, seed=0)
    with torch.no_grad():
        for net, (a, b) in ((learner.online, (5.0, 1.0)), (learner.target, (100.0, 2.0))):
            hidden, out = net.mlp[1], net.mlp[3]
            hidden.weight.copy_(torch.tensor([[1.0], [0.0]]))
            hidden.bias.zero_()
            out.weight.copy_(torch.tensor([[a, 0.0], [b, 0.0]]))  # Q(x) = (a x, b x), x >= 0
            out.bias.zero_()
    obs = torch.zeros(1, 1)  # Q(s, .) = 0
    next_obs = torch.ones(1, 1)
    reward, discount = torch.tensor([0.5]), torch.tensor([0.9])
    batch = ReplayBatch(
        obs, torch.tensor([1]), reward, next_obs, discount, torch.tensor([[False, True]])
    )

    def huber(err: float, d: float = cfg.huber_delta) -> float:
        return 0.5 * err**2 if abs(err) <= d else d * (abs(err) - 0.5 * d)

    # Q(s, 1) = 0; td_target = r + gamma^k * Q_target(s', argmax over valid actions = 1)
    twin = copy.deepcopy(learner)  # the same nets for the unmasked update
    assert learner.update(batch)["loss"] == pytest.approx(huber(0.5 + 0.9 * 2.0), rel=1e-5)
    unmasked = twin.update(batch._replace(next_mask=None))["loss"]
    assert unmasked == pytest.approx(huber(0.5 + 0.9 * 100.0), rel=1e-5)


def test_replay_keeps_leaves_in_wire_dtypes_and_mask_bits_through_state_dict() -> None:
    cfg = iudex_cfg()
    space = gym.make("soulsai/IudexLike-v0").observation_space
    layout = env_layout(cfg.env, space)
    buf = ReplayBuffer(8, layout=layout, n_mask=20, seed=0)
    leaves = iudex_leaves(layout, 6)
    mask = np.zeros((6, 20), bool)
    mask[:, 19] = True
    mask[np.arange(6), np.arange(6)] = True
    buf.add_batch(
        leaves, np.arange(6), np.ones(6, np.float32), leaves, np.ones(6, np.float32),
        pack_mask(mask),
    )  # fmt: skip
    assert buf.arrays["obs.player_animation"].dtype == np.int8
    assert buf.arrays["next_mask"].shape == (8, 3)
    batch = buf.sample(32)
    assert batch.obs["player_animation"].dtype == torch.int64
    assert batch.obs["boss_hp"].dtype == torch.float32
    assert batch.next_mask is not None and batch.next_mask.shape == (32, 20)
    rows = batch.action.numpy()
    np.testing.assert_array_equal(batch.next_mask.numpy(), mask[rows])
    restored = ReplayBuffer(8, layout=layout, n_mask=20, seed=5)
    restored.load_state_dict(buf.state_dict())
    for name, a in buf.arrays.items():
        np.testing.assert_array_equal(restored.arrays[name][:6], a[:6])
    with pytest.raises(ValueError, match="env.action_mask"):
        ReplayBuffer(8, layout=layout, seed=0).load_state_dict(buf.state_dict())

"""Image observations through CNN encoders: the numpy twins equal the torch forward (Nature and
IMPALA, channels last and first, stacked and grayscale, batched), frames as leaves of a Dict
beside vector leaves (IudexLikeImg-like), the weight shapes clients check, the DQN and PPO
networks built on them, and the layout's detection rules and their usage errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces as S

from soulsai.config import load_config
from soulsai.errors import ConfigError
from soulsai.model.cnn_spec import ImageOptions
from soulsai.model.nets import ActorCritic, QNetwork
from soulsai.model.numpy_ac import NumpyActorCritic
from soulsai.model.numpy_q import NumpyQPolicy
from soulsai.model.obs import build_layout, env_layout, obs_leaves
from soulsai.model.obs_encode import NumpyObsEncoder, encoder_weight_shapes
from soulsai.model.obs_torch import ObsEncoder
from soulsai.model.obs_wire import leaf_fields
from soulsai.model.shapes import dqn_weight_shapes, ppo_weight_shapes
from soulsai.training.algorithms.ppo import PPOLearner
from soulsai.training.rollout import RolloutBatch

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cfg_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cfg")
    shutil.copy(ROOT / "config" / "config_d.yaml", d / "config_d.yaml")
    return d


def frames(shape: tuple[int, ...], n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def shapes_of(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def assert_twin(torch_out: torch.Tensor, numpy_out: np.ndarray) -> None:
    expected = torch_out.detach().numpy()
    assert numpy_out.shape == expected.shape and numpy_out.dtype == np.float32
    np.testing.assert_allclose(numpy_out, expected, rtol=1e-5, atol=1e-4)


CASES = [  # (encoder, frame shape, channels last): Atari 84x84x4 both ways, stacked RGB, gray
    ("nature", (84, 84, 4), True),
    ("nature", (4, 84, 84), False),
    ("nature", (2, 40, 44, 3), True),
    ("nature", (40, 44), True),
    ("impala", (36, 40, 3), True),
    ("impala", (3, 36, 40), False),
    ("impala", (2, 3, 20, 24), False),
    ("impala", (10, 10, 4), True),  # MinAtar's frames: IMPALA takes any size
    ("minatar", (10, 10, 4), True),  # MinAtar Breakout
    ("minatar", (7, 10, 10), False),
    ("minatar", (2, 10, 10, 3), True),
]


@pytest.mark.parametrize("features", [None, 0])
@pytest.mark.parametrize(("encoder", "shape", "last"), CASES)
def test_numpy_cnn_twin_equals_the_torch_forward(encoder, shape, last, features) -> None:
    torch.manual_seed(0)
    options = ImageOptions(encoder, features=features)
    layout = build_layout(S.Box(0, 255, shape, np.uint8), image=options)
    (leaf,) = layout.leaves
    assert leaf.kind == "image" and leaf.channels_last == last and not layout.plain
    net = ObsEncoder(layout)
    assert shapes_of(net) == encoder_weight_shapes(layout, "onehot", 8, prefix="")
    twin = NumpyObsEncoder.from_state(layout, net.state_dict(), "onehot")
    x = frames(shape, 5)
    with torch.no_grad():
        out = net(torch.as_tensor(x))
    assert out.shape == (5, layout.n_features())
    assert_twin(out, twin(x))
    assert_twin(out[2:3], twin(x[2:3]))  # one observation, as a client acts on it


def iudex_img_like() -> S.Dict:
    """SoulsGym's image env's frames beside vector leaves of its state."""
    return S.Dict(
        {
            "frame": S.Box(0, 255, (90, 160, 3), np.uint8),
            "player_hp": S.Box(0.0, 454.0, (1,), np.float32),
            "boss_animation": S.Discrete(33, start=-1),
            "lock_on": S.MultiBinary(1),
        }
    )


@pytest.mark.parametrize("discrete_obs", ["onehot", "embedding"])
def test_dict_with_an_image_leaf_and_vector_leaves(discrete_obs) -> None:
    torch.manual_seed(1)
    space = iudex_img_like()
    layout = build_layout(space)
    assert [leaf.kind for leaf in layout.leaves] == ["box", "binary", "categorical", "image"]
    assert layout.n_continuous == 1  # the frame is scaled inside its CNN, never normalized
    assert (
        layout.n_features(discrete_obs, 4) == 1 + 1 + (33 if discrete_obs == "onehot" else 4) + 512
    )
    fields = leaf_fields(layout)
    assert fields["obs.frame"].dtype == np.uint8 and fields["obs.frame"].shape == (90, 160, 3)
    net = ObsEncoder(layout, discrete_obs, embedding_dim=4)
    assert shapes_of(net) == encoder_weight_shapes(layout, discrete_obs, 4, prefix="")
    twin = NumpyObsEncoder.from_state(layout, net.state_dict(), discrete_obs)
    space.seed(0)
    obs = [space.sample() for _ in range(3)]
    leaves = {
        k: np.concatenate([obs_leaves(layout, o, batched=False)[k] for o in obs])
        for k in layout.names
    }
    with torch.no_grad():
        out = net({k: torch.as_tensor(v) for k, v in leaves.items()})
    assert_twin(out, twin(leaves))
    assert out[:, 0].tolist() == [float(o["player_hp"][0]) for o in obs]  # the continuous prefix


def test_qnetwork_on_frames_matches_its_shapes_and_numpy_policy(cfg_dir) -> None:
    cfg = load_config(cfg_dir, ["env.image_features=0"])
    layout = env_layout(cfg.env, S.Box(0, 255, (4, 84, 84), np.uint8))
    torch.manual_seed(2)
    net = QNetwork(layout, 6, [512], normalize_obs=True)  # Nature DQN: conv, 512, actions
    dqn = cfg.dqn.model_copy(update={"hidden": [512]})
    assert shapes_of(net) == dqn_weight_shapes(dqn, layout, 6)
    assert shapes_of(net)["mlp.1.weight"] == (512, 3136)
    policy = NumpyQPolicy(net.state_dict(), True, layout)
    x = frames((4, 84, 84), 4)
    with torch.no_grad():
        q = net({"": torch.as_tensor(x)})
    assert_twin(q, policy.q_values({"": x}))


def test_qnetwork_with_the_minatar_encoder_is_minatars_dqn_network(cfg_dir) -> None:
    """conv 16x3x3/1 -> ReLU -> 1,024 features -> Linear(128) -> ReLU -> Q-values (Young &
    Tian 2019's network), and the numpy policy equals it."""
    cfg = load_config(cfg_dir, ["env.image_encoder=minatar"])
    layout = env_layout(cfg.env, S.Box(0, 255, (10, 10, 4), np.uint8))
    assert layout.n_features() == 16 * 8 * 8
    torch.manual_seed(3)
    net = QNetwork(layout, 6, [128], normalize_obs=True)
    dqn = cfg.dqn.model_copy(update={"hidden": [128]})
    shapes = shapes_of(net)
    assert shapes == dqn_weight_shapes(dqn, layout, 6)
    convs = {k: v for k, v in shapes.items() if k.endswith("conv.weight")}
    assert list(convs.values()) == [(16, 4, 3, 3)]
    assert shapes["mlp.1.weight"] == (128, 1024)
    policy = NumpyQPolicy(net.state_dict(), True, layout)
    x = (frames((10, 10, 4), 6) > 128).astype(np.uint8) * 255  # MinAtar's 0/255 frames
    with torch.no_grad():
        q = net({"": torch.as_tensor(x)})
    assert q.shape == (6, 6)
    assert_twin(q, policy.q_values({"": x}))


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("encoder", ["nature", "impala"])
def test_ppo_with_a_cnn_one_update_on_random_frames(cfg_dir, shared, encoder) -> None:
    cfg = load_config(cfg_dir, ["algo=ppo", f"env.image_encoder={encoder}"])
    p = cfg.ppo.model_copy(
        update={"shared_network": shared, "update_epochs": 1, "num_minibatches": 2}
    )
    obs_space, act_space = S.Box(0, 255, (36, 40, 3), np.uint8), S.Discrete(5)
    shapes = ppo_weight_shapes(p, obs_space, act_space, cfg.env)
    learner = PPOLearner(p, obs_space, act_space, seed=0, env=cfg.env)
    net: ActorCritic = learner.net
    assert shapes_of(net) == shapes
    assert sum(k.startswith("encoder.cnns.") for k in shapes) > 0
    assert all(".cnns.1." not in k for k in shapes)  # one CNN, for actor and critic alike
    n = 16
    obs = {"": torch.as_tensor(frames((36, 40, 3), n))}
    actions = torch.as_tensor(np.arange(n) % 5)
    with torch.no_grad():
        _, logprob, _, value = net.get_action_and_value(obs, actions)
    twin = NumpyActorCritic(net.state_dict(), True, p.normalize_obs, p.activation, net.layout)
    logits, values = twin.forward({"": obs[""].numpy()})
    assert_twin(value, values)
    before = {k: v.clone() for k, v in net.state_dict().items() if ".cnns." in k}
    adv = torch.linspace(-1, 1, n)
    info = learner.update(RolloutBatch(obs, actions, logprob, adv, value + adv, value))
    assert np.isfinite(info["approx_kl"]) and learner.updates == 2
    after = net.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the CNN learned


def test_image_detection_channels_and_sizes() -> None:
    def kind(space: gym.Space, **kw) -> list[tuple[str, bool]]:
        layout = build_layout(space, image=ImageOptions(**kw))
        return [(leaf.kind, leaf.channels_last) for leaf in layout.leaves]

    assert kind(S.Box(0, 255, (90, 160, 3), np.uint8)) == [("image", True)]
    assert kind(S.Box(0, 255, (4, 84, 84), np.uint8)) == [("image", False)]
    assert kind(S.Box(0, 255, (84, 84, 4), np.uint8), channels="first", encoder="impala") == [
        ("image", False)
    ]
    assert kind(S.Box(0, 255, (2, 3), np.uint8)) == [("box", True)]  # too small: a vector
    assert kind(S.Box(0, 1, (84, 84, 4), np.float32)) == [("box", True)]  # not uint8
    flat = build_layout(S.Box(0, 255, (84, 84, 4), np.uint8), image=ImageOptions("flatten"))
    assert flat.plain and flat.leaves[0].kind == "box"
    with pytest.raises(ConfigError, match="env.image_channels"):
        build_layout(S.Box(0, 255, (40, 40, 40), np.uint8))
    with pytest.raises(ConfigError, match="env.image_encoder: nature needs"):
        build_layout(S.Box(0, 255, (10, 10, 4), np.uint8))


def test_env_layout_reads_the_image_keys(cfg_dir) -> None:
    cfg = load_config(
        cfg_dir,
        ["env.image_encoder=impala", "env.image_features=64", "env.impala_channels=[8, 16]"],
    )
    layout = env_layout(cfg.env, S.Box(0, 255, (20, 24, 2), np.uint8))
    assert layout.image == ImageOptions("impala", "auto", 64, (8, 16))
    assert layout.n_features() == 64
    with pytest.raises(ConfigError, match="impala_channels"):
        load_config(cfg_dir, ["env.impala_channels=[0]"])

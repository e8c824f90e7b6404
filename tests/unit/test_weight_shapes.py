"""The torch-free weight specs in model.shapes equal the networks' real state_dicts."""

from __future__ import annotations

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

from soulsai.config import Config, default_config_dir, load_config
from soulsai.model.nets import ActorCritic, QNetwork
from soulsai.model.shapes import dqn_weight_shapes, ppo_weight_shapes
from soulsai.training.algorithms.ppo import build_actor_critic


@pytest.fixture(scope="module")
def default_cfg() -> Config:
    return load_config(default_config_dir())


def _shapes(net) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


@pytest.mark.parametrize("obs_shape", [(4,), (8,), (3, 5)])
@pytest.mark.parametrize("hidden", [[64, 64], [256], [32, 16, 8]])
@pytest.mark.parametrize("normalize", [True, False])
def test_dqn_shapes_equal_qnetwork_state_dict(obs_shape, hidden, normalize, default_cfg) -> None:
    cfg = default_cfg.dqn.model_copy(update={"hidden": hidden, "normalize_obs": normalize})
    net = QNetwork(obs_shape, 3, hidden, normalize)
    assert dqn_weight_shapes(cfg, obs_shape, 3) == _shapes(net)


SPACES = [
    (gym.spaces.Box(-1, 1, (4,), np.float32), gym.spaces.Discrete(2)),
    (gym.spaces.Box(-1, 1, (2, 3), np.float32), gym.spaces.Discrete(5)),
    (gym.spaces.Box(-1, 1, (3,), np.float32), gym.spaces.Box(-2, 2, (1,), np.float32)),
    (gym.spaces.Box(-1, 1, (8,), np.float32), gym.spaces.Box(-1, 1, (2, 2), np.float32)),
]


@pytest.mark.parametrize(("obs_space", "act_space"), SPACES)
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("hidden", [[64, 64], [16], [32, 16, 8]])
def test_ppo_shapes_equal_actor_critic_state_dict(
    obs_space, act_space, shared, hidden, default_cfg
):
    cfg = default_cfg.ppo.model_copy(update={"hidden": hidden, "shared_network": shared})
    net = build_actor_critic(cfg, obs_space, act_space)
    assert isinstance(net, ActorCritic)
    assert ppo_weight_shapes(cfg, obs_space, act_space) == _shapes(net)


def test_weight_specs_import_no_torch() -> None:
    code = (
        "import sys; import soulsai.model.shapes, soulsai.model.schedules, "
        "soulsai.transport.spaces, soulsai.transport.weights; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_clients_widen_half_weights_without_torch(tmp_path) -> None:
    """float16 weights decode to the same float32 values in a process without torch."""
    import torch

    from soulsai.transport.weights import decode_weights, encode_weights

    w = torch.linspace(-3, 3, 64 * 8).reshape(64, 8)
    blob = encode_weights({"w": w, "b": torch.ones(8)}, 3, wire_dtype="float16")
    (tmp_path / "blob").write_bytes(blob)
    code = (
        "import sys, numpy as np\n"
        "from soulsai.transport.weights import decode_weights\n"
        f"raw = open({str(tmp_path / 'blob')!r}, 'rb').read()\n"
        "arrays, meta = decode_weights(raw, {'w': (64, 8), 'b': (8,)}, 1 << 20)\n"
        "assert arrays['w'].dtype == np.float32, arrays['w'].dtype\n"
        "np.save(sys.argv[1], arrays['w'])\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "w.npy")], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
    here, _ = decode_weights(blob, {"w": (64, 8), "b": (8,)}, 1 << 20)  # the torch path
    np.testing.assert_array_equal(np.load(tmp_path / "w.npy"), here["w"])
    np.testing.assert_allclose(here["w"], w.numpy(), atol=2e-3)

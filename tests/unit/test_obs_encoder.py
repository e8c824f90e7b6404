"""Observation layouts and the encoder shared by the torch networks and their numpy twins:
nested Dict/Tuple spaces of every leaf kind, constant leaves, key selection, the bare Box as
the identity, and unsupported spaces as one-line usage errors."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces as S
from gymnasium.vector.utils import concatenate, create_empty_array

from soulsai.errors import ConfigError, SoulsaiError
from soulsai.model.obs import SUPPORTED, build_layout, int_dtype, obs_leaves, parse_obs_keys
from soulsai.model.obs_encode import NumpyObsEncoder, encoder_weight_shapes
from soulsai.model.obs_torch import ObsEncoder
from soulsai.model.obs_wire import leaf_fields
from soulsai.transport.spaces import space_field


def nested_space() -> S.Dict:
    """Every leaf kind, nested, SoulsGym's own leaves among them."""
    return S.Dict(
        {
            "phase": S.Discrete(2, start=1),
            "player_hp": S.Box(0.0, 1000.0, (1,), np.float32),
            "player_max_hp": S.Discrete(1, start=454),  # constant by its space
            "boss_animation": S.Discrete(31, start=-1),
            "pose": S.Box(-np.inf, np.inf, (4,), np.float32),
            "frame": S.Box(0, 255, (2, 3), np.uint8),
            "flags": S.Box(0, 1, (3,), np.bool_),
            "inner": S.Dict(
                {
                    "md": S.MultiDiscrete([3, 4], start=[-1, 2]),  # ranges differ: split
                    "grid": S.MultiDiscrete([[3, 3], [3, 3]]),  # one shared range: one leaf
                    "mb": S.MultiBinary((2, 2)),
                }
            ),
            "pair": S.Tuple((S.Box(-1.0, 1.0, (2,), np.float64), S.Discrete(300, start=-5))),
        }
    )


def batch_of(space: gym.Space, n: int, seed: int = 0):
    """What a vector env returns: n samples stacked leaf by leaf."""
    space.seed(seed)
    return concatenate(space, [space.sample() for _ in range(n)], create_empty_array(space, n))


@pytest.mark.parametrize("discrete_obs", ["onehot", "embedding"])
def test_numpy_encoder_equals_the_torch_forward_on_a_nested_dict(discrete_obs: str) -> None:
    torch.manual_seed(0)
    layout = build_layout(nested_space())
    net = ObsEncoder(layout, discrete_obs, embedding_dim=5)
    twin = NumpyObsEncoder.from_state(layout, net.state_dict(), discrete_obs)
    for seed in range(5):
        leaves = obs_leaves(layout, batch_of(nested_space(), 64, seed))
        with torch.no_grad():
            expected = net({k: torch.as_tensor(v) for k, v in leaves.items()}).numpy()
        got = twin(leaves)
        assert got.dtype == np.float32 and got.shape == (64, net.n_features)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_onehot_features_are_exact_and_continuous_features_come_first() -> None:
    space = S.Dict({"b": S.Discrete(3, start=-1), "a": S.Box(-2.0, 2.0, (2,), np.float32)})
    layout = build_layout(space)
    assert layout.names == ["a", "b"] and layout.n_continuous == 2
    obs = {"a": np.array([[0.5, -1.5]], np.float32), "b": np.array([1], np.int8)}
    np.testing.assert_array_equal(NumpyObsEncoder(layout)(obs), [[0.5, -1.5, 0.0, 0.0, 1.0]])


def test_leaves_travel_in_compact_dtypes() -> None:
    layout = build_layout(nested_space())
    dtypes = {leaf.name: leaf.dtype.str for leaf in layout.leaves}
    assert dtypes["phase"] == "|i1" and dtypes["boss_animation"] == "|i1"
    assert dtypes["pair.1"] == "<i2"  # -5 .. 294
    assert dtypes["frame"] == "|u1" and dtypes["pose"] == "<f4" and dtypes["pair.0"] == "<f8"
    assert dtypes["flags"] == "|i1" and dtypes["inner.mb"] == "|i1"
    assert int_dtype(0, 255) == np.uint8 and int_dtype(-1, 200) == np.int16
    assert int_dtype(0, 70000) == np.int32


def test_multi_discrete_splits_per_element_only_when_ranges_differ() -> None:
    layout = build_layout(nested_space())
    md = [leaf for leaf in layout.leaves if leaf.name.startswith("inner.md")]
    assert [(m.name, m.start, m.n, m.element) for m in md] == [
        ("inner.md.0", -1, 3, 0),
        ("inner.md.1", 2, 4, 1),
    ]
    grid = next(leaf for leaf in layout.leaves if leaf.name == "inner.grid")
    assert grid.shape == (2, 2) and grid.element is None


def test_leaves_constant_by_their_space_are_dropped_unless_asked_to_keep_them() -> None:
    space = S.Dict(
        {
            "hp": S.Box(0.0, 1.0, (1,), np.float32),
            "max_hp": S.Discrete(1, start=454),
            "fixed": S.Box(3.0, 3.0, (2,), np.float32),
            "ones": S.MultiDiscrete([1, 1]),
        }
    )
    assert build_layout(space).names == ["hp"]
    assert sorted(build_layout(space, drop_constant=False).names) == [
        "fixed", "hp", "max_hp", "ones",
    ]  # fmt: skip


def test_obs_keys_select_and_drop_by_name_and_by_subtree() -> None:
    space = nested_space()
    assert sorted(build_layout(space, keep=["phase", "pair"]).names) == [
        "pair.0",
        "pair.1",
        "phase",
    ]
    names = build_layout(space, drop=["inner", "pose"]).names
    assert not any(n.startswith("inner") or n == "pose" for n in names) and "phase" in names
    assert build_layout(space, keep=["inner"], drop=["inner.mb"]).names == [
        "inner.grid", "inner.md.0", "inner.md.1",
    ]  # fmt: skip
    assert parse_obs_keys(["a", "-b", "c"]) == (["a", "c"], ["b"])
    assert parse_obs_keys(["-b"]) == (None, ["b"]) and parse_obs_keys(None) == (None, [])


@pytest.mark.parametrize(
    ("keep", "drop", "needle"),
    [(["nope"], [], "'nope' names no observation key"), (None, ["phas"], "'phas'")],
)
def test_an_obs_key_that_names_nothing_is_a_config_error(keep, drop, needle) -> None:
    with pytest.raises(ConfigError, match=needle) as err:
        build_layout(nested_space(), keep=keep, drop=drop)
    assert str(err.value).startswith("env.obs_keys:") and err.value.exit_code == 2


def test_selecting_only_constant_keys_leaves_nothing_and_says_so() -> None:
    with pytest.raises(ConfigError, match="no observation key is left"):
        build_layout(nested_space(), keep=["player_max_hp"])


def test_a_plain_box_layout_is_the_identity_with_todays_wire_field() -> None:
    space = S.Box(-5.0, 5.0, (2, 3), np.float32)
    layout = build_layout(space)
    assert layout.plain and layout.names == [""] and layout.norm_shape == (2, 3)
    assert layout.n_continuous == layout.n_features("embedding", 8) == 6
    obs = batch_of(space, 7)
    leaves = obs_leaves(layout, obs)
    np.testing.assert_array_equal(NumpyObsEncoder(layout)(leaves), obs.reshape(7, 6))
    np.testing.assert_array_equal(NumpyObsEncoder(layout)(obs), obs.reshape(7, 6))
    np.testing.assert_array_equal(
        ObsEncoder(layout)(torch.as_tensor(obs)).numpy(), obs.reshape(7, 6)
    )
    assert leaf_fields(layout) == {"obs": space_field(space, "observation")}
    assert encoder_weight_shapes(layout, "embedding", 8) == {}


def test_embedding_weight_shapes_match_the_torch_state_dict() -> None:
    layout = build_layout(nested_space())
    net = torch.nn.Module()
    net.encoder = ObsEncoder(layout, "embedding", embedding_dim=3)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes == encoder_weight_shapes(layout, "embedding", 3)
    assert shapes["encoder.embeddings.0.weight"] == (31, 3)  # boss_animation, start -1
    assert encoder_weight_shapes(layout, "onehot", 3) == {}
    assert ObsEncoder(layout, "onehot").state_dict() == {}


def test_single_observations_and_out_of_space_values() -> None:
    space = nested_space()
    layout = build_layout(space)
    space.seed(1)
    one = space.sample()
    leaves = obs_leaves(layout, one, batched=False)
    assert all(len(v) == 1 for v in leaves.values())
    one["boss_animation"] = 200  # an env breaking its own space: not wrapped into int8
    with pytest.raises(SoulsaiError, match="'boss_animation' holds a value outside -1..29"):
        obs_leaves(layout, one, batched=False)


class StringSpace(gym.Space):
    """A space of strings, as a custom env might declare."""

    def __init__(self) -> None:
        super().__init__((), np.str_)


@pytest.mark.parametrize(
    ("space", "name"),
    [
        (S.Text(8), "observation space Text"),
        (S.Graph(S.Box(0, 1, (2,)), S.Discrete(2)), "observation space Graph"),
        (S.Sequence(S.Discrete(2)), "observation space Sequence"),
        (S.OneOf([S.Discrete(2), S.Discrete(3)]), "observation space OneOf"),
        (StringSpace(), "observation space StringSpace"),
        (S.Dict({"a": S.Discrete(2), "b": S.Dict({"c": S.Text(4)})}), "key 'b.c' Text"),
        (S.Tuple((S.Discrete(2), StringSpace())), "key '1' StringSpace"),
    ],
)
def test_unsupported_spaces_are_a_one_line_usage_error(space: gym.Space, name: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_layout(space)
    msg = str(err.value)
    assert name in msg and SUPPORTED in msg and "\n" not in msg
    assert err.value.exit_code == 2


def test_the_obs_config_keys_load_with_their_defaults_and_feed_the_layout(tmp_path) -> None:
    import shutil
    from pathlib import Path

    from soulsai.config import load_config

    shutil.copy(Path(__file__).resolve().parents[2] / "config" / "config_d.yaml", tmp_path)
    env = load_config(tmp_path, []).env
    assert (env.obs_keys, env.drop_constant_obs, env.discrete_obs, env.embedding_dim) == (
        None, True, "onehot", 8,
    )  # fmt: skip
    env = load_config(tmp_path, ["env.obs_keys=[-pose, -inner.mb]"]).env
    keep, drop = parse_obs_keys(env.obs_keys)
    names = build_layout(nested_space(), keep, drop, env.drop_constant_obs).names
    assert "pose" not in names and "inner.mb" not in names and "phase" in names
    with pytest.raises(ConfigError, match="env.discrete_obs"):
        load_config(tmp_path, ["env.discrete_obs=onehots"])

"""Wire codec: round trips, hostile envelopes (each with its reason label), and fuzzing.

The contract under test: every decoder either returns a value that matches the spec or raises
ProtocolError. Nothing else escapes, and nothing from the network is ever unpickled.
"""

from __future__ import annotations

import json
import pickle
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import msgpack
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as st_save

from soulsai.errors import ProtocolError
from soulsai.model.nets import QNetwork
from soulsai.model.specs import dqn_experience_spec
from soulsai.transport import batch, commands, envelope, episodes, weights
from soulsai.transport.batch import LayoutCache
from soulsai.transport.commands import MAX_COMMAND_BYTES, decode_command, encode_command
from soulsai.transport.envelope import (
    MAX_CLIENT_ID,
    Experience,
    ExperienceSpec,
    decode_experience,
    encode_experience,
)
from soulsai.transport.episodes import MAX_INFO_KEYS, EpisodeRecord, decode_episode, encode_episode
from soulsai.transport.weights import decode_weights, encode_weights, weights_metadata

N_STEP = 3
MAX_BATCH = 64
MAX_BYTES = 1 << 16
COMMANDS = frozenset({"save_best", "quicksave", "shutdown"})
FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

_env = gym.make("CartPole-v1")
OBS_SPACE, ACT_SPACE = _env.observation_space, _env.action_space
_env.close()
SPEC = dqn_experience_spec(OBS_SPACE, ACT_SPACE, N_STEP, MAX_BATCH, MAX_BYTES)


def make_fields(n: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "obs": rng.standard_normal((n, 4)).astype(np.float32),
        "action": rng.integers(0, 2, n).astype(np.int64),
        "reward": rng.standard_normal(n).astype(np.float32),
        "next_obs": rng.standard_normal((n, 4)).astype(np.float32),
        "terminated": rng.integers(0, 2, n).astype(np.uint8),
        "steps": rng.integers(1, N_STEP + 1, n).astype(np.uint8),
    }


def valid_envelope(n: int = 5) -> dict[str, Any]:
    """The unpacked structure of a valid experience message, for tests to tamper with."""
    return msgpack.unpackb(encode_experience("client-0", 3, make_fields(n)), raw=False)


def pack(msg: Any) -> bytes:
    return msgpack.packb(msg, use_bin_type=True)


def reason_of(fn: Callable[[], Any]) -> str:
    with pytest.raises(ProtocolError) as info:
        fn()
    return info.value.reason


def check_experience(exp: Experience, spec: ExperienceSpec = SPEC) -> None:
    """A successful decode must hold exactly the spec's fields, dtypes, shapes and bounds."""
    assert 1 <= exp.n <= spec.max_batch
    assert isinstance(exp.client_id, str) and 0 < len(exp.client_id) <= MAX_CLIENT_ID
    assert type(exp.model_id) is int and exp.model_id >= 0
    assert set(exp.fields) == set(spec.fields)
    for name, fs in spec.fields.items():
        arr = exp.fields[name]
        assert arr.dtype == fs.dtype
        assert arr.shape == (exp.n, *fs.shape)
        if arr.dtype.kind == "f":
            assert np.isfinite(arr).all()
        if fs.low is not None:
            assert (arr >= fs.low).all()
        if fs.high is not None:
            assert (arr <= fs.high).all()


def check_episode(rec: EpisodeRecord) -> None:
    assert isinstance(rec.client_id, str) and 0 < len(rec.client_id) <= MAX_CLIENT_ID
    assert np.isfinite(rec.ret) and np.isfinite(rec.time)
    assert type(rec.length) is int and rec.length > 0
    assert len(rec.info) <= MAX_INFO_KEYS
    assert all(isinstance(v, float) and np.isfinite(v) for v in rec.info.values())


# ---------------------------------------------------------------- experience round trips


def test_spec_matches_cartpole_spaces() -> None:
    assert set(SPEC.fields) == {"obs", "action", "reward", "next_obs", "terminated", "steps"}
    assert SPEC.fields["obs"].dtype == np.float32 and SPEC.fields["obs"].shape == (4,)
    assert SPEC.fields["action"].high == 1 and SPEC.fields["steps"].high == N_STEP


@pytest.mark.parametrize("n", [1, 7, MAX_BATCH])
def test_experience_round_trip_is_bit_identical(n: int) -> None:
    fields = make_fields(n, seed=n)
    fields["reward"][0] = -0.0  # the sign of zero survives too
    raw = encode_experience("client-7", 42, fields)
    assert isinstance(raw, bytes)
    exp = decode_experience(raw, SPEC)
    assert (exp.client_id, exp.model_id, exp.n) == ("client-7", 42, n)
    for name, arr in fields.items():
        out = exp.fields[name]
        assert out.dtype == arr.dtype and out.shape == arr.shape
        assert out.tobytes() == arr.tobytes(), name
    check_experience(exp)


def test_experience_accepts_non_contiguous_input_and_other_byte_containers() -> None:
    fields = make_fields(6)
    fields["obs"] = np.asfortranarray(fields["obs"])
    fields["next_obs"] = np.repeat(fields["next_obs"], 2, axis=0)[::2]
    raw = encode_experience("c", 0, fields)
    for container in (raw, bytearray(raw), memoryview(raw)):
        exp = decode_experience(container, SPEC)
        np.testing.assert_array_equal(exp.fields["obs"], fields["obs"])
        np.testing.assert_array_equal(exp.fields["next_obs"], fields["next_obs"])


def test_payload_exactly_at_the_cap_is_accepted() -> None:
    raw = encode_experience("c", 0, make_fields(4))
    at_cap = ExperienceSpec(SPEC.fields, SPEC.max_batch, max_bytes=len(raw))
    assert decode_experience(raw, at_cap).n == 4
    below = ExperienceSpec(SPEC.fields, SPEC.max_batch, max_bytes=len(raw) - 1)
    assert reason_of(lambda: decode_experience(raw, below)) == "too_large"


# ---------------------------------------------------------------- hostile experience


def _set(path: tuple, value: Any) -> Callable[[dict], None]:
    def mutate(msg: dict) -> None:
        node = msg
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = value

    return mutate


def _delete(path: tuple) -> Callable[[dict], None]:
    def mutate(msg: dict) -> None:
        node = msg
        for p in path[:-1]:
            node = node[p]
        del node[path[-1]]

    return mutate


def _array(name: str, arr: np.ndarray) -> Callable[[dict], None]:
    """Replace field `name` with a well-formed entry holding `arr` (dtype and shape as given)."""
    return _set(("f", name), [arr.dtype.str, list(arr.shape), arr.tobytes()])


def _poison(name: str, index: int, value: float) -> Callable[[dict], None]:
    def mutate(msg: dict) -> None:
        dtype, shape, data = msg["f"][name]
        arr = np.frombuffer(data, dtype=dtype).copy()
        arr.flat[index] = value
        msg["f"][name] = [dtype, shape, arr.tobytes()]

    return mutate


def _trim_buffer(name: str, nbytes: int) -> Callable[[dict], None]:
    def mutate(msg: dict) -> None:
        msg["f"][name][2] = msg["f"][name][2][:-nbytes]

    return mutate


HOSTILE_EXPERIENCE: dict[str, tuple[Callable[[dict], None], str]] = {
    "empty_map": (lambda m: m.clear(), "bad_version"),
    "version_2": (_set(("v",), 2), "bad_version"),
    "version_0": (_set(("v",), 0), "bad_version"),
    "version_true": (_set(("v",), True), "bad_version"),
    "version_float": (_set(("v",), 1.0), "bad_version"),
    "version_str": (_set(("v",), "1"), "bad_version"),
    "version_missing": (_delete(("v",)), "bad_version"),
    "kind_episode": (_set(("t",), "ep"), "bad_kind"),
    "kind_missing": (_delete(("t",)), "bad_kind"),
    "kind_bytes": (_set(("t",), b"exp"), "bad_kind"),
    "client_missing": (_delete(("client",)), "bad_structure"),
    "client_empty": (_set(("client",), ""), "bad_structure"),
    "client_too_long": (_set(("client",), "x" * (MAX_CLIENT_ID + 1)), "bad_structure"),
    "client_int": (_set(("client",), 5), "bad_structure"),
    "client_bytes": (_set(("client",), b"c"), "bad_structure"),
    "model_id_negative": (_set(("model_id",), -1), "bad_structure"),
    "model_id_float": (_set(("model_id",), 1.0), "bad_structure"),
    "model_id_str": (_set(("model_id",), "3"), "bad_structure"),
    "model_id_bool": (_set(("model_id",), True), "bad_structure"),
    "model_id_huge": (_set(("model_id",), 2**64 - 1), "bad_structure"),
    "model_id_missing": (_delete(("model_id",)), "bad_structure"),
    "n_zero": (_set(("n",), 0), "bad_batch_size"),
    "n_negative": (_set(("n",), -5), "bad_batch_size"),
    "n_over_max_batch": (_set(("n",), MAX_BATCH + 1), "bad_batch_size"),
    "n_bool": (_set(("n",), True), "bad_batch_size"),
    "n_float": (_set(("n",), 5.0), "bad_batch_size"),
    "n_missing": (_delete(("n",)), "bad_batch_size"),
    "n_disagrees_with_arrays": (_set(("n",), 4), "bad_shape"),
    "fields_missing": (_delete(("f",)), "bad_structure"),
    "fields_list": (_set(("f",), [1, 2]), "bad_structure"),
    "missing_field": (_delete(("f", "reward")), "bad_field"),
    "extra_field": (_set(("f", "priority"), ["<f4", [5], b"\0" * 20]), "bad_field"),
    "renamed_field": (
        lambda m: m["f"].__setitem__("rewards", m["f"].pop("reward")),
        "bad_field",
    ),
    "field_not_triple": (_set(("f", "obs"), ["<f4", [5, 4]]), "bad_structure"),
    "field_not_list": (_set(("f", "obs"), {"dtype": "<f4"}), "bad_structure"),
    "wrong_dtype_f8": (_array("obs", np.zeros((5, 4), np.float64)), "bad_dtype"),
    "wrong_dtype_big_endian": (_array("obs", np.zeros((5, 4), ">f4")), "bad_dtype"),
    "wrong_dtype_object": (_set(("f", "obs"), ["|O", [5, 4], b"\0" * 40]), "bad_dtype"),
    "wrong_dtype_action_i4": (_array("action", np.zeros(5, np.int32)), "bad_dtype"),
    "wrong_dtype_type": (_set(("f", "obs"), [7, [5, 4], b"\0" * 80]), "bad_dtype"),
    "wrong_shape": (_array("obs", np.zeros((5, 5), np.float32)), "bad_shape"),
    "wrong_shape_flat": (_array("obs", np.zeros(20, np.float32)), "bad_shape"),
    "wrong_shape_rank": (_array("reward", np.zeros((5, 1), np.float32)), "bad_shape"),
    "shape_not_list": (_set(("f", "reward", 1), "5"), "bad_shape"),
    "buffer_short": (_trim_buffer("obs", 4), "bad_shape"),
    "buffer_one_byte_short": (_trim_buffer("action", 1), "bad_shape"),
    "buffer_long": (
        lambda m: m["f"]["reward"].__setitem__(2, m["f"]["reward"][2] + b"\0" * 4),
        "bad_shape",
    ),
    "buffer_str": (_set(("f", "steps", 2), "\x01" * 5), "bad_shape"),
    "nan_obs": (_poison("obs", 3, np.nan), "non_finite"),
    "inf_reward": (_poison("reward", 0, np.inf), "non_finite"),
    "neg_inf_next_obs": (_poison("next_obs", 19, -np.inf), "non_finite"),
    "nan_reward": (_poison("reward", 4, np.nan), "non_finite"),
    "action_too_high": (_poison("action", 2, 2), "out_of_range"),
    "action_negative": (_poison("action", 0, -1), "out_of_range"),
    "action_huge": (_poison("action", 1, 2**62), "out_of_range"),
    "steps_zero": (_poison("steps", 0, 0), "out_of_range"),
    "steps_over_n_step": (_poison("steps", 3, N_STEP + 1), "out_of_range"),
    "steps_255": (_poison("steps", 4, 255), "out_of_range"),
    "terminated_two": (_poison("terminated", 1, 2), "out_of_range"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_EXPERIENCE))
def test_hostile_experience_is_rejected_with_its_reason(case: str) -> None:
    mutate, reason = HOSTILE_EXPERIENCE[case]
    msg = valid_envelope()
    mutate(msg)
    raw = pack(msg)
    assert reason_of(lambda: decode_experience(raw, SPEC)) == reason


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"", "not_msgpack"),
        (b"\xc1", "not_msgpack"),  # the one byte msgpack never uses
        (pack([1, "exp"]), "bad_structure"),
        (pack("hello"), "bad_structure"),
        (pack(None), "bad_structure"),
        (pack({1: 2}), "not_msgpack"),  # non-string map keys are refused by the unpacker
        (pack({"v": 1}) + b"\x00", "not_msgpack"),  # trailing data
        (b"\x91" * 60_000, "not_msgpack"),  # nesting deeper than the unpacker's stack
        (b"\xdd\xff\xff\xff\xff", "not_msgpack"),  # an array claiming 4 billion items
        (b"\xc6\xff\xff\xff\xff", "not_msgpack"),  # a bin claiming 4 GB
        (pack(msgpack.ExtType(1, b"x")), "not_msgpack"),  # extension types are refused
    ],
    ids=lambda v: v[:12].hex() if isinstance(v, bytes) else v,
)
def test_malformed_bytes_are_rejected(raw: bytes, reason: str) -> None:
    assert reason_of(lambda: decode_experience(raw, SPEC)) == reason


def test_truncated_envelopes_are_rejected() -> None:
    raw = encode_experience("client-0", 1, make_fields(3))
    for cut in range(len(raw)):
        with pytest.raises(ProtocolError):
            decode_experience(raw[:cut], SPEC)


def test_random_bytes_are_rejected() -> None:
    rng = np.random.default_rng(1234)
    for size in (1, 7, 64, 1000, 50_000):
        raw = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        reason = reason_of(lambda raw=raw: decode_experience(raw, SPEC))
        assert reason in {"not_msgpack", "bad_structure"}


@pytest.mark.parametrize("payload", [None, 5, 1.5, "text", ["a"], {"v": 1}, np.zeros(4)])
def test_non_bytes_payload_is_rejected(payload: Any) -> None:
    assert reason_of(lambda: decode_experience(payload, SPEC)) == "bad_structure"
    assert reason_of(lambda: decode_episode(payload)) == "bad_structure"


def _must_not_unpack(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("an oversized payload reached msgpack")


def test_oversized_payload_is_rejected_before_unpacking(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = encode_experience("c", 0, make_fields(MAX_BATCH))  # valid, one byte over this cap
    just_under = ExperienceSpec(SPEC.fields, SPEC.max_batch, max_bytes=len(raw) - 1)
    monkeypatch.setattr(msgpack, "unpackb", _must_not_unpack)
    assert reason_of(lambda: decode_experience(raw, just_under)) == "too_large"
    assert reason_of(lambda: decode_experience(b"\0" * (20 << 20), SPEC)) == "too_large"


# ---------------------------------------------------------------- episodes


def make_record(**overrides: Any) -> EpisodeRecord:
    base = dict(
        client_id="client-3",
        model_id=17,
        ret=123.25,
        length=200,
        info={"boss_hp": 0.125, "phase": 2.0},
        time=1_700_000_000.123456,
    )
    return EpisodeRecord(**{**base, **overrides})


def test_episode_round_trip() -> None:
    rec = make_record()
    out = decode_episode(encode_episode(rec))
    assert out == rec
    check_episode(out)
    assert out.as_dict()["info.boss_hp"] == 0.125 and out.as_dict()["return"] == 123.25


def test_episode_round_trip_with_full_info_and_int_values() -> None:
    info = {f"k{i}": float(i) for i in range(MAX_INFO_KEYS)}
    rec = make_record(info=info, ret=-1e9)  # the bound itself (telemetry.max_abs_return)
    assert decode_episode(encode_episode(rec)) == rec
    raw = pack({**msgpack.unpackb(encode_episode(rec)), "return": 5, "info": {"a": 3}})
    out = decode_episode(raw)
    assert out.ret == 5.0 and out.info == {"a": 3.0} and isinstance(out.info["a"], float)


def _episode_msg() -> dict[str, Any]:
    return msgpack.unpackb(encode_episode(make_record()))


HOSTILE_EPISODE: dict[str, tuple[Callable[[dict], None], str]] = {
    "version": (_set(("v",), 9), "bad_version"),
    "kind_exp": (_set(("t",), "exp"), "bad_kind"),
    "client_too_long": (_set(("client",), "c" * (MAX_CLIENT_ID + 1)), "bad_structure"),
    "model_id_negative": (_set(("model_id",), -3), "bad_structure"),
    "model_id_float": (_set(("model_id",), 2.5), "bad_structure"),
    "return_nan": (_set(("return",), float("nan")), "non_finite"),
    "return_inf": (_set(("return",), float("inf")), "non_finite"),
    "return_neg_inf": (_set(("return",), float("-inf")), "non_finite"),
    "return_str": (_set(("return",), "12"), "bad_structure"),
    "return_bool": (_set(("return",), True), "bad_structure"),
    "return_missing": (_delete(("return",)), "bad_structure"),
    "length_zero": (_set(("length",), 0), "bad_structure"),
    "length_float": (_set(("length",), 3.0), "bad_structure"),
    "length_bool": (_set(("length",), True), "bad_structure"),
    "time_inf": (_set(("time",), float("inf")), "non_finite"),
    "time_missing": (_delete(("time",)), "bad_structure"),
    "info_list": (_set(("info",), [1.0]), "bad_structure"),
    "info_too_many_keys": (
        _set(("info",), {f"k{i}": 1.0 for i in range(MAX_INFO_KEYS + 1)}),
        "bad_structure",
    ),
    "info_key_too_long": (_set(("info",), {"k" * 65: 1.0}), "bad_structure"),
    "info_key_empty": (_set(("info",), {"": 1.0}), "bad_structure"),
    "info_key_bytes": (_set(("info",), {b"k": 1.0}), "bad_structure"),
    "info_value_nan": (_set(("info",), {"k": float("nan")}), "non_finite"),
    "info_value_str": (_set(("info",), {"k": "1.0"}), "bad_structure"),
    "info_value_nested": (_set(("info",), {"k": {"a": 1.0}}), "bad_structure"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_EPISODE))
def test_hostile_episode_is_rejected_with_its_reason(case: str) -> None:
    mutate, reason = HOSTILE_EPISODE[case]
    msg = _episode_msg()
    mutate(msg)
    raw = pack(msg)
    assert reason_of(lambda: decode_episode(raw)) == reason


def test_episode_with_a_10mb_string_is_too_large(monkeypatch: pytest.MonkeyPatch) -> None:
    huge_client = encode_episode(make_record(client_id="x" * (10 << 20)))
    huge_info = pack({**_episode_msg(), "info": {"k": "y" * (10 << 20)}})
    monkeypatch.setattr(msgpack, "unpackb", _must_not_unpack)
    for raw in (huge_client, huge_info):
        assert len(raw) > 10 << 20
        assert reason_of(lambda raw=raw: decode_episode(raw, max_bytes=65536)) == "too_large"


def test_long_strings_under_the_byte_cap_are_still_rejected() -> None:
    raw = pack({**_episode_msg(), "client": "z" * 5000})
    assert reason_of(lambda: decode_episode(raw, max_bytes=1 << 20)) == "not_msgpack"


# ---------------------------------------------------------------- weights


def make_net(seed: int = 0) -> QNetwork:
    torch.manual_seed(seed)
    net = QNetwork((4,), 2, [16, 8], normalize_obs=True)
    net.obs_norm.update(np.random.default_rng(seed).normal(size=(32, 4)))
    return net


def expected_shapes(net: QNetwork) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def test_weights_round_trip_with_model_id_and_metadata() -> None:
    net = make_net()
    state = net.state_dict()
    # what the training node sends: counters a client computes with
    meta = {"env_steps": 12345, "num_clients": 2, "updates": 7, "iterations": 3}
    raw = encode_weights(state, 99, meta)
    assert isinstance(raw, bytes)
    tensors, got = decode_weights(raw, expected_shapes(net), MAX_BYTES)
    assert got == {"model_id": 99, **meta}
    assert weights_metadata(raw, MAX_BYTES) == got
    assert set(tensors) == set(state)
    for name, t in state.items():  # numpy arrays, bit-identical to the tensors sent
        assert isinstance(tensors[name], np.ndarray)
        assert torch.equal(torch.tensor(tensors[name]), t), name  # (read-only views of raw)
    other = QNetwork((4,), 2, [16, 8], normalize_obs=True)
    other.load_state_dict({k: torch.tensor(v) for k, v in tensors.items()})
    x = torch.randn(5, 4)
    assert torch.equal(other(x), net(x))


def test_weights_without_metadata() -> None:
    net = make_net()
    raw = encode_weights(net.state_dict(), 0)
    tensors, meta = decode_weights(raw, expected_shapes(net), MAX_BYTES)
    assert meta == {"model_id": 0}
    assert len(tensors) == len(net.state_dict())


def test_weights_with_wrong_names_are_rejected() -> None:
    net = make_net()
    state = dict(net.state_dict())
    shapes = expected_shapes(net)
    extra = {**state, "mlp.9.weight": torch.zeros(2, 2)}
    assert reason_of(lambda: decode_weights(encode_weights(extra, 1), shapes, MAX_BYTES)) == (
        "bad_field"
    )
    missing = {k: v for k, v in state.items() if k != "mlp.1.bias"}
    assert reason_of(lambda: decode_weights(encode_weights(missing, 1), shapes, MAX_BYTES)) == (
        "bad_field"
    )


def test_weights_with_wrong_shapes_are_rejected() -> None:
    net = make_net()
    bigger = QNetwork((4,), 2, [32, 8], normalize_obs=True)
    raw = encode_weights(bigger.state_dict(), 1)
    assert reason_of(lambda: decode_weights(raw, expected_shapes(net), MAX_BYTES)) == "bad_shape"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("name", ["mlp.1.weight", "mlp.5.bias", "obs_norm.var"])
def test_non_finite_weights_are_rejected(name: str, bad: float) -> None:
    net = make_net()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state[name].view(-1)[0] = bad
    raw = encode_weights(state, 1)
    assert reason_of(lambda: decode_weights(raw, expected_shapes(net), MAX_BYTES)) == ("non_finite")


def _blob_with_metadata(metadata: dict[str, str]) -> bytes:
    return st_save({"w": torch.zeros(2)}, metadata=metadata)


def _blob_with_header(header: str | bytes) -> bytes:
    h = header.encode() if isinstance(header, str) else header
    return struct.pack("<Q", len(h)) + h


@pytest.mark.parametrize(
    "raw",
    [
        _blob_with_metadata({"model_id": "-1"}),
        _blob_with_metadata({"model_id": "abc"}),
        _blob_with_metadata({"model_id": "1.5"}),
        _blob_with_metadata({"model_id": "1e999"}),
        _blob_with_metadata({"model_id": ""}),
        _blob_with_metadata({"model_id": " 3"}),
        _blob_with_metadata({"model_id": "\u0663"}),  # a non-ASCII digit
        _blob_with_metadata({"model_id": str(2**63)}),
        _blob_with_metadata({"model_id": "9" * 5000}),
        _blob_with_metadata({"other": "1"}),
        _blob_with_metadata({"model_id": "1", "meta": "not json"}),
        _blob_with_metadata({"model_id": "1", "meta": "[" * 5000}),
        # counters a client computes with (int(meta["env_steps"]) in its env loop): only
        # integers in [0, 2**53]; Python's json would read Infinity and NaN
        _blob_with_metadata({"model_id": "1", "env_steps": "Infinity"}),
        _blob_with_metadata({"model_id": "1", "env_steps": "NaN"}),
        _blob_with_metadata({"model_id": "1", "num_clients": '"2"'}),
        _blob_with_metadata({"model_id": "1", "num_clients": "[2]"}),
        _blob_with_metadata({"model_id": "1", "num_clients": "true"}),
        _blob_with_metadata({"model_id": "1", "env_steps": "1.5"}),
        _blob_with_metadata({"model_id": "1", "env_steps": "-5"}),
        _blob_with_metadata({"model_id": "1", "env_steps": str(2**60)}),
        _blob_with_metadata({"model_id": "1", "updates": "1e300"}),
        st_save({"w": torch.zeros(2)}),
        _blob_with_header('{"__metadata__": {"model_id": 1e999}}'),
        _blob_with_header('{"__metadata__": {"model_id": -4}}'),
        _blob_with_header('{"__metadata__": {"model_id": 4}}'),
        _blob_with_header('{"__metadata__": []}'),
        _blob_with_header("[" * 100_000),
        _blob_with_header("[]"),
        _blob_with_header(b"\xff\xfe\x00"),
        struct.pack("<Q", 1 << 40) + b"{}",
        struct.pack("<Q", 3) + b"{}",
        b"\x02\x00\x00",
        b"",
    ],
    ids=lambda raw: raw[8:40].decode(errors="replace"),
)
def test_bad_weights_metadata_is_rejected(raw: bytes) -> None:
    assert reason_of(lambda: weights_metadata(raw, 1 << 20)) == "bad_structure"
    assert reason_of(lambda: decode_weights(raw, {"w": (2,)}, 1 << 20)) == "bad_structure"


def test_negative_model_id_from_the_encoder_is_rejected() -> None:
    raw = encode_weights({"w": torch.zeros(2)}, -1)
    assert reason_of(lambda: decode_weights(raw, {"w": (2,)}, 1 << 20)) == "bad_structure"


def test_oversized_and_non_bytes_weights_are_rejected() -> None:
    net = make_net()
    raw = encode_weights(net.state_dict(), 1)
    assert reason_of(lambda: decode_weights(raw, expected_shapes(net), len(raw) - 1)) == (
        "too_large"
    )
    assert decode_weights(raw, expected_shapes(net), len(raw))[1]["model_id"] == 1
    for payload in (None, "text", 5, raw.decode("latin-1")):
        assert reason_of(lambda p=payload: weights_metadata(p, MAX_BYTES)) == "bad_structure"


def test_truncated_or_corrupted_weights_are_rejected() -> None:
    net = make_net()
    shapes = expected_shapes(net)
    raw = encode_weights(net.state_dict(), 1)
    for cut in (0, 4, 8, 9, 50, len(raw) // 2, len(raw) - 1):
        with pytest.raises(ProtocolError):
            decode_weights(raw[:cut], shapes, MAX_BYTES)
    assert reason_of(lambda: decode_weights(raw + b"\0" * 4, shapes, MAX_BYTES)) == (
        "bad_structure"
    )


# ---------------------------------------------------------------- commands


def test_command_round_trip() -> None:
    raw = encode_command("save_best", path="best_model", episode=12, ret=310.5)
    assert decode_command(raw, COMMANDS) == {
        "cmd": "save_best",
        "path": "best_model",
        "episode": 12,
        "ret": 310.5,
    }
    assert decode_command(raw.decode(), COMMANDS)["cmd"] == "save_best"
    assert decode_command(encode_command("shutdown"), COMMANDS) == {"cmd": "shutdown"}


@pytest.mark.parametrize(
    "raw, reason",
    [
        (encode_command("rm_rf"), "unknown_command"),
        (encode_command("SHUTDOWN"), "unknown_command"),
        (b"not json", "not_json"),
        (b"", "not_json"),
        (b"\xff\xfe\xfa", "not_json"),
        (b"[" * MAX_COMMAND_BYTES, "not_json"),  # deep nesting must not escape as RecursionError
        (b"[" * 2000 + b"]" * 2000, "not_json"),
        (b'{"cmd": "shutdown", "x": ' + b"[" * 1500 + b"]" * 1500 + b"}", "not_json"),
        (b"[1, 2]", "bad_structure"),
        (b'"shutdown"', "bad_structure"),
        (b'{"cmd": 1}', "bad_structure"),
        (b'{"command": "shutdown"}', "bad_structure"),
        (b'{"cmd": "shutdown", "pad": "' + b"x" * MAX_COMMAND_BYTES + b'"}', "too_large"),
        (None, "bad_structure"),
        (1, "bad_structure"),
        (["shutdown"], "bad_structure"),
    ],
    ids=lambda v: repr(v)[:20],
)
def test_bad_commands_are_rejected(raw: Any, reason: str) -> None:
    assert reason_of(lambda: decode_command(raw, COMMANDS)) == reason


# ---------------------------------------------------------------- no unpickling

TRIPPED: list[str] = []


def _tripwire(*args: Any, **kwargs: Any) -> None:
    TRIPPED.append("unpickled")
    raise AssertionError("network data was unpickled")


class _Payload:
    def __reduce__(self) -> tuple:
        return (_tripwire, ())


def test_decoders_never_unpickle(monkeypatch: pytest.MonkeyPatch) -> None:
    pickles = [pickle.dumps(_Payload(), protocol=p) for p in range(pickle.HIGHEST_PROTOCOL + 1)]
    torch_bytes = _torch_save_bytes()
    msg = valid_envelope()
    msg["f"]["obs"][2] = pickles[-1]  # a pickle where a raw buffer belongs
    in_envelope = pack(msg)
    for mod, name in [(pickle, "loads"), (pickle, "load"), (pickle, "Unpickler"), (torch, "load")]:
        monkeypatch.setattr(mod, name, _tripwire)
    TRIPPED.clear()
    for raw in [*pickles, torch_bytes, in_envelope]:
        for decode in (
            lambda r: decode_experience(r, SPEC),
            decode_episode,
            lambda r: decode_command(r, COMMANDS),
            lambda r: weights_metadata(r, 1 << 20),
            lambda r: decode_weights(r, {"w": (2,)}, 1 << 20),
        ):
            with pytest.raises(ProtocolError):
                decode(raw)
    assert TRIPPED == []
    assert torch_bytes[:2] == b"PK"  # torch.save's zip container: rejected like any junk


def _torch_save_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    return buf.getvalue()


def test_codec_source_has_no_unpickling_calls() -> None:
    for module in (envelope, batch, episodes, weights, commands):
        src = Path(module.__file__).read_text(encoding="utf-8")
        for needle in ("import pickle", "pickle.load", "torch.load(", "allow_pickle=True", "eval("):
            assert needle not in src, (module.__name__, needle)


# ---------------------------------------------------------------- fuzzing


def _decode_all(raw: Any) -> None:
    """Run every decoder on `raw`; anything but ProtocolError fails the test."""
    for decode, check in (
        (lambda r: decode_experience(r, SPEC), check_experience),
        (decode_episode, check_episode),
        (lambda r: decode_command(r, COMMANDS), lambda c: c["cmd"] in COMMANDS),
        (lambda r: weights_metadata(r, 1 << 20), lambda m: m["model_id"] >= 0),
        (lambda r: decode_weights(r, {"w": (2,)}, 1 << 20), None),
    ):
        try:
            out = decode(raw)
        except ProtocolError as e:
            assert isinstance(e.reason, str) and e.reason
            continue
        if check is not None:
            assert check(out) is not False


@settings(FUZZ, max_examples=3000)
@given(st.binary(max_size=512))
def test_fuzz_arbitrary_bytes(raw: bytes) -> None:
    _decode_all(raw)


@settings(FUZZ, max_examples=300)
@given(st.binary(max_size=64), st.sampled_from([b"\x86", b"\x87", b"\x80", b"{", b"\x10\0\0\0"]))
def test_fuzz_bytes_with_plausible_first_byte(tail: bytes, head: bytes) -> None:
    _decode_all(head + tail)


PACKABLE_INTS = st.integers(min_value=-(2**63), max_value=2**64 - 1)
LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    PACKABLE_INTS,
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=40),
)
ANY = st.recursive(
    LEAVES,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(
            st.one_of(st.text(max_size=8), st.binary(max_size=4)), children, max_size=5
        ),
    ),
    max_leaves=15,
)
DTYPES = st.sampled_from(["<f4", "<f8", "<i8", "|u1", "|b1", "<i4", ">f4", "|O", "<U4", "<c8"])
FIELD_ENTRY = st.one_of(
    ANY,
    st.tuples(
        st.one_of(DTYPES, ANY),
        st.lists(st.integers(min_value=-2, max_value=8), max_size=3),
        st.binary(max_size=200),
    ).map(list),
)
EXPERIENCE_LIKE = st.fixed_dictionaries(
    {
        "v": st.one_of(st.just(1), ANY),
        "t": st.one_of(st.just("exp"), ANY),
        "client": st.one_of(st.just("c"), ANY),
        "model_id": st.one_of(st.integers(min_value=-3, max_value=3), ANY),
        "n": st.one_of(st.integers(min_value=-1, max_value=MAX_BATCH + 1), ANY),
        "f": st.one_of(
            st.dictionaries(st.sampled_from([*SPEC.fields, "x"]), FIELD_ENTRY, max_size=7),
            ANY,
        ),
    }
)
EPISODE_LIKE = st.fixed_dictionaries(
    {
        "v": st.one_of(st.just(1), ANY),
        "t": st.one_of(st.just("ep"), ANY),
        "client": st.one_of(st.text(min_size=1, max_size=70), ANY),
        "model_id": st.one_of(st.integers(min_value=-3, max_value=3), ANY),
        "return": st.one_of(st.floats(), PACKABLE_INTS, ANY),
        "length": st.one_of(st.integers(min_value=-1, max_value=10), ANY),
        "time": st.one_of(st.floats(), ANY),
        "info": st.one_of(st.dictionaries(st.text(max_size=70), st.floats(), max_size=35), ANY),
    }
)


@settings(FUZZ, max_examples=300)
@given(st.one_of(ANY, EXPERIENCE_LIKE, EPISODE_LIKE))
def test_fuzz_msgpack_structures(obj: Any) -> None:
    raw = msgpack.packb(obj, use_bin_type=True)
    _decode_all(raw)
    if isinstance(obj, dict):  # the same structure as a JSON command
        text = json.dumps(obj, default=lambda b: b.hex(), skipkeys=True)
        _decode_all(text.encode()[:MAX_COMMAND_BYTES])


@settings(FUZZ, max_examples=400)
@given(st.integers(min_value=1, max_value=8), st.integers(min_value=0, max_value=2**32 - 1))
def test_fuzz_valid_experience_with_random_field_values(n: int, seed: int) -> None:
    """Valid layout, arbitrary bit patterns: accepted only when every value is in bounds."""
    rng = np.random.default_rng(seed)
    msg = valid_envelope(n)
    for name in SPEC.fields:
        size = len(msg["f"][name][2])
        if rng.random() < 0.5:
            msg["f"][name][2] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    try:
        exp = decode_experience(pack(msg), SPEC)
    except ProtocolError as e:
        assert e.reason in {"non_finite", "out_of_range"}
        return
    check_experience(exp)


MUTATIONS = st.lists(
    st.tuples(
        st.sampled_from(["flip", "insert", "delete", "set"]),
        st.integers(min_value=0, max_value=1 << 16),
        st.integers(min_value=0, max_value=255),
    ),
    min_size=1,
    max_size=4,
)


def mutate_bytes(raw: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    buf = bytearray(raw)
    for op, pos, byte in ops:
        i = pos % (len(buf) + 1)
        if op == "insert":
            buf.insert(i, byte)
        elif buf and i < len(buf):
            if op == "delete":
                del buf[i]
            elif op == "flip":
                buf[i] ^= 1 << (byte % 8)
            else:
                buf[i] = byte
    return bytes(buf)


VALID_EXPERIENCE = [encode_experience("client-0", 5, make_fields(n, seed=n)) for n in (1, 2, 6)]
VALID_EPISODE = encode_episode(make_record())
VALID_WEIGHTS = encode_weights({"w": torch.ones(2)}, 3, {"env_steps": 10})
VALID_COMMAND = encode_command("save_best", episode=3)


@settings(FUZZ, max_examples=1200)
@given(st.sampled_from(VALID_EXPERIENCE), MUTATIONS)
def test_fuzz_mutated_experience(raw: bytes, ops: list[tuple[str, int, int]]) -> None:
    mutated = mutate_bytes(raw, ops)
    try:
        exp = decode_experience(mutated, SPEC)
    except ProtocolError:
        return
    check_experience(exp)


@settings(FUZZ, max_examples=600)
@given(
    st.sampled_from([VALID_EPISODE, VALID_WEIGHTS, VALID_COMMAND, *VALID_EXPERIENCE]),
    MUTATIONS,
)
def test_fuzz_mutated_envelopes_of_every_kind(raw: bytes, ops: list[tuple[str, int, int]]) -> None:
    _decode_all(mutate_bytes(raw, ops))


def test_batched_decode_isolates_bad_envelopes_in_place() -> None:
    """decode_experiences checks values over the whole batch, then finds culprits one by one."""
    from soulsai.transport.batch import decode_experiences

    spec = dqn_experience_spec(
        gym.spaces.Box(-np.inf, np.inf, (4,), np.float32), gym.spaces.Discrete(2), 3, 64, 1 << 20
    )

    def envelope(model_id: int, **override: np.ndarray) -> bytes:
        fields = {
            "obs": np.full((3, 4), model_id, np.float32),
            "action": np.ones(3, np.int64),
            "reward": np.ones(3, np.float32),
            "next_obs": np.zeros((3, 4), np.float32),
            "terminated": np.zeros(3, np.uint8),
            "steps": np.full(3, 2, np.uint8),
        }
        fields.update(override)
        return encode_experience("c", model_id, fields)

    raws = [
        envelope(1),
        envelope(2, reward=np.array([0.0, np.nan, 1.0], np.float32)),
        b"garbage",
        envelope(4, action=np.array([0, 1, 2], np.int64)),
        envelope(5),
    ]
    out = decode_experiences(raws, spec)
    assert [type(x).__name__ for x in out] == [
        "Experience",
        "ProtocolError",
        "ProtocolError",
        "ProtocolError",
        "Experience",
    ]
    assert [x.reason for x in out if isinstance(x, ProtocolError)] == [
        "non_finite",
        "not_msgpack",
        "out_of_range",
    ]
    for raw, got in zip(raws, out, strict=True):
        if not isinstance(got, ProtocolError):
            single = decode_experience(raw, spec)
            for name in spec.fields:
                np.testing.assert_array_equal(got.fields[name], single.fields[name])
    assert decode_experiences([], spec) == []


# ---------------------------------------------------------------- rows decode (intake hot path)


def _row_records(fields: dict[str, np.ndarray]) -> list[bytes]:
    """Each transition as one bytes string over all fields, sorted: rows as a multiset."""
    n = len(fields["obs"])
    return sorted(b"".join(fields[k][i].tobytes() for k in SPEC.fields) for i in range(n))


def _one_by_one(raws: list[Any]) -> tuple[list[bytes], list[str], list[tuple[int, int]]]:
    rows: dict[str, list[np.ndarray]] = {k: [] for k in SPEC.fields}
    reasons, models = [], []
    for raw in raws:
        try:
            exp = decode_experience(raw, SPEC)
        except ProtocolError as e:
            reasons.append(e.reason)
            continue
        models.append((exp.model_id, exp.n))
        for k in SPEC.fields:
            rows[k].append(exp.fields[k])
    joined = {k: np.concatenate(v) if v else np.empty(0) for k, v in rows.items()}
    return (_row_records(joined) if models else []), sorted(reasons), sorted(models)


# Shared by every call below: layouts cached from earlier (fuzzed) batches must never change
# what a later batch accepts or rejects.
LAYOUTS = LayoutCache(per_key=8, keys=4)


def _check_rows_like_one_by_one(raws: list[Any]) -> None:
    from soulsai.transport.batch import decode_experience_rows

    _check_rows_against(raws, decode_experience_rows(raws, SPEC))
    _check_rows_against(raws, decode_experience_rows(raws, SPEC, LAYOUTS))
    _check_rows_against(raws, decode_experience_rows(raws, SPEC, LAYOUTS))  # all cached now


def _check_rows_against(raws: list[Any], out: Any) -> None:
    want_rows, want_reasons, want_models = _one_by_one(raws)
    assert sorted(e.reason for e in out.errors) == want_reasons
    assert out.model_ids.dtype == out.counts.dtype == np.int64
    assert sorted(zip(out.model_ids.tolist(), out.counts.tolist(), strict=True)) == want_models
    per_model: dict[int, int] = {}
    for model_id, n in want_models:
        per_model[model_id] = per_model.get(model_id, 0) + n
    for name, fs in SPEC.fields.items():
        assert out.fields[name].dtype == fs.dtype
        assert out.fields[name].shape == (sum(per_model.values()), *fs.shape)
    assert (_row_records(out.fields) if want_models else []) == want_rows


@settings(FUZZ, max_examples=300)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(VALID_EXPERIENCE + [encode_experience("client-1", 7, make_fields(6))]),
            st.one_of(st.just([]), MUTATIONS),
        ),
        min_size=1,
        max_size=24,
    )
)
def test_fuzz_rows_decode_matches_one_by_one(batch: list[tuple[bytes, list]]) -> None:
    """Envelopes of one layout are checked together; the outcome per envelope must be exactly
    decode_experience's, whatever the mutations (in payloads, frames, lengths)."""
    _check_rows_like_one_by_one([mutate_bytes(raw, ops) if ops else raw for raw, ops in batch])


def test_rows_decode_many_layouts_and_odd_inputs() -> None:
    """More layouts than the fast path tries per batch, non-bytes payloads, garbage."""
    raws: list[Any] = [encode_experience(f"c{i:02d}", i, make_fields(4, seed=i)) for i in range(20)]
    raws += raws[:5]
    raws += [b"garbage", bytearray(raws[0]), memoryview(raws[1]), 3, "text", b""]
    bad = valid_envelope(4)
    bad["f"]["reward"][2] = np.full(4, np.nan, np.float32).tobytes()
    raws += [pack(bad)] * 3
    _check_rows_like_one_by_one(raws)


def test_layout_cache_reuses_layouts_across_batches_and_stays_bounded() -> None:
    calls = 0
    real = batch._shape_of

    def counting(raw: bytes, spec: ExperienceSpec) -> Any:
        nonlocal calls
        calls += 1
        return real(raw, spec)

    cache = LayoutCache(per_key=2, keys=2)
    a = [encode_experience("a", 1, make_fields(3, seed=s)) for s in range(3)]
    b = [encode_experience("b", 1, make_fields(3, seed=s)) for s in range(3)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(batch, "_shape_of", counting)
        batch.decode_experience_rows(a + b, SPEC, cache)
        assert calls == 2  # one per layout
        out = batch.decode_experience_rows(b + a, SPEC, cache)
        assert calls == 2 and out.counts.sum() == 18  # both from the cache
        c = [encode_experience("c", 1, make_fields(3, seed=s)) for s in range(2)]
        batch.decode_experience_rows(c + a, SPEC, cache)  # 'c' evicts 'a' (2 per key)
        assert calls == 4
    _check_rows_like_one_by_one(a + b + c)


def _raw_map(pairs: list[tuple[str, Any]]) -> bytes:
    """A msgpack map that may repeat keys (msgpack itself keeps only the last)."""
    assert len(pairs) < 16
    return bytes([0x80 | len(pairs)]) + b"".join(pack(k) + pack(v) for k, v in pairs)


def _with_fields(*field_maps: Any, model_id: int = 1, n: int = 3) -> bytes:
    head = [("v", 1), ("t", "exp"), ("client", "c"), ("model_id", model_id), ("n", n)]
    return _raw_map(head + [("f", f) for f in field_maps])


def test_rows_decode_of_repeated_keys_matches_one_by_one() -> None:
    """msgpack keeps the last of repeated keys, so the one-by-one decoder validates only the
    last field map; the batch path must neither trip over the others nor read payloads from
    them (a decoy map in front of a real one holding NaN must not get the envelope in)."""
    from soulsai.transport.batch import decode_experience_rows

    real = valid_envelope(3)["f"]
    decoy = msgpack.unpackb(encode_experience("c", 1, make_fields(3, seed=2)), raw=False)["f"]
    nan = make_fields(3, seed=1)
    nan["reward"][0] = np.nan
    nan_f = msgpack.unpackb(encode_experience("c", 1, nan), raw=False)["f"]
    dup_name = _raw_map([("obs", real["obs"])] + list(real.items()))
    batches = [
        _with_fields(5, real),
        _with_fields([1, 2], real),
        _with_fields({"obs": 7}, real),
        _with_fields({"obs": ["a", "b", "xyz"]}, real),
        _with_fields({"obs": ["<f4", [3, 4], b"zz", "f", decoy]}, nan_f),  # a decoy in front
        _with_fields(real, {"obs": [1]}),  # the last map is the bad one
    ]
    dup_name_env = _with_fields(real)
    dup_name_env = dup_name_env[: -len(pack(real))] + dup_name  # a field map naming obs twice
    batches.append(dup_name_env)
    cache = LayoutCache()
    for raw in batches:
        for pair in ([raw, raw], [raw, raw, encode_experience("c", 1, make_fields(3, seed=5))]):
            _check_rows_like_one_by_one(pair)
            _check_rows_against(pair, decode_experience_rows(pair, SPEC, cache))


def test_layout_cache_keeps_no_large_frames() -> None:
    from soulsai.transport.batch import decode_experience_rows

    big = valid_envelope(3)
    big["pad"] = b"x" * 20_000  # an extra key: part of the frame, not a payload
    raw = pack(big)
    cache = LayoutCache()
    assert decode_experience_rows([raw, raw], SPEC, cache).counts.tolist() == [3, 3]
    assert cache.find(np.frombuffer(raw, np.uint8)) is None  # decoded, not kept
    small = encode_experience("c", 1, make_fields(3))
    decode_experience_rows([small, small], SPEC, cache)
    assert cache.find(np.frombuffer(small, np.uint8)) is not None


def test_rows_decode_isolates_bad_values_within_one_layout() -> None:
    from soulsai.transport.batch import decode_experience_rows

    good = [encode_experience("c", 2, make_fields(3, seed=s)) for s in range(4)]
    nan = make_fields(3, seed=9)
    nan["obs"][1, 2] = np.inf
    action = make_fields(3, seed=10)
    action["action"][0] = 2
    raws = [good[0], encode_experience("c", 2, nan), good[1], encode_experience("c", 2, action)]
    raws += good[2:]
    out = decode_experience_rows(raws, SPEC)
    assert sorted(e.reason for e in out.errors) == ["non_finite", "out_of_range"]
    assert out.model_ids.tolist() == [2] * 4 and out.counts.tolist() == [3] * 4
    _check_rows_like_one_by_one(raws)
    empty = decode_experience_rows([], SPEC)
    assert len(empty.model_ids) == len(empty.counts) == 0
    assert empty.fields["obs"].shape == (0, 4) and empty.fields["obs"].dtype == np.float32

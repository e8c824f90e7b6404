"""The weights blob: our safetensors writer and reader, float16 on the wire, strict parsing."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from safetensors.numpy import load as st_load
from safetensors.torch import save as st_save

from soulsai.errors import ProtocolError
from soulsai.model.nets import ActorCritic, QNetwork
from soulsai.transport.weights import decode_weights, encode_weights, encode_weights_parts

MAX_BYTES = 1 << 26


def make_state(hidden: list[int] | None = None) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    net = QNetwork((4,), 3, hidden or [32, 16], normalize_obs=True)
    net.obs_norm.update(np.random.default_rng(0).normal(size=(64, 4)))
    return net.state_dict()


def shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def header(raw: bytes) -> dict:
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n])


def reason_of(fn) -> str:
    with pytest.raises(ProtocolError) as e:
        fn()
    return e.value.reason


def test_blob_is_standard_safetensors_both_ways() -> None:
    state = make_state()
    raw = encode_weights(state, 4, {"env_steps": 7})
    assert isinstance(raw, bytes)
    theirs = st_load(raw)  # the reference reader accepts ours ...
    for name, t in state.items():
        assert np.array_equal(theirs[name], t.numpy()), name
    h = header(raw)
    assert (8 + struct.unpack("<Q", raw[:8])[0]) % 8 == 0  # data section 8-byte aligned
    for entry in (v for k, v in h.items() if k != "__metadata__"):
        assert entry["data_offsets"][0] % (int(entry["dtype"][1:]) // 8) == 0
    # ... and ours reads the reference writer's blobs (an older training node)
    ref = st_save(dict(state), metadata={"model_id": "4", "env_steps": "7"})
    arrays, meta = decode_weights(ref, shapes(state), MAX_BYTES)
    assert meta == {"model_id": 4, "env_steps": 7}
    assert all(np.array_equal(arrays[k], v.numpy()) for k, v in state.items())


def test_float32_arrays_are_views_of_the_blob() -> None:
    """No copy on the client: the arrays share the received bytes and cannot be written."""
    state = make_state()
    raw = encode_weights(state, 1)
    arrays, _ = decode_weights(raw, shapes(state), MAX_BYTES)
    w = arrays["mlp.1.weight"]
    assert w.dtype == np.float32 and not w.flags.writeable
    assert np.shares_memory(w, np.frombuffer(raw, np.uint8))
    assert arrays["obs_norm.count"].dtype == np.float64  # kept exact


def test_float16_wire_sends_matrices_half_and_decodes_to_float32() -> None:
    state = make_state([256, 256])
    full = encode_weights(state, 2)
    half = encode_weights(state, 2, wire_dtype="float16")
    assert len(half) < 0.55 * len(full)
    dtypes = {k: v["dtype"] for k, v in header(half).items() if k != "__metadata__"}
    assert {k for k, d in dtypes.items() if d == "F16"} == {
        k for k, v in state.items() if v.dim() >= 2
    }
    assert dtypes["obs_norm.mean"] == "F32" and dtypes["obs_norm.count"] == "F64"
    arrays, meta = decode_weights(half, shapes(state), MAX_BYTES)
    assert meta["model_id"] == 2
    for name, t in state.items():
        a = arrays[name]
        assert a.dtype == t.numpy().dtype, name  # float32 for every layer, as before
        if t.dim() >= 2:
            np.testing.assert_allclose(a, t.numpy(), rtol=1e-3, atol=1e-4)
        else:
            assert np.array_equal(a, t.numpy()), name


def test_float16_wire_keeps_float32_where_half_overflows() -> None:
    state = dict(make_state())
    state["mlp.1.weight"] = state["mlp.1.weight"].clone()
    state["mlp.1.weight"][0, 0] = 1e6  # beyond float16's 65504
    raw = encode_weights(state, 1, wire_dtype="float16")
    assert header(raw)["mlp.1.weight"]["dtype"] == "F32"
    assert header(raw)["mlp.3.weight"]["dtype"] == "F16"
    arrays, _ = decode_weights(raw, shapes(state), MAX_BYTES)
    assert arrays["mlp.1.weight"][0, 0] == 1e6


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_float16_blob_with_non_finite_values_is_rejected(bad: float) -> None:
    state = dict(make_state())
    half = state["mlp.3.weight"].to(torch.float16)
    half[1, 1] = bad
    raw = st_save({**state, "mlp.3.weight": half}, metadata={"model_id": "1"})
    assert reason_of(lambda: decode_weights(raw, shapes(state), MAX_BYTES)) == "non_finite"


def test_unknown_wire_dtype_is_refused() -> None:
    with pytest.raises(ValueError):
        encode_weights(make_state(), 1, wire_dtype="int8")


def test_integer_tensors_are_rejected() -> None:
    state = dict(make_state())
    raw = st_save(
        {**state, "mlp.1.bias": torch.zeros(32, dtype=torch.int32)}, metadata={"model_id": "1"}
    )
    assert reason_of(lambda: decode_weights(raw, shapes(state), MAX_BYTES)) == "bad_dtype"


def _with_entries(entries: dict, data: bytes) -> bytes:
    head = json.dumps({"__metadata__": {"model_id": "1"}, **entries}).encode()
    return struct.pack("<Q", len(head)) + head + data


@pytest.mark.parametrize(
    "entries, data",
    [
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 12),  # trailing
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12),  # gap
        ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8),  # size
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}}, b"\0" * 8),  # past end
        ({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8),
        ({"w": {"dtype": "F32", "shape": [True, 2], "data_offsets": [0, 8]}}, b"\0" * 8),
        ({"w": {"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}}, b"\0" * 8),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, b"\0" * 8),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "x": 1}}, b"\0" * 8),
        ({"w": [0, 8]}, b"\0" * 8),
        (
            {
                "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "v": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},  # overlap
            },
            b"\0" * 12,
        ),
    ],
)
def test_malformed_tensor_tables_are_rejected(entries: dict, data: bytes) -> None:
    raw = _with_entries(entries, data)
    expected = {k: (2,) for k in entries}
    assert reason_of(lambda: decode_weights(raw, expected, MAX_BYTES)) == "bad_structure"


def test_actor_critic_round_trip_in_both_wire_dtypes() -> None:
    net = ActorCritic((3,), 2, discrete=True, hidden=[64, 64])
    state = net.state_dict()
    for wire in ("float32", "float16"):
        arrays, _ = decode_weights(
            encode_weights(state, 3, wire_dtype=wire), shapes(state), MAX_BYTES
        )
        assert set(arrays) == set(state)
        assert all(arrays[k].shape == tuple(v.shape) for k, v in state.items())


def test_parts_are_the_blob_in_pieces_without_copies() -> None:
    state = make_state()
    parts = encode_weights_parts(state, 5, {"env_steps": 1}, wire_dtype="float32")
    assert b"".join(parts) == encode_weights(state, 5, {"env_steps": 1})
    w = state["mlp.1.weight"].numpy()
    assert any(np.shares_memory(np.asarray(p), w) for p in parts)  # the tensor's own memory


def test_a_received_buffer_decodes_in_place_and_odd_views_are_rejected() -> None:
    state = make_state()
    raw = encode_weights(state, 6)
    buf = np.frombuffer(raw, np.uint8).copy()  # what the client's socket read fills
    arrays, meta = decode_weights(memoryview(buf), shapes(state), MAX_BYTES)
    assert meta["model_id"] == 6
    assert np.shares_memory(arrays["mlp.1.weight"], buf)
    assert np.array_equal(arrays["mlp.1.weight"], state["mlp.1.weight"].numpy())
    wide = memoryview(buf[: len(buf) // 8 * 8].view(np.uint64))
    assert reason_of(lambda: decode_weights(wide, shapes(state), MAX_BYTES)) == "bad_structure"
    strided = memoryview(buf[::2])
    assert reason_of(lambda: decode_weights(strided, shapes(state), MAX_BYTES)) == "bad_structure"

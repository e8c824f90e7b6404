"""Weights on the wire: safetensors bytes, the model id and counters in its metadata.

Plain data (a JSON header and raw little-endian numbers): nothing in it is executed, unlike
torch.load. Clients read it with numpy alone.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from typing import Any

import numpy as np

from soulsai.errors import ProtocolError
from soulsai.transport.envelope import INT64_MAX, PROTOCOL_VERSION

# safetensors dtype names a weights blob may hold, and how a client reads them. F16 is only a
# wire format (training.weights_dtype): clients widen it to float32 before use.
WEIGHT_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
}
WIRE_DTYPES = ("float32", "float16")
FLOAT16_MAX = 65504.0
MAX_WEIGHTS_HEADER = 100 << 20
MAX_META_COUNT = 1 << 53  # the largest counter a client takes from the weights' metadata


def encode_weights(
    tensors: dict[str, Any],
    model_id: int,
    meta: dict[str, Any] | None = None,
    wire_dtype: str = "float32",
) -> bytes:
    """safetensors bytes of `tensors` (torch) with the model id and `meta` in the metadata.

    Written here rather than by `safetensors.torch.save`, which copies the data three times: the
    header and the tensors' own memory are joined into the result in one copy. With
    `wire_dtype="float16"` the float32 matrices (2-D and up: the bulk of a network) travel as
    float16; vectors, the observation normalizer and any matrix float16 cannot hold stay exact.
    """
    return b"".join(encode_weights_parts(tensors, model_id, meta, wire_dtype))


def encode_weights_parts(
    tensors: dict[str, Any],
    model_id: int,
    meta: dict[str, Any] | None = None,
    wire_dtype: str = "float32",
) -> list[memoryview]:
    """`encode_weights` as the buffers that make it up, in order: the header, then each
    tensor's own memory (no copy, so the tensors must not change until the parts are sent).
    The training node hands them to the socket one after another."""
    import torch

    if wire_dtype not in WIRE_DTYPES:
        raise ValueError(f"wire_dtype must be one of {WIRE_DTYPES}, not {wire_dtype!r}")
    arrays = {}
    for name, value in tensors.items():
        t = torch.as_tensor(value).detach().cpu().contiguous()
        if wire_dtype == "float16" and t.dtype == torch.float32 and t.dim() >= 2 and t.numel():
            lo, hi = torch.aminmax(t)  # NaN propagates and fails the test: stays float32
            if max(-float(lo), float(hi)) <= FLOAT16_MAX:  # beyond it, float16 holds only inf
                t = t.to(torch.float16)
        arrays[name] = t.numpy()
    names = {v: k for k, v in WEIGHT_DTYPES.items()}
    # widest items first, as safetensors does: every tensor starts aligned to its item size
    order = sorted(arrays, key=lambda k: (-arrays[k].dtype.itemsize, k))
    metadata = {"model_id": str(int(model_id)), "protocol": str(PROTOCOL_VERSION)}
    metadata.update({k: json.dumps(v) for k, v in (meta or {}).items()})
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name in order:
        a = arrays[name]
        if a.dtype not in names:  # (a big-endian host would need a byte swap here)
            raise ValueError(f"weights {name}: dtype {a.dtype} is not one of {set(names)}")
        header[name] = {
            "dtype": names[a.dtype],
            "shape": list(a.shape),
            "data_offsets": [offset, offset + a.nbytes],
        }
        offset += a.nbytes
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the data starts 8-byte aligned
    data = [arrays[name].reshape(-1).view(np.uint8).data for name in order]
    return [memoryview(struct.pack("<Q", len(head)) + head), *data]


def _weights_header(raw: Any, max_bytes: int) -> tuple[dict[str, Any], int]:
    """The safetensors header as parsed JSON, and the offset where the tensor data starts."""
    if isinstance(raw, memoryview) and (raw.format != "B" or not raw.contiguous):
        raise ProtocolError("bad_structure", "weights blob is not a flat byte buffer")
    if not isinstance(raw, (bytes, bytearray, memoryview)) or len(raw) < 8:
        raise ProtocolError("bad_structure", "weights blob too short")
    if len(raw) > max_bytes:
        raise ProtocolError("too_large", f"weights blob {len(raw)} bytes > {max_bytes}")
    (hlen,) = struct.unpack("<Q", raw[:8])
    if hlen > min(len(raw) - 8, MAX_WEIGHTS_HEADER):
        raise ProtocolError("bad_structure", "weights header length out of range")
    try:
        header = json.loads(bytes(raw[8 : 8 + hlen]))
    except (ValueError, RecursionError) as e:
        raise ProtocolError("bad_structure", f"weights header: {type(e).__name__}") from None
    if not isinstance(header, dict):
        raise ProtocolError("bad_structure", "weights header is not a map")
    return header, 8 + hlen


def _counter(key: str, text: Any) -> int:
    """A metadata value besides model_id: the node's counters (env_steps, num_clients, updates,
    iterations) are all it sends, and a client computes with them, so anything but an integer in
    [0, MAX_META_COUNT] (a string, NaN or Infinity, which Python's json reads, a list, a huge
    number) is refused here rather than raising inside the client's env loop."""
    if not isinstance(text, str) or len(text) > 24:
        raise ProtocolError("bad_structure", f"weights metadata {key[:40]!r}: not a short string")
    value = json.loads(text)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_META_COUNT:
        raise ProtocolError("bad_structure", f"weights metadata {key[:40]!r}: not a count")
    return value


def _metadata(header: dict[str, Any]) -> dict[str, Any]:
    try:
        meta = header.get("__metadata__", {})
        mid = meta["model_id"]
        ok = isinstance(mid, str) and mid.isascii() and mid.isdigit() and len(mid) <= 19
        if not ok or int(mid) > INT64_MAX:
            raise ProtocolError("bad_structure", "weights model_id must be a non-negative integer")
        out: dict[str, Any] = {"model_id": int(mid)}
        for k, v in meta.items():
            if k not in ("model_id", "protocol"):
                out[k] = _counter(k, v)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise ProtocolError("bad_structure", f"weights metadata: {type(e).__name__}") from None
    return out


def weights_metadata(raw: bytes | bytearray | memoryview, max_bytes: int) -> dict[str, Any]:
    """Read the safetensors header's metadata without touching the tensors."""
    return _metadata(_weights_header(raw, max_bytes)[0])


def _tensor_entries(header: dict[str, Any], data_len: int) -> dict[str, tuple[np.dtype, tuple]]:
    """(dtype, shape) of every tensor, its bytes checked to tile the data section exactly."""
    spans: list[tuple[int, int]] = []
    out: dict[str, tuple[np.dtype, tuple]] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or entry.keys() != {"dtype", "shape", "data_offsets"}:
            raise ProtocolError("bad_structure", "weights: malformed tensor entry")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in WEIGHT_DTYPES:
            raise ProtocolError("bad_dtype", f"weights {name[:40]}: dtype {str(dtype)[:8]!r}")
        ints = isinstance(shape, list) and isinstance(offsets, list) and len(offsets) == 2
        if not ints or not all(type(d) is int and d >= 0 for d in [*shape, *offsets]):
            raise ProtocolError("bad_structure", "weights: malformed shape or offsets")
        if offsets[1] - offsets[0] != math.prod(shape) * WEIGHT_DTYPES[dtype].itemsize:
            raise ProtocolError("bad_structure", f"weights {name[:40]}: size does not match")
        spans.append((offsets[0], offsets[1]))
        out[name] = (WEIGHT_DTYPES[dtype], tuple(shape))
    end = 0
    for begin, stop in sorted(spans):  # no gaps, no overlaps, no trailing bytes
        if begin != end:
            raise ProtocolError("bad_structure", "weights: tensor data is not contiguous")
        end = stop
    if end != data_len:
        raise ProtocolError("bad_structure", "weights: data section length does not match")
    return out


def _widen_half(a: np.ndarray) -> np.ndarray:
    """float16 to float32. Through torch where the process has it loaded already (the training
    node, evaluation), which converts with SIMD where numpy takes 5x longer (the copy: torch
    wants writable memory); clients never import torch for it and use numpy."""
    torch = sys.modules.get("torch")
    if torch is None:
        return a.astype(np.float32)
    return torch.from_numpy(a.copy()).float().numpy()


def decode_weights(
    raw: bytes | bytearray | memoryview, expected: dict[str, tuple[int, ...]], max_bytes: int
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Parse safetensors bytes; check names and shapes against `expected` and finiteness.

    Returns (numpy arrays, metadata): clients act in numpy, so no torch work on this path.
    float32/float64 arrays are views of `raw` (no copy; read-only when `raw` is bytes); float16
    ones are widened to float32. The format is plain data (a JSON header and raw little-endian
    numbers): nothing in it is executed, unlike torch.load.
    """
    header, start = _weights_header(raw, max_bytes)
    meta = _metadata(header)
    entries = _tensor_entries(header, len(raw) - start)
    if entries.keys() != expected.keys():
        raise ProtocolError("bad_field", "weights hold other tensors than the model")
    arrays = {}
    for name, (dtype, shape) in entries.items():
        if shape != tuple(expected[name]):
            raise ProtocolError("bad_shape", f"weights {name}: {shape}")
        count, offset = math.prod(shape), start + header[name]["data_offsets"][0]
        if count == 0:  # frombuffer refuses an offset at the very end of the buffer
            a = np.zeros(shape, dtype)
        else:
            a = np.frombuffer(raw, dtype, count, offset).reshape(shape)
        if dtype.itemsize == 2:
            a = _widen_half(a)
        if not np.isfinite(a).all():
            raise ProtocolError("non_finite", f"weights {name}")
        arrays[name] = a
    return arrays, meta

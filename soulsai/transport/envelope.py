"""The experience envelope and what every envelope shares. No pickle anywhere.

An envelope is a msgpack map with a protocol version, a kind, the sender's client id and
model id; an experience envelope carries one raw numpy buffer per field, checked against the
algorithm's `ExperienceSpec`. Every decoder validates before anything is allocated from the
payload beyond the raw bytes, and raises ProtocolError(reason) with a short reason label that
nodes count. The batched decoder the intake uses lives in `batch.py`.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from soulsai.errors import ProtocolError
from soulsai.transport.compress import compress, decompress

PROTOCOL_VERSION = 1
KIND_EXPERIENCE = "exp"
KIND_EPISODE = "ep"
MAX_CLIENT_ID = 64
INT64_MAX = (1 << 63) - 1


@dataclass(frozen=True)
class FieldSpec:
    """What one per-transition field must look like: dtype, per-item shape, value bounds."""

    dtype: np.dtype
    shape: tuple[int, ...] = ()
    low: float | None = None  # inclusive bounds, checked for integer and float fields
    high: float | None = None
    compressible: bool = False  # may travel compressed (transport.compress: image frames)
    item_bytes: int = field(default=0, init=False)  # bytes of one item, derived

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        object.__setattr__(self, "item_bytes", math.prod(self.shape) * self.dtype.itemsize)


@dataclass(frozen=True)
class ExperienceSpec:
    """The exact set of fields an algorithm's experience message carries."""

    fields: dict[str, FieldSpec]
    max_batch: int = 4096
    max_bytes: int = 16 << 20


@dataclass
class Experience:
    """One decoded experience envelope: `n` transitions, one array per spec field."""

    client_id: str
    model_id: int
    n: int
    fields: dict[str, np.ndarray] = field(default_factory=dict)


def unpack(raw: Any, max_bytes: int) -> Any:
    """One msgpack value from `raw`, every length bounded; ProtocolError for anything else."""
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise ProtocolError("bad_structure", f"payload is {type(raw).__name__}, not bytes")
    if len(raw) > max_bytes:
        raise ProtocolError("too_large", f"{len(raw)} bytes > {max_bytes}")
    try:
        return msgpack.unpackb(
            raw,
            raw=False,
            strict_map_key=True,
            max_bin_len=max_bytes,
            max_str_len=4096,
            max_array_len=64,
            max_map_len=64,
            max_ext_len=0,
            use_list=True,
        )
    except (ValueError, TypeError, msgpack.UnpackException, msgpack.ExtraData) as e:
        raise ProtocolError("not_msgpack", type(e).__name__) from None
    except Exception as e:  # msgpack raises a few other types on hostile input
        raise ProtocolError("not_msgpack", type(e).__name__) from None


def check_header(msg: Any, kind: str) -> None:
    """The envelope is a map of this protocol version and of `kind`."""
    if not isinstance(msg, dict):
        raise ProtocolError("bad_structure", "top level is not a map")
    version = msg.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:  # not True, not 1.0
        raise ProtocolError("bad_version", f"version {version!r} != {PROTOCOL_VERSION}")
    if msg.get("t") != kind:
        raise ProtocolError("bad_kind", f"kind {msg.get('t')!r} != {kind!r}")


def read_client_id(msg: dict) -> str:
    """The sender's client id: a non-empty string of at most MAX_CLIENT_ID characters."""
    cid = msg.get("client")
    if not isinstance(cid, str) or not 0 < len(cid) <= MAX_CLIENT_ID:
        raise ProtocolError("bad_structure", "client id must be a short string")
    return cid


def read_model_id(msg: dict) -> int:
    """The model id the sender acted with: an int64 that is not negative."""
    mid = msg.get("model_id")
    if type(mid) is not int or not 0 <= mid <= INT64_MAX:
        raise ProtocolError("bad_structure", "model_id must be a non-negative integer")
    return mid


def encode_experience(
    client_id: str,
    model_id: int,
    fields: dict[str, np.ndarray],
    codec: str | None = None,
    compress_fields: Collection[str] = (),
) -> bytes:
    """Pack a batch of transitions (every array shaped (n, ...)) into one envelope; with a
    `codec` (transport.compress.CODECS) the fields in `compress_fields` travel compressed."""
    n = len(next(iter(fields.values())))
    body: dict[str, list] = {}
    for name, arr in fields.items():
        a = np.ascontiguousarray(arr)
        if codec is not None and name in compress_fields:
            body[name] = [a.dtype.str, list(a.shape), compress(codec, a.data), codec]
        else:
            body[name] = [a.dtype.str, list(a.shape), a.tobytes()]
    msg = {
        "v": PROTOCOL_VERSION,
        "t": KIND_EXPERIENCE,
        "client": client_id,
        "model_id": int(model_id),
        "n": n,
        "f": body,
    }
    return msgpack.packb(msg, use_bin_type=True)


def decode_experience(raw: Any, spec: ExperienceSpec) -> Experience:
    """Validate and unpack an experience envelope against `spec`."""
    exp = decode_structure(raw, spec)
    for name, fs in spec.fields.items():
        check_values(name, exp.fields[name], fs)
    return exp


def decode_structure(raw: Any, spec: ExperienceSpec) -> Experience:
    """Everything but the values: version, kind, ids, batch size, field names, dtypes, shapes."""
    msg = unpack(raw, spec.max_bytes)
    check_header(msg, KIND_EXPERIENCE)
    client_id = read_client_id(msg)
    model_id = read_model_id(msg)
    n = msg.get("n")
    if type(n) is not int or not 1 <= n <= spec.max_batch:
        raise ProtocolError("bad_batch_size", f"n={n!r} not in 1..{spec.max_batch}")
    body = msg.get("f")
    if not isinstance(body, dict):
        raise ProtocolError("bad_structure", "missing field map")
    if body.keys() != spec.fields.keys():
        missing = sorted(set(spec.fields) - set(body))
        extra = sorted(str(k) for k in set(body) - set(spec.fields))
        raise ProtocolError("bad_field", f"missing {missing} unexpected {extra[:5]}")
    if any(isinstance(item, list) and len(item) == 4 for item in body.values()):
        # compressed fields: what the whole envelope decompresses to is known from n and the
        # spec, and capped like an uncompressed envelope, before anything is decompressed
        unpacked = n * sum(fs.item_bytes for fs in spec.fields.values())
        if unpacked > spec.max_bytes:
            raise ProtocolError("too_large", f"decompressed {unpacked} bytes > {spec.max_bytes}")
    out: dict[str, np.ndarray] = {}
    for name, fs in spec.fields.items():
        out[name] = _decode_field(name, body[name], fs, n)
    return Experience(client_id=client_id, model_id=model_id, n=n, fields=out)


def _decode_field(name: str, item: Any, fs: FieldSpec, n: int) -> np.ndarray:
    """One field's array: [dtype, shape, bytes], or [dtype, shape, bytes, codec] for a field
    the spec lets travel compressed (decompressed to exactly what the shape needs)."""
    if not isinstance(item, list) or len(item) not in (3, 4):
        raise ProtocolError("bad_structure", f"field {name} is not [dtype, shape, bytes]")
    if len(item) == 4 and not fs.compressible:
        raise ProtocolError("bad_structure", f"field {name} may not travel compressed")
    dtype_str, shape, data = item[:3]
    if dtype_str != fs.dtype.str:
        raise ProtocolError("bad_dtype", f"{name}: {str(dtype_str)[:16]!r} != {fs.dtype.str!r}")
    expected_shape = [n, *fs.shape]
    if shape != expected_shape:
        raise ProtocolError("bad_shape", f"{name}: {str(shape)[:40]} != {expected_shape}")
    if len(item) == 4:
        data = decompress(name, item[3], data, n * fs.item_bytes)
    if not isinstance(data, bytes) or len(data) != n * fs.item_bytes:
        raise ProtocolError("bad_shape", f"{name}: buffer length does not match shape")
    return np.frombuffer(data, dtype=fs.dtype).reshape(expected_shape)


def check_values(name: str, arr: np.ndarray, fs: FieldSpec) -> None:
    """Finite floats and the spec's bounds. min/max propagate NaN and show inf, so two
    reductions cover both checks without allocating a mask."""
    floats = arr.dtype.kind == "f"
    unbounded = fs.low is None and fs.high is None
    if arr.size == 0 or arr.dtype.kind == "b" or (unbounded and not floats):
        return
    lo, hi = arr.min(), arr.max()
    if floats and not (math.isfinite(lo) and math.isfinite(hi)):
        raise ProtocolError("non_finite", f"{name} holds NaN or inf")
    if fs.low is not None and lo < fs.low:
        raise ProtocolError("out_of_range", f"{name} below {fs.low:g}")
    if fs.high is not None and hi > fs.high:
        raise ProtocolError("out_of_range", f"{name} above {fs.high:g}")

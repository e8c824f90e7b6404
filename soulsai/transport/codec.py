"""Binary envelopes for everything that crosses Redis. No pickle anywhere.

- experience: msgpack map with a protocol version and raw numpy buffers per field;
- episode records: small msgpack maps of scalars;
- weights: safetensors bytes, model id and counters in the safetensors metadata;
- commands: small JSON objects.

Every decoder validates before anything is allocated from the payload beyond the raw bytes,
and raises ProtocolError(reason) with a short reason label that nodes count.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack
import numpy as np

from soulsai.errors import ProtocolError

PROTOCOL_VERSION = 1
KIND_EXPERIENCE = "exp"
KIND_EPISODE = "ep"
MAX_CLIENT_ID = 64
MAX_INFO_KEYS = 32
MAX_COMMAND_BYTES = 4096
INT64_MAX = (1 << 63) - 1


@dataclass(frozen=True)
class FieldSpec:
    """What one per-transition field must look like: dtype, per-item shape, value bounds."""

    dtype: np.dtype
    shape: tuple[int, ...] = ()
    low: float | None = None  # inclusive bounds, checked for integer and float fields
    high: float | None = None
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
    client_id: str
    model_id: int
    n: int
    fields: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class EpisodeRecord:
    client_id: str
    model_id: int
    ret: float
    length: int
    info: dict[str, float]
    time: float
    client_episode: int | None = None  # the client's own 1-based episode count (optional)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "return": self.ret,
            "length": self.length,
            "model_id": self.model_id,
            "client_id": self.client_id,
            "time": self.time,
        }
        if self.client_episode is not None:
            out["client_episode"] = self.client_episode
        out.update({f"info.{k}": v for k, v in self.info.items()})
        return out


def _unpack(raw: Any, max_bytes: int) -> Any:
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


def _header(msg: Any, kind: str) -> None:
    if not isinstance(msg, dict):
        raise ProtocolError("bad_structure", "top level is not a map")
    version = msg.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:  # not True, not 1.0
        raise ProtocolError("bad_version", f"version {version!r} != {PROTOCOL_VERSION}")
    if msg.get("t") != kind:
        raise ProtocolError("bad_kind", f"kind {msg.get('t')!r} != {kind!r}")


def _client_id(msg: dict) -> str:
    cid = msg.get("client")
    if not isinstance(cid, str) or not 0 < len(cid) <= MAX_CLIENT_ID:
        raise ProtocolError("bad_structure", "client id must be a short string")
    return cid


def _model_id(msg: dict) -> int:
    mid = msg.get("model_id")
    if type(mid) is not int or not 0 <= mid <= INT64_MAX:
        raise ProtocolError("bad_structure", "model_id must be a non-negative integer")
    return mid


# ---------------------------------------------------------------- experience


def encode_experience(client_id: str, model_id: int, fields: dict[str, np.ndarray]) -> bytes:
    """Pack a batch of transitions (every array shaped (n, ...)) into one envelope."""
    n = len(next(iter(fields.values())))
    body = {}
    for name, arr in fields.items():
        a = np.ascontiguousarray(arr)
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
    exp = _decode_structure(raw, spec)
    for name, fs in spec.fields.items():
        _check_values(name, exp.fields[name], fs)
    return exp


def decode_experiences(raws: list[Any], spec: ExperienceSpec) -> list[Experience | ProtocolError]:
    """`decode_experience` for many envelopes at once, each result in the input's place.

    The value checks (finite, bounds) run once per field over all well-formed envelopes
    together; only when that finds something does it look for the culprits one by one. On the
    intake's hot path this saves a dozen small numpy reductions per message.
    """
    out: list[Experience | ProtocolError] = []
    good: list[int] = []
    for raw in raws:
        try:
            out.append(_decode_structure(raw, spec))
            good.append(len(out) - 1)
        except ProtocolError as e:
            out.append(e)
    if not good:
        return out
    exps = [out[i] for i in good]
    try:
        for name, fs in spec.fields.items():
            joined = np.concatenate([e.fields[name] for e in exps])  # type: ignore[union-attr]
            _check_values(name, joined, fs)
    except ProtocolError:
        for i in good:
            try:
                for name, fs in spec.fields.items():
                    _check_values(name, out[i].fields[name], fs)  # type: ignore[union-attr]
            except ProtocolError as e:
                out[i] = e
    return out


def _decode_structure(raw: Any, spec: ExperienceSpec) -> Experience:
    """Everything but the values: version, kind, ids, batch size, field names, dtypes, shapes."""
    msg = _unpack(raw, spec.max_bytes)
    _header(msg, KIND_EXPERIENCE)
    client_id = _client_id(msg)
    model_id = _model_id(msg)
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
    out: dict[str, np.ndarray] = {}
    for name, fs in spec.fields.items():
        out[name] = _decode_field(name, body[name], fs, n)
    return Experience(client_id=client_id, model_id=model_id, n=n, fields=out)


def _decode_field(name: str, item: Any, fs: FieldSpec, n: int) -> np.ndarray:
    if not isinstance(item, list) or len(item) != 3:
        raise ProtocolError("bad_structure", f"field {name} is not [dtype, shape, bytes]")
    dtype_str, shape, data = item
    if dtype_str != fs.dtype.str:
        raise ProtocolError("bad_dtype", f"{name}: {str(dtype_str)[:16]!r} != {fs.dtype.str!r}")
    expected_shape = [n, *fs.shape]
    if shape != expected_shape:
        raise ProtocolError("bad_shape", f"{name}: {str(shape)[:40]} != {expected_shape}")
    if not isinstance(data, bytes) or len(data) != n * fs.item_bytes:
        raise ProtocolError("bad_shape", f"{name}: buffer length does not match shape")
    return np.frombuffer(data, dtype=fs.dtype).reshape(expected_shape)


def _check_values(name: str, arr: np.ndarray, fs: FieldSpec) -> None:
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


# ---------------------------------------------------------------- experience rows (hot path)

_MAX_SHAPE_MISSES = 8  # layouts per popped batch that matched only their own envelope


@dataclass
class ExperienceRows:
    """The transitions of many envelopes, one array per field: no Python object per envelope.

    `model_ids`, `counts` and `client_ids` hold, per accepted envelope in row order, its model
    id, its number of rows and its client id (an object array of str); `errors` the rejected
    envelopes' errors.
    """

    fields: dict[str, np.ndarray]
    model_ids: np.ndarray
    counts: np.ndarray
    errors: list[ProtocolError]
    client_ids: np.ndarray = field(default_factory=lambda: np.empty(0, object))


@dataclass(frozen=True)
class _Shape:
    """One envelope's layout: where its payloads lie and the bytes around them."""

    model_id: int
    n: int
    payloads: tuple[tuple[int, int], ...]  # (start, end) in the envelope, in spec field order
    frame: np.ndarray  # byte positions outside the payloads
    frame_bytes: np.ndarray  # the envelope's bytes there
    client_id: str = ""  # in the frame, so every envelope of this layout has it


class LayoutCache:
    """Envelope layouts seen in earlier batches, for `decode_experience_rows`.

    A row of the same length whose bytes at a cached layout's frame positions equal that
    layout's frame bytes has that layout, for the same reason as within one batch (msgpack is
    prefix-free), so the structural decoder need not run again for it. Bounded: layouts whose
    frame (everything but the payloads) is over MAX_FRAME bytes are not kept; at most
    `per_key` layouts per (length, frame positions), the oldest dropped first; at most `keys`
    of those, all dropped when one more comes. Layouts of one spec only: another spec empties
    it.
    """

    MAX_FRAME = 4096

    def __init__(self, per_key: int = 64, keys: int = 8) -> None:
        self.per_key, self.keys = per_key, keys
        self._by_len: dict[int, list[tuple[np.ndarray, dict[bytes, _Shape]]]] = {}
        self._spec: ExperienceSpec | None = None

    def bind(self, spec: ExperienceSpec) -> None:
        if spec is not self._spec:
            self._by_len.clear()
            self._spec = spec

    def find(self, row: np.ndarray) -> _Shape | None:
        for frame, shapes in self._by_len.get(len(row), ()):
            shape = shapes.get(row[frame].tobytes())
            if shape is not None:
                return shape
        return None

    def add(self, length: int, shape: _Shape) -> None:
        if len(shape.frame) > self.MAX_FRAME:
            return
        entries = self._by_len.setdefault(length, [])
        same = [(frame, shapes) for frame, shapes in entries if np.array_equal(frame, shape.frame)]
        if same:
            frame, shapes = same[0]
            shape = replace(shape, frame=frame)  # one positions array per key
        else:
            if sum(map(len, self._by_len.values())) >= self.keys:
                self._by_len.clear()
                entries = self._by_len.setdefault(length, [])
            shapes = {}
            entries.append((shape.frame, shapes))
        if len(shapes) >= self.per_key:
            del shapes[next(iter(shapes))]
        shapes[shape.frame_bytes.tobytes()] = shape


@dataclass
class _Plan:
    """Rows of `block` (None: all) that share one payload layout, to slice out together."""

    block: np.ndarray
    rows: np.ndarray | None
    payloads: tuple[tuple[int, int], ...]
    model_ids: np.ndarray
    n: int
    client_ids: np.ndarray  # object array of str, one per row of `rows`


def decode_experience_rows(
    raws: list[Any], spec: ExperienceSpec, layouts: LayoutCache | None = None
) -> ExperienceRows:
    """Validate many envelopes and return their transitions as one array per field.

    Envelopes of equal length are joined and checked together with numpy. The first one goes
    through the full structural decoder; every other one whose bytes outside the payloads equal
    the first one's parses (msgpack being prefix-free) to the same structure: same client, model
    id, n, dtypes and shapes, so only its values remain to check, in one pass per field over
    the whole batch. Envelopes whose payloads lie at the same offsets (clients whose ids have
    the same length) are sliced out together, straight into the output arrays. Anything else
    is decoded one by one. Each envelope is accepted or rejected exactly as `decode_experience`
    would; the rows come grouped by layout, not in input order. `layouts` (kept by the caller
    across batches of the same spec) spares the structural decoder for layouts seen before.
    """
    if layouts is not None:
        layouts.bind(spec)
    errors: list[ProtocolError] = []
    by_len: dict[int, list[bytes]] = {}
    singles: list[Any] = []
    for raw in raws:
        if type(raw) is bytes:
            by_len.setdefault(len(raw), []).append(raw)
        else:
            singles.append(raw)
    plans: list[_Plan] = []
    misses = 0
    for length, group in by_len.items():
        if len(group) == 1 or misses >= _MAX_SHAPE_MISSES:
            singles.extend(group)
            continue
        block = np.frombuffer(b"".join(group), np.uint8).reshape(len(group), length)
        misses = _plan_group(group, block, spec, plans, singles, errors, misses, layouts)
    single_exps = []
    for raw in singles:
        try:  # values are checked below with everything else, once
            single_exps.append(_decode_structure(raw, spec))
        except ProtocolError as e:
            errors.append(e)
    total = sum(len(p.model_ids) * p.n for p in plans) + sum(e.n for e in single_exps)
    fields = {name: np.empty((total, *fs.shape), fs.dtype) for name, fs in spec.fields.items()}
    pos = 0
    for p in plans:
        k = len(p.model_ids)
        for out, (start, end) in zip(fields.values(), p.payloads, strict=True):
            dst = out[pos : pos + k * p.n].view(np.uint8).reshape(k, end - start)
            if p.rows is None:
                dst[...] = p.block[:, start:end]
            else:
                np.take(p.block[:, start:end], p.rows, axis=0, out=dst)
        pos += k * p.n
    for exp in single_exps:
        for name, out in fields.items():
            out[pos : pos + exp.n] = exp.fields[name]
        pos += exp.n
    model_ids = np.concatenate(
        [p.model_ids for p in plans] + [np.array([e.model_id for e in single_exps], np.int64)]
    )
    counts = np.concatenate(
        [np.full(len(p.model_ids), p.n, np.int64) for p in plans]
        + [np.array([e.n for e in single_exps], np.int64)]
    )
    singles_ids = np.empty(len(single_exps), object)
    singles_ids[:] = [e.client_id for e in single_exps]
    client_ids = np.concatenate([*(p.client_ids for p in plans), singles_ids])
    return _check_rows(ExperienceRows(fields, model_ids, counts, errors, client_ids), spec)


def _plan_group(
    group: list[bytes],
    block: np.ndarray,
    spec: ExperienceSpec,
    plans: list[_Plan],
    singles: list[Any],
    errors: list[ProtocolError],
    misses: int,
    layouts: LayoutCache | None = None,
) -> int:
    """Sort the envelopes of one length by layout into `plans` (or `singles`); returns the
    updated count of layouts that matched only their own envelope."""
    k = len(group)
    model_ids = np.empty(k, np.int64)
    client_ids = np.empty(k, object)
    by_payloads: dict[tuple[tuple[int, int], ...], tuple[list[np.ndarray], int]] = {}
    pending = np.arange(k)
    # Every row's bytes at one layout's frame positions, gathered once: clients whose ids have
    # the same length put their frames at the same positions, only the bytes differ.
    frame_at: np.ndarray | None = None
    framed = block[:, :0]
    while len(pending):
        shape = layouts.find(block[pending[0]]) if layouts is not None else None
        if shape is None:
            try:
                shape = _shape_of(group[pending[0]], spec)
            except ProtocolError as e:
                errors.append(e)
                pending = pending[1:]
                continue
            if shape is None:  # valid, but not a layout the batch path takes
                singles.append(group[pending[0]])
                pending = pending[1:]
                continue
            if layouts is not None:
                layouts.add(block.shape[1], shape)
        if frame_at is None or not np.array_equal(shape.frame, frame_at):
            frame_at, framed = shape.frame, block[:, shape.frame]
        same = (framed[pending] == shape.frame_bytes).all(axis=1)
        rows, pending = pending[same], pending[~same]
        misses += len(rows) == 1 and len(pending) > 0
        model_ids[rows] = shape.model_id
        client_ids[rows] = shape.client_id
        by_payloads.setdefault(shape.payloads, ([], shape.n))[0].append(rows)
        if misses >= _MAX_SHAPE_MISSES:
            singles.extend(group[i] for i in pending)
            break
    for payloads, (parts, n) in by_payloads.items():
        rows = np.sort(np.concatenate(parts)) if len(parts) > 1 else parts[0]
        whole = len(rows) == k
        plans.append(
            _Plan(block, None if whole else rows, payloads, model_ids[rows], n, client_ids[rows])
        )
    return misses


def _check_rows(rows: ExperienceRows, spec: ExperienceSpec) -> ExperienceRows:
    """Value checks once per field over all rows; only when that finds something, look for
    the culprit envelopes one by one and drop them."""
    try:
        for name, fs in spec.fields.items():
            _check_values(name, rows.fields[name], fs)
        return rows
    except ProtocolError:
        pass
    good = np.ones(len(rows.counts), dtype=bool)
    ends = np.cumsum(rows.counts)
    for i, (end, n) in enumerate(zip(ends.tolist(), rows.counts.tolist(), strict=True)):
        try:
            for name, fs in spec.fields.items():
                _check_values(name, rows.fields[name][end - n : end], fs)
        except ProtocolError as e:
            rows.errors.append(e)
            good[i] = False
    keep = np.repeat(good, rows.counts)
    fields = {name: value[keep] for name, value in rows.fields.items()}
    return ExperienceRows(
        fields, rows.model_ids[good], rows.counts[good], rows.errors, rows.client_ids[good]
    )


def _shape_of(raw: bytes, spec: ExperienceSpec) -> _Shape | None:
    """Decode one envelope's structure (raising its ProtocolError) and locate its payloads.

    None for a valid envelope whose layout the batch path does not take: the walk below must
    see exactly what the decoder kept (one field map, each spec field once, [dtype, shape,
    bytes] of the right length), and msgpack keeps only the last of repeated keys, so an
    envelope with a repeated `f` or field name goes the one-by-one way instead.
    """
    exp = _decode_structure(raw, spec)
    try:
        return _locate_payloads(raw, spec, exp)
    except (ValueError, TypeError, KeyError, msgpack.UnpackException):
        return None  # includes msgpack's OutOfData, ExtraData and FormatError


def _locate_payloads(raw: bytes, spec: ExperienceSpec, exp: Experience) -> _Shape | None:
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(len(raw), 1))
    unpacker.feed(raw)
    payloads: dict[str, tuple[int, int]] = {}
    maps = 0
    for _ in range(unpacker.read_map_header()):
        if unpacker.unpack() != "f":
            unpacker.skip()
            continue
        maps += 1
        if maps > 1 or unpacker.read_map_header() != len(spec.fields):
            return None
        for _ in range(len(spec.fields)):
            name = unpacker.unpack()
            fs = spec.fields.get(name) if isinstance(name, str) else None
            if fs is None or name in payloads or unpacker.read_array_header() != 3:
                return None
            unpacker.skip()  # dtype
            unpacker.skip()  # shape
            data = unpacker.unpack()
            if type(data) is not bytes or len(data) != exp.n * fs.item_bytes:
                return None
            payloads[name] = (unpacker.tell() - len(data), unpacker.tell())
    if maps != 1 or unpacker.tell() != len(raw):
        return None
    inside = np.zeros(len(raw), dtype=bool)
    for start, end in payloads.values():
        inside[start:end] = True
    frame = np.flatnonzero(~inside)
    frame_bytes = np.frombuffer(raw, np.uint8)[frame]
    spans = tuple(payloads[name] for name in spec.fields)
    return _Shape(exp.model_id, exp.n, spans, frame, frame_bytes, exp.client_id)


# ---------------------------------------------------------------- episodes


def encode_episode(record: EpisodeRecord) -> bytes:
    msg = {
        "v": PROTOCOL_VERSION,
        "t": KIND_EPISODE,
        "client": record.client_id,
        "model_id": int(record.model_id),
        "return": float(record.ret),
        "length": int(record.length),
        "time": float(record.time),
        "info": {str(k): float(v) for k, v in record.info.items()},
    }
    if record.client_episode is not None:
        msg["client_episode"] = int(record.client_episode)
    return msgpack.packb(msg, use_bin_type=True)


MAX_ABS_RETURN = 1e9  # default of telemetry.max_abs_return
MAX_ABS_TIME = 1e11  # unix seconds of an episode's end: about the year 5100


def _finite(value: Any, what: str, max_abs: float = math.inf) -> float:
    if type(value) not in (int, float) or not math.isfinite(value):
        raise ProtocolError("non_finite" if isinstance(value, float) else "bad_structure", what)
    if abs(value) > max_abs:
        raise ProtocolError("out_of_range", f"{what}: beyond +-{max_abs:g}")
    return float(value)


def decode_episode(
    raw: Any, max_bytes: int = 65536, max_abs: float = MAX_ABS_RETURN
) -> EpisodeRecord:
    """Validate an episode record. Return, length and every numeric extra are bounded by
    `max_abs` (telemetry.max_abs_return): a forged record of return 1e300 must not become the
    best moving average for good, nor mark a run solved."""
    msg = _unpack(raw, max_bytes)
    _header(msg, KIND_EPISODE)
    client_id = _client_id(msg)
    model_id = _model_id(msg)
    ret = _finite(msg.get("return"), "return must be a finite number", max_abs)
    length = msg.get("length")
    if type(length) is not int or length <= 0:
        raise ProtocolError("bad_structure", "length must be a positive integer")
    if length > max_abs:
        raise ProtocolError("out_of_range", f"length beyond {max_abs:g}")
    t = _finite(msg.get("time"), "time must be a finite number", MAX_ABS_TIME)
    info = msg.get("info", {})
    if not isinstance(info, dict) or len(info) > MAX_INFO_KEYS:
        raise ProtocolError("bad_structure", f"info must be a map of at most {MAX_INFO_KEYS}")
    clean = {}
    for k, v in info.items():
        if not isinstance(k, str) or not 0 < len(k) <= 64:
            raise ProtocolError("bad_structure", "info keys must be short strings")
        clean[k] = _finite(v, f"info {k[:20]} must be a finite number", max_abs)
    seq = msg.get("client_episode")  # optional within protocol v1; older clients omit it
    if seq is not None and (type(seq) is not int or not 0 < seq <= INT64_MAX):
        raise ProtocolError("bad_structure", "client_episode must be a positive integer")
    return EpisodeRecord(client_id, model_id, ret, length, clean, t, seq)


# ---------------------------------------------------------------- weights

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
                out[k] = json.loads(v)
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


# ---------------------------------------------------------------- commands


def encode_command(cmd: str, **args: Any) -> bytes:
    return json.dumps({"cmd": cmd, **args}).encode()


def decode_command(raw: Any, allowed: set[str] | frozenset[str]) -> dict[str, Any]:
    if not isinstance(raw, (bytes, str)):
        raise ProtocolError("bad_structure", f"command is {type(raw).__name__}, not bytes")
    if len(raw) > MAX_COMMAND_BYTES:
        raise ProtocolError("too_large", "command too large")
    try:
        msg = json.loads(raw)
    except (ValueError, RecursionError):  # deep nesting overflows json's recursion limit
        raise ProtocolError("not_json", "command is not JSON") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("cmd"), str):
        raise ProtocolError("bad_structure", "command must be an object with a 'cmd' string")
    if msg["cmd"] not in allowed:
        raise ProtocolError("unknown_command", msg["cmd"][:32])
    return msg

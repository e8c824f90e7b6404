"""Episode records: small msgpack maps of scalars, one per finished episode."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import msgpack

from soulsai.errors import ProtocolError
from soulsai.transport.envelope import (
    INT64_MAX,
    KIND_EPISODE,
    PROTOCOL_VERSION,
    check_header,
    read_client_id,
    read_model_id,
    unpack,
)

MAX_INFO_KEYS = 32


@dataclass
class EpisodeRecord:
    """One finished episode as a client reports it; `as_dict` is its episodes.jsonl row."""

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
    msg = unpack(raw, max_bytes)
    check_header(msg, KIND_EPISODE)
    client_id = read_client_id(msg)
    model_id = read_model_id(msg)
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

"""Volume fuzzing of every decoder: 100k+ generated inputs, nothing but ProtocolError escapes.

Hypothesis (test_codec.py) explores structure; this drives sheer volume cheaply: random bytes,
random msgpack documents, and byte-level mutations of valid envelopes of every kind.
"""

from __future__ import annotations

import random
from collections import Counter

import gymnasium as gym
import msgpack
import numpy as np
import torch

from soulsai.errors import ProtocolError
from soulsai.model.specs import dqn_experience_spec
from soulsai.transport.commands import decode_command, encode_command
from soulsai.transport.envelope import Experience, decode_experience, encode_experience
from soulsai.transport.episodes import EpisodeRecord, decode_episode, encode_episode
from soulsai.transport.weights import decode_weights, encode_weights, weights_metadata

SPEC = dqn_experience_spec(
    gym.spaces.Box(-np.inf, np.inf, (4,), np.float32), gym.spaces.Discrete(2), 3, 4096, 1 << 20
)
WEIGHT_SHAPES = {"w": (4, 3), "b": (3,)}


def _valid_envelopes(rng: random.Random) -> list[bytes]:
    n = 5
    nrng = np.random.default_rng(0)
    exp = encode_experience(
        "c",
        3,
        {
            "obs": nrng.normal(size=(n, 4)).astype(np.float32),
            "action": nrng.integers(0, 2, n).astype(np.int64),
            "reward": np.ones(n, np.float32),
            "next_obs": nrng.normal(size=(n, 4)).astype(np.float32),
            "terminated": np.zeros(n, np.uint8),
            "steps": np.full(n, 3, np.uint8),
        },
    )
    ep = encode_episode(EpisodeRecord("c", 3, 12.5, 40, {"boss_hp": 0.5}, 1.7e9))
    weights = encode_weights({"w": torch.ones(4, 3), "b": torch.zeros(3)}, 7, {"env_steps": 9})
    return [exp, ep, weights, encode_command("save_best", value=1.0)]


def _mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.random()
        pos = rng.randrange(len(b) + 1)
        if op < 0.4 and b:
            b[min(pos, len(b) - 1)] = rng.randrange(256)
        elif op < 0.7:
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif b:
            del b[pos : pos + rng.randint(1, 16)]
    return bytes(b)


def _random_doc(rng: random.Random, depth: int = 0) -> object:
    kinds = ["int", "float", "str", "bytes", "none", "bool"]
    kinds += ["list", "map"] if depth < 3 else []
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.choice([0, 1, -1, 2**63 - 1, -(2**63), rng.randint(-1000, 1000)])
    if kind == "float":
        return rng.choice([0.0, float("nan"), float("inf"), -1e308, rng.random()])
    if kind == "str":
        return rng.choice(["v", "t", "exp", "ep", "f", "n", "client", "model_id", "obs", "<f4"])
    if kind == "bytes":
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 24)))
    if kind == "none":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "list":
        return [_random_doc(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {
        rng.choice(
            ["v", "t", "f", "n", "client", "model_id", "obs", "return", "info"]
        ): _random_doc(rng, depth + 1)
        for _ in range(rng.randint(0, 6))
    }


DECODERS = {
    "experience": lambda raw: decode_experience(raw, SPEC),
    "episode": lambda raw: decode_episode(raw, 65536),
    "command": lambda raw: decode_command(raw, {"save_best", "quicksave", "shutdown"}),
    "weights_metadata": lambda raw: weights_metadata(raw, 1 << 20),
    "weights": lambda raw: decode_weights(raw, WEIGHT_SHAPES, 1 << 20),
}


def _round_trips(kind: str, out: object) -> bool:
    """What a decoder accepted encodes again and decodes to the same thing."""
    if kind == "experience":
        assert isinstance(out, Experience)
        again = decode_experience(encode_experience(out.client_id, out.model_id, out.fields), SPEC)
        return (again.client_id, again.model_id, again.n) == (
            out.client_id,
            out.model_id,
            out.n,
        ) and all(np.array_equal(again.fields[k], v, equal_nan=True) for k, v in out.fields.items())
    if kind == "episode":
        assert isinstance(out, EpisodeRecord)
        return decode_episode(encode_episode(out), 65536) == out
    if kind == "command":
        assert isinstance(out, dict)
        cmd = dict(out)
        return decode_command(encode_command(cmd.pop("cmd"), **cmd), {out["cmd"]}) == out
    if kind == "weights":
        tensors, meta = out  # type: ignore[misc]
        state = {k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}
        extra = {k: v for k, v in meta.items() if k != "model_id"}
        blob = encode_weights(state, meta["model_id"], extra)
        again, meta2 = decode_weights(blob, WEIGHT_SHAPES, 1 << 20)
        return meta2 == meta and all(np.array_equal(again[k], v) for k, v in tensors.items())
    return True  # weights_metadata: a dict read from the header, nothing to encode


def test_one_hundred_thousand_hostile_inputs_only_raise_protocol_error() -> None:
    """Every input reaches every decoder; only ProtocolError comes out. The reasons show that
    inputs got past each stage (msgpack, structure, version, kind, fields, dtype, shape,
    range), and the mutants a decoder accepted round-trip unchanged."""
    rng = random.Random(1234)
    valid = _valid_envelopes(rng)
    accepted: Counter[str] = Counter()
    reasons: dict[str, Counter[str]] = {k: Counter() for k in DECODERS}
    broken: list[str] = []
    for i in range(100_000):
        r = i % 4
        if r == 0:
            raw = bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
        elif r == 1:
            raw = msgpack.packb(_random_doc(rng), use_bin_type=True)
        else:
            raw = _mutate(rng.choice(valid), rng)
        for kind, decode in DECODERS.items():
            try:
                out = decode(raw)
            except ProtocolError as e:
                reasons[kind][e.reason] += 1
                continue
            accepted[kind] += 1
            if not _round_trips(kind, out):
                broken.append(f"{kind}: {raw!r:.200}")
    assert not broken, broken[:5]
    # Byte mutations of the valid seeds that still decode (a digit of a value, a payload byte):
    for kind, at_least in [
        ("experience", 100),
        ("episode", 100),
        ("weights_metadata", 100),
        ("weights", 50),
        ("command", 30),
    ]:
        assert accepted[kind] >= at_least, (kind, accepted, reasons[kind])
    stages = {
        "experience": {"not_msgpack", "bad_structure", "bad_version", "bad_kind", "bad_field",
                       "bad_dtype", "bad_shape", "out_of_range"},
        "episode": {"not_msgpack", "bad_structure", "bad_version", "bad_kind"},
        "command": {"not_json", "bad_structure", "unknown_command"},
        "weights": {"bad_structure", "bad_dtype"},
    }  # fmt: skip
    for kind, want in stages.items():
        assert want <= set(reasons[kind]), (kind, dict(reasons[kind]))


def test_valid_inputs_still_decode() -> None:
    """The fuzz corpus's seeds are accepted, so the loop above exercises real parsing paths."""
    exp, ep, weights, cmd = _valid_envelopes(random.Random(0))
    assert decode_experience(exp, SPEC).n == 5
    assert decode_episode(ep).length == 40
    assert decode_weights(weights, WEIGHT_SHAPES, 1 << 20)[1]["model_id"] == 7
    assert decode_command(cmd, {"save_best"})["cmd"] == "save_best"


def test_coverage_guided_fuzzing_with_atheris() -> None:
    """100k libFuzzer runs over every decoder (tests/fuzz/fuzz_decoders.py); a crash fails."""
    import importlib.util
    import subprocess
    import sys
    from pathlib import Path

    import pytest

    if importlib.util.find_spec("atheris") is None:
        pytest.skip("atheris is not installed (pip install -e .[test] installs it)")
    script = Path(__file__).resolve().parents[1] / "fuzz" / "fuzz_decoders.py"
    out = subprocess.run(
        [sys.executable, str(script), "-runs=100000", "-seed=1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Done 100000 runs" in out.stderr


def test_hostile_batches_through_the_rows_decoder_match_one_by_one() -> None:
    """The intake's batch decoder on 20k hostile inputs, 64 per batch and mixed with valid
    envelopes (so layouts are shared): never raises, and rejects exactly what
    decode_experience rejects, for the same reasons."""
    from collections import Counter

    from soulsai.transport.batch import decode_experience_rows

    rng = random.Random(99)
    exp = _valid_envelopes(rng)[0]
    for _ in range(20_000 // 64):
        batch = [exp if rng.random() < 0.3 else _mutate(exp, rng) for _ in range(64)]
        out = decode_experience_rows(batch, SPEC)
        want: Counter[str] = Counter()
        rows = 0
        for raw in batch:
            try:
                rows += decode_experience(raw, SPEC).n
            except ProtocolError as e:
                want[e.reason] += 1
        assert Counter(e.reason for e in out.errors) == want
        assert int(out.counts.sum()) == rows == len(out.fields["obs"])

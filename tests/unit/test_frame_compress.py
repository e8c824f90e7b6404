"""Compressed frame fields on the wire: round trips on both decode paths, and hostile payloads
(bombs, truncation, size mismatch, a codec where none is allowed), each with its reason."""

from __future__ import annotations

import lz4.block
import msgpack
import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from soulsai.errors import ConfigError, ProtocolError
from soulsai.transport import compress
from soulsai.transport.batch import LayoutCache, decode_experience_rows
from soulsai.transport.envelope import (
    ExperienceSpec,
    FieldSpec,
    decode_experience,
    encode_experience,
)

FRAME = (84, 84)
SPEC = ExperienceSpec(
    fields={
        "frame": FieldSpec(np.uint8, FRAME, compressible=True),
        "action": FieldSpec(np.int64, (), low=0, high=5),
    },
    max_batch=256,
    max_bytes=1 << 21,  # 2 MiB: 297 frames, more than max_batch allows
)


def frames(n: int, seed: int = 0) -> np.ndarray:
    """Atari-like frames: flat background, a few blocks, some noise in one corner."""
    rng = np.random.default_rng(seed)
    f = np.full((n, *FRAME), 87, np.uint8)
    for i in range(n):
        y, x = rng.integers(0, 70, 2)
        f[i, y : y + 12, x : x + 4] = 236
        f[i, :10, :10] = rng.integers(0, 255, (10, 10))
    return f


def fields(n: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    return {"frame": frames(n, seed), "action": np.arange(n, dtype=np.int64) % 6}


def envelope_with(frame_item: list, n: int = 4) -> bytes:
    """An envelope whose `frame` field is `frame_item`, verbatim."""
    return msgpack.packb(
        {
            "v": 1,
            "t": "exp",
            "client": "c",
            "model_id": 0,
            "n": n,
            "f": {"frame": frame_item, "action": ["<i8", [n], bytes(8 * n)]},
        },
        use_bin_type=True,
    )


@pytest.mark.parametrize("codec", compress.CODECS)
def test_compressed_frames_decode_to_exactly_what_was_sent_and_take_fewer_bytes(codec) -> None:
    f = fields()
    raw = encode_experience("c", 3, f)
    packed = encode_experience("c", 3, f, codec, {"frame"})
    assert len(packed) < len(raw) / 4
    exp = decode_experience(packed, SPEC)
    np.testing.assert_array_equal(exp.fields["frame"], f["frame"])
    np.testing.assert_array_equal(exp.fields["action"], f["action"])


def test_the_batched_intake_path_takes_compressed_and_raw_envelopes_together() -> None:
    sent = [fields(16, s) for s in range(6)]
    raws = [
        encode_experience(f"c{s}", 0, f, ("lz4", "zstd", None)[s % 3], {"frame"})
        for s, f in enumerate(sent)
    ]
    rows = decode_experience_rows(raws * 2, SPEC, LayoutCache())
    assert not rows.errors
    got = sorted(rows.fields["frame"].reshape(len(rows.fields["frame"]), -1).tolist())
    want = sorted(np.concatenate([f["frame"] for f in sent * 2]).reshape(192, -1).tolist())
    assert got == want


def _reason(raw: bytes) -> str:
    with pytest.raises(ProtocolError) as e:
        decode_experience(raw, SPEC)
    return e.value.reason


def test_a_bomb_is_refused_by_its_declared_size_before_anything_is_decompressed(
    monkeypatch,
) -> None:
    # 300 frames declared: 2.1 MB decompressed, over max_bytes, from a few kB of zstd
    n = 300
    spec = ExperienceSpec(SPEC.fields, max_batch=1024, max_bytes=SPEC.max_bytes)
    bomb = zstandard.ZstdCompressor().compress(bytes(n * 84 * 84))
    raw = msgpack.packb(
        {
            "v": 1,
            "t": "exp",
            "client": "c",
            "model_id": 0,
            "n": n,
            "f": {
                "frame": ["|u1", [n, 84, 84], bomb, "zstd"],
                "action": ["<i8", [n], bytes(8 * n)],
            },
        },
        use_bin_type=True,
    )
    assert len(raw) < 1 << 12

    def never(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("decompressed before the size check")

    monkeypatch.setattr("soulsai.transport.envelope.decompress", never)
    with pytest.raises(ProtocolError) as e:
        decode_experience(raw, spec)
    assert e.value.reason == "too_large"


@pytest.mark.parametrize(
    ("what", "item"),
    [
        # a stream that expands beyond the declared shape: 1 MB of zeros declared as 4 frames
        (
            "lz4 bomb",
            ["|u1", [4, 84, 84], lz4.block.compress(bytes(1 << 20), store_size=False), "lz4"],
        ),
        (
            "zstd bomb",
            ["|u1", [4, 84, 84], zstandard.ZstdCompressor().compress(bytes(1 << 20)), "zstd"],
        ),
        # a zstd frame without a content size: nothing says what it expands to
        (
            "zstd no size",
            [
                "|u1",
                [4, 84, 84],
                zstandard.ZstdCompressor(write_content_size=False).compress(bytes(4 * 7056)),
                "zstd",
            ],
        ),
        # one frame short
        (
            "lz4 short",
            ["|u1", [4, 84, 84], lz4.block.compress(bytes(3 * 7056), store_size=False), "lz4"],
        ),
        (
            "zstd short",
            ["|u1", [4, 84, 84], zstandard.ZstdCompressor().compress(bytes(3 * 7056)), "zstd"],
        ),
        (
            "lz4 truncated",
            ["|u1", [4, 84, 84], compress.compress("lz4", frames(4).tobytes())[:-9], "lz4"],
        ),
        (
            "zstd truncated",
            ["|u1", [4, 84, 84], compress.compress("zstd", frames(4).tobytes())[:-9], "zstd"],
        ),
        ("garbage", ["|u1", [4, 84, 84], b"\xff" * 64, "lz4"]),
        ("unknown codec", ["|u1", [4, 84, 84], b"\x00" * 64, "gzip"]),
        ("codec not a str", ["|u1", [4, 84, 84], b"\x00" * 64, 7]),
    ],
)
def test_hostile_compressed_frames_are_bad_compression(what: str, item: list) -> None:
    assert _reason(envelope_with(item)) == "bad_compression", what


def test_a_codec_on_a_field_the_spec_keeps_raw_is_bad_structure() -> None:
    raw = msgpack.packb(
        {
            "v": 1,
            "t": "exp",
            "client": "c",
            "model_id": 0,
            "n": 4,
            "f": {
                "frame": ["|u1", [4, 84, 84], bytes(4 * 7056)],
                "action": ["<i8", [4], compress.compress("lz4", bytes(32)), "lz4"],
            },
        },
        use_bin_type=True,
    )
    assert _reason(raw) == "bad_structure"


def test_wrong_shape_or_dtype_is_refused_before_decompression() -> None:
    good = compress.compress("lz4", frames(4).tobytes())
    assert _reason(envelope_with(["|u1", [4, 84, 83], good, "lz4"])) == "bad_shape"
    assert _reason(envelope_with(["<u2", [4, 84, 84], good, "lz4"])) == "bad_dtype"


def test_a_codec_that_is_not_installed_is_counted_not_raised(monkeypatch) -> None:
    monkeypatch.setattr(compress, "available", lambda codec: False)
    packed = compress.compress("lz4", frames(4).tobytes())
    assert _reason(envelope_with(["|u1", [4, 84, 84], packed, "lz4"])) == "bad_compression"


FUZZ = settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=4096), st.sampled_from(compress.CODECS), st.integers(1, 8))
def test_fuzzed_compressed_payloads_decode_or_raise_protocol_error(
    data: bytes, codec: str, n: int
) -> None:
    try:
        exp = decode_experience(envelope_with(["|u1", [n, 84, 84], data, codec], n), SPEC)
    except ProtocolError:
        return
    assert exp.fields["frame"].shape == (n, 84, 84)


def test_the_setting_resolves_to_a_codec_or_says_which_key() -> None:
    assert compress.resolve("none") is None
    assert compress.resolve("auto") == "lz4"
    assert compress.resolve("zstd") == "zstd"
    with pytest.raises(ConfigError, match="training.frame_compression"):
        compress.resolve("brotli")

"""Lossless compression of large experience fields (image frames) on the wire.

A compressed field travels as `[dtype, shape, bytes, codec]` instead of `[dtype, shape, bytes]`
(docs/protocol.md). The decoder knows the decompressed size before it decompresses anything:
it is what the declared shape needs, and the shape was checked against the spec, so a
decompression bomb is refused unread (`too_large`, the envelope's decompressed total is capped
at the spec's `max_bytes`, what an uncompressed envelope may hold). The codec is then held to
exactly that size: a stream that would produce more, less, or is corrupt is `bad_compression`.

Codecs: `lz4` (the block format, no size header: the receiver supplies the size) and `zstd`
(one zstandard frame whose header must state exactly the declared size). Both are optional
imports (`pip install soulsai[frames]`); a codec that is not installed is `bad_compression`
on receipt and a ConfigError when asked for on the sending side.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from soulsai.errors import ConfigError, ProtocolError

CODECS = ("lz4", "zstd")
SETTINGS = ("auto", "none", *CODECS)
SETTING = "training.frame_compression"
ZSTD_LEVEL = 1  # fast: frames are compressed once per env step on the client


def available(codec: str) -> bool:
    """Whether `codec`'s package is installed here."""
    module = {"lz4": "lz4", "zstd": "zstandard"}.get(codec)
    return module is not None and importlib.util.find_spec(module) is not None


def resolve(setting: str) -> str | None:
    """The codec a sender uses for `training.frame_compression` (None: send raw).

    `auto` takes lz4 when it is installed (bench/frames.py: it pays on loopback and on a
    1 Gbit/s link for Atari frames), else raw; a named codec must be installed.
    """
    if setting == "none":
        return None
    if setting == "auto":
        return "lz4" if available("lz4") else None
    if setting not in CODECS:
        raise ConfigError(f"{SETTING}: {setting!r} is not one of {', '.join(SETTINGS)}")
    if not available(setting):
        raise ConfigError(f"{SETTING}: {setting} is not installed (pip install 'soulsai[frames]')")
    return setting


def compress(codec: str, data: bytes | memoryview) -> bytes:
    """`data` compressed with `codec` (one of CODECS)."""
    if codec == "lz4":
        import lz4.block

        return lz4.block.compress(data, store_size=False)
    if codec == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True).compress(data)
    raise ValueError(f"unknown codec {codec!r}")


def decompress(name: str, codec: Any, data: Any, size: int) -> bytes:
    """The `size` bytes that `data` decompresses to, or ProtocolError("bad_compression").

    `size` comes from the checked shape, never from the stream; the caller has capped it.
    """
    if codec not in CODECS:
        raise ProtocolError("bad_compression", f"{name}: unknown codec {str(codec)[:16]!r}")
    if not isinstance(data, bytes):
        raise ProtocolError("bad_structure", f"{name}: compressed payload is not bytes")
    if not available(codec):
        raise ProtocolError("bad_compression", f"{name}: codec {codec} is not installed here")
    try:
        if codec == "lz4":
            import lz4.block

            out = lz4.block.decompress(data, uncompressed_size=size) if size else b""
        else:
            import zstandard

            declared = zstandard.frame_content_size(data)
            if declared != size:  # -1: unknown; anything else would allocate what it says
                raise ProtocolError(
                    "bad_compression", f"{name}: zstd frame declares {declared} bytes, not {size}"
                )
            out = zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
    except ProtocolError:
        raise
    except Exception as e:  # corrupt input, or more output than `size`
        raise ProtocolError("bad_compression", f"{name}: {codec}: {type(e).__name__}") from None
    if len(out) != size:
        raise ProtocolError("bad_compression", f"{name}: {len(out)} bytes, expected {size}")
    return out

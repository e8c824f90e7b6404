"""Commands: small JSON objects with a "cmd" name, on the command channel and list."""

from __future__ import annotations

import json
from typing import Any

from soulsai.errors import ProtocolError

MAX_COMMAND_BYTES = 4096


def encode_command(cmd: str, **args: Any) -> bytes:
    """`{"cmd": cmd, ...args}` as JSON bytes."""
    return json.dumps({"cmd": cmd, **args}).encode()


def decode_command(raw: Any, allowed: set[str] | frozenset[str]) -> dict[str, Any]:
    """A bounded JSON object whose "cmd" is one of `allowed`; ProtocolError otherwise."""
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

"""What stands before the telemetry routes: a request body limit (413 before a large body is
read whole) and the Grafana routes' bearer token, read from the config folder."""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Request

from soulsai.errors import ConfigError

MAX_BODY_BYTES = 1 << 20  # request bodies larger than this get 413 (a Grafana query is ~1 kB)
TOKEN_NAME = "telemetry.secret"  # in the config folder: the bearer token of the Grafana routes


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets 413 before it is read whole.

    A declared Content-Length over the limit is refused unread; otherwise the body is counted
    as it streams in (chunked bodies declare no length) and handed on once complete."""

    def __init__(self, app: Any, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                chunks = [message]
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(send)
                return
            chunks.append(message)
            if not message.get("more_body", False):
                break

        async def replay() -> dict:
            return chunks.pop(0) if chunks else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Callable) -> None:
        reason = f"request body over {self.max_bytes} bytes"
        body = json.dumps({"detail": reason, "message": reason}).encode()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def read_token(config_dir: Path | None) -> str | None:
    """The Grafana routes' bearer token from `<config-dir>/telemetry.secret` (None: no file, so
    no token). An empty file is a ConfigError rather than a silently open server."""
    if config_dir is None:
        return None
    path = Path(config_dir) / TOKEN_NAME
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the telemetry token ({e})") from None
    if not text or any(c.isspace() for c in text):
        raise ConfigError(f"{path}: the telemetry token must be one word on one line")
    return text


def bearer_check(token: str | None) -> Callable[[Request], None]:
    """A dependency that wants `Authorization: Bearer <token>` (nothing when token is None)."""

    def check(request: Request) -> None:
        if token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            raise HTTPException(401, "bearer token required", {"WWW-Authenticate": "Bearer"})

    return check

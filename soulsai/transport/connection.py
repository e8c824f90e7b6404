"""Connect to Redis from the config and the secret file; failures become one clear line."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from soulsai.config.schema import Config
from soulsai.errors import ConfigError, ConnectionFailed

SECRET_NAME = "redis.secret"
# A password handed to child processes without putting it on their command line.
PASSWORD_ENV = "SOULSAI_REDIS_PASSWORD"


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is and how to log in; `url` wins over host/port when set."""

    host: str = "localhost"
    port: int = 6379
    url: str | None = None
    password: str | None = None

    @classmethod
    def from_config(cls, cfg: Config, config_dir: Path | str | None) -> RedisTarget:
        password = os.environ.get(PASSWORD_ENV) or (
            read_secret(Path(config_dir) / SECRET_NAME) if config_dir else None
        )
        return cls(cfg.redis_address, cfg.redis_port, cfg.redis_url, password)

    def describe(self) -> str:
        if self.url:
            return self.url.split("@")[-1]  # never print credentials embedded in a URL
        return f"{self.host}:{self.port}"


def read_secret(path: Path) -> str | None:
    """Password from a `requirepass <password>` line; None when the file does not exist."""
    if not path.is_file():
        return None
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read secret file {path}: {e}") from None
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    parts = lines[0].split() if len(lines) == 1 else []
    if len(parts) != 2 or parts[0] != "requirepass":
        raise ConfigError(
            f"malformed secret file {path}: expected one line 'requirepass <password>'"
        )
    return parts[1]


def connect(target: RedisTarget, *, wait: float = 0.0, socket_timeout: float = 10.0) -> redis.Redis:
    """Open a client with retries and health checks, and ping it.

    Keeps trying for `wait` seconds while the server is unreachable; a wrong password fails
    at once. Raises ConnectionFailed with a one-line reason.
    """
    kwargs = dict(
        password=target.password,
        socket_timeout=socket_timeout,
        socket_connect_timeout=5.0,
        socket_keepalive=True,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), 5),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )
    if target.url:
        client = redis.Redis.from_url(target.url, **kwargs)
    else:
        client = redis.Redis(host=target.host, port=target.port, **kwargs)
    deadline = time.monotonic() + wait
    while True:
        try:
            client.ping()
            return client
        except redis.AuthenticationError:
            raise ConnectionFailed(
                f"Redis at {target.describe()} refused the password (check config/{SECRET_NAME})"
            ) from None
        except redis.ResponseError as e:
            if "NOAUTH" in str(e) or "WRONGPASS" in str(e):
                raise ConnectionFailed(
                    f"Redis at {target.describe()} needs a password: put 'requirepass <password>'"
                    f" in config/{SECRET_NAME}"
                ) from None
            raise ConnectionFailed(f"Redis at {target.describe()}: {e}") from None
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            if time.monotonic() >= deadline:
                reason = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise ConnectionFailed(
                    f"cannot reach Redis at {target.describe()}: {reason}"
                ) from None
            time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))


def reachable(target: RedisTarget) -> bool:
    """True when a Redis answers at `target` with its password."""
    try:
        connect(target, wait=0.0, socket_timeout=2.0).close()
        return True
    except ConnectionFailed:
        return False

"""Connect to Redis from the config and the secret file (secret.py); failures become one
clear line. TLS is on for `rediss://` URLs, with the CA / client certificate / key from the
`redis_tls_*` keys.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from soulsai.config.schema import Config
from soulsai.config.trust import redact_url
from soulsai.errors import ConfigError, ConnectionFailed
from soulsai.transport.secret import (
    PASSWORD_ENV,
    SECRET_NAME,
    pick_credentials,
    read_credentials,
    warn_if_short,
)


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is and how to log in; `url` wins over host/port when set.

    TLS is used exactly when `url` starts with `rediss://`; `tls_ca` verifies the server
    (system CAs when None), `tls_cert`/`tls_key` are the client's own certificate, if the
    server asks for one.
    """

    host: str = "localhost"
    port: int = 6379
    url: str | None = None
    password: str | None = None
    username: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    @classmethod
    def from_config(cls, cfg: Config, config_dir: Path | str | None) -> RedisTarget:
        """The target the config describes; refuses an unprotected Redis on another host.

        Raises ConfigError (exit 2) for a malformed secret file, missing TLS files, or a
        non-loopback Redis with no password unless `redis_allow_insecure` is true.
        """
        cdir = Path(config_dir) if config_dir is not None else None
        secret_path = cdir / SECRET_NAME if cdir is not None else None
        env_password = os.environ.get(PASSWORD_ENV)
        secret = read_credentials(secret_path) if secret_path is not None else None
        username, password = pick_credentials(
            secret, cfg.redis_username, secret_path, password_given=bool(env_password)
        )
        if password and not env_password:
            warn_if_short(password, str(secret_path))
        target = cls(
            cfg.redis_address,
            cfg.redis_port,
            cfg.redis_url,
            env_password or password,
            username,
            *_tls_files(cfg, cdir),
        )
        check_exposure(target, cfg.redis_allow_insecure)
        return target

    @property
    def tls(self) -> bool:
        return bool(self.url and self.url.startswith("rediss://"))

    @property
    def hostname(self) -> str:
        return (urlsplit(self.url).hostname or "localhost") if self.url else self.host

    def describe(self) -> str:
        if self.url:
            return redact_url(self.url) or self.url  # never print credentials in a URL
        return f"{self.host}:{self.port}"


# ---------------------------------------------------------------- safety checks


def is_loopback(host: str) -> bool:
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _url_password(url: str | None) -> str | None:
    """A password written into a redis URL, as userinfo or as redis-py's `?password=`."""
    if not url:
        return None
    try:
        return redis.connection.parse_url(url).get("password")
    except ValueError:
        return urlsplit(url).password


def check_exposure(target: RedisTarget, allow_insecure: bool) -> None:
    """Refuse a Redis on another host without a password (ConfigError, exit 2)."""
    url_password = _url_password(target.url)
    if target.password or url_password or allow_insecure or is_loopback(target.hostname):
        return
    raise ConfigError(
        f"Redis at {target.describe()} is not on loopback and no password is configured: "
        f"put 'requirepass <password>' in config/{SECRET_NAME} (or set "
        "redis_allow_insecure: true to connect anyway)"
    )


def _tls_files(cfg: Config, cdir: Path | None) -> tuple[str | None, str | None, str | None]:
    """The redis_tls_* paths, relative ones resolved against the config folder."""
    out: list[str | None] = []
    for key in ("redis_tls_ca", "redis_tls_cert", "redis_tls_key"):
        value = getattr(cfg, key)
        if value is None:
            out.append(None)
            continue
        path = Path(value).expanduser()
        if not path.is_absolute() and cdir is not None:
            path = cdir / path
        if not path.is_file():
            raise ConfigError(f"config key '{key}': no such file {path}")
        out.append(str(path))
    if any(out) and not (cfg.redis_url or "").startswith("rediss://"):
        raise ConfigError(
            "config keys redis_tls_* are set but redis_url is not a rediss:// URL: "
            "set redis_url: rediss://HOST:PORT to use TLS"
        )
    if (out[1] is None) != (out[2] is None):
        raise ConfigError("config keys 'redis_tls_cert' and 'redis_tls_key' go together")
    return out[0], out[1], out[2]


# ---------------------------------------------------------------- connecting


def _client(target: RedisTarget, socket_timeout: float) -> redis.Redis:
    kwargs: dict = dict(
        username=target.username,
        password=target.password,
        socket_timeout=socket_timeout,
        socket_connect_timeout=5.0,
        socket_keepalive=True,
        health_check_interval=15,
        # No retries for the first PING: redis-py counts a refused password as a connection
        # error and would retry it for seconds. connect() switches retries on afterwards.
        retry=Retry(NoBackoff(), 0),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )
    if target.tls:
        kwargs.update(
            ssl_cert_reqs="required",
            ssl_check_hostname=True,
            ssl_ca_certs=target.tls_ca,
            ssl_certfile=target.tls_cert,
            ssl_keyfile=target.tls_key,
        )
    if target.url:
        return redis.Redis.from_url(target.url, **kwargs)
    return redis.Redis(host=target.host, port=target.port, **kwargs)


def _is_tls_failure(e: BaseException) -> bool:
    cause = e.__cause__ or e.__context__
    return isinstance(cause, ssl.SSLError) or "SSL" in str(e) or "certificate" in str(e)


def _auth_failure(target: RedisTarget, e: BaseException) -> ConnectionFailed:
    where = target.describe()
    url_password = _url_password(target.url)
    if target.password is None and url_password is None:
        return ConnectionFailed(
            f"Redis at {where} needs a password: put 'requirepass <password>' in "
            f"config/{SECRET_NAME}"
        )
    if target.username:
        return ConnectionFailed(
            f"Redis at {where} refused user '{target.username}' or its password "
            f"(check config/{SECRET_NAME} and redis_username)"
        )
    return ConnectionFailed(f"Redis at {where} refused the password (check config/{SECRET_NAME})")


def connect(target: RedisTarget, *, wait: float = 0.0, socket_timeout: float = 10.0) -> redis.Redis:
    """Open a client with retries and health checks, and ping it.

    Keeps trying for `wait` seconds while the server is unreachable; a wrong password or a
    failed TLS handshake fails at once. Raises ConnectionFailed with a one-line reason.
    """
    client = _client(target, socket_timeout)
    deadline = time.monotonic() + wait
    while True:
        try:
            client.ping()
            client.set_retry(Retry(ExponentialBackoff(cap=2.0, base=0.05), 5))
            return client
        except redis.AuthenticationError as e:
            raise _auth_failure(target, e) from None
        except redis.ResponseError as e:
            if "NOAUTH" in str(e) or "WRONGPASS" in str(e):
                raise _auth_failure(target, e) from None
            raise ConnectionFailed(f"Redis at {target.describe()}: {e}") from None
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            if target.tls and _is_tls_failure(e):
                raise ConnectionFailed(
                    f"TLS with Redis at {target.describe()} failed: {reason} "
                    "(check redis_tls_ca and that the server certificate names this host)"
                ) from None
            if time.monotonic() >= deadline:
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

"""Connect to Redis from the config and the secret file; failures become one clear line.

The secret file (`<config-dir>/redis.secret`, git-ignored) holds either the one line
`requirepass <password>` (one shared password, the default) or `user <name> <password>`
lines for Redis ACL users (see soulsai/transport/acl.py and docs/deployment.md). Lines are
split the way Redis splits its config file (which the compose stack's Redis reads it as):
"double quotes" with backslash escapes, 'single quotes', `#` comments. TLS is on
for `rediss://` URLs, with the CA / client certificate / key from the `redis_tls_*` keys.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from soulsai.config.schema import Config
from soulsai.config.trust import redact_url
from soulsai.errors import ConfigError, ConnectionFailed

log = logging.getLogger(__name__)

SECRET_NAME = "redis.secret"
# A password handed to child processes without putting it on their command line.
PASSWORD_ENV = "SOULSAI_REDIS_PASSWORD"
# Shorter passwords get a warning: Redis answers fast, so short ones can be guessed online.
MIN_PASSWORD_LENGTH = 16
USERNAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
PLACEHOLDER = "CHANGE-ME"  # config/redis.secret.example's stand-in password
SECRET_FORMAT = "expected 'requirepass <password>' or 'user <name> <password>' lines"

_warned: set[str] = set()


@dataclass(frozen=True)
class Secret:
    """What a secret file holds: the shared password and/or ACL users' passwords."""

    requirepass: str | None = None
    users: dict[str, str] = field(default_factory=dict)


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


# ---------------------------------------------------------------- the secret file

_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "a": "\a"}
_HEX = "0123456789abcdefABCDEF"


def split_config_line(line: str) -> list[str] | None:
    """Split one config line as Redis does (sdssplitargs); None for unbalanced quotes.

    Inside "double quotes" a backslash escapes the next character (\\n, \\t, \\xHH, ...);
    inside 'single quotes' only \\' is an escape; a closing quote must end the word.
    """
    words: list[str] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i].isspace():
            i += 1
        if i >= n:
            return words
        out = bytearray()
        quote = ""
        while True:
            c = line[i] if i < n else ""
            if quote == '"':
                if not c:
                    return None
                if (
                    c == "\\"
                    and line[i + 1 : i + 2] == "x"
                    and i + 4 <= n
                    and all(ch in _HEX for ch in line[i + 2 : i + 4])
                ):
                    out.append(int(line[i + 2 : i + 4], 16))
                    i += 3
                elif c == "\\" and i + 1 < n:
                    i += 1
                    out += _ESCAPES.get(line[i], line[i]).encode()
                elif c == '"':
                    if i + 1 < n and not line[i + 1].isspace():
                        return None
                    quote = "done"
                else:
                    out += c.encode()
            elif quote == "'":
                if not c:
                    return None
                if c == "\\" and line[i + 1 : i + 2] == "'":
                    i += 1
                    out += b"'"
                elif c == "'":
                    if i + 1 < n and not line[i + 1].isspace():
                        return None
                    quote = "done"
                else:
                    out += c.encode()
            elif not c or c.isspace():
                break
            elif c in "\"'":
                quote = c
            else:
                out += c.encode()
            i += 1
            if quote == "done":
                break
        try:
            words.append(out.decode("utf-8"))
        except UnicodeDecodeError:
            return None


def read_credentials(path: Path) -> Secret | None:
    """Parse a secret file; None when it does not exist, ConfigError when malformed."""
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read secret file {path}: {e}") from None
    requirepass: str | None = None
    users: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.strip().startswith("#"):
            continue
        parts = split_config_line(line)
        if parts is None:
            raise ConfigError(
                f"malformed secret file {path} line {n}: unbalanced quotes (write the password "
                "bare, or in quotes as Redis reads them: \"a b\" or 'a b')"
            )
        if not parts:
            continue
        parts[0] = parts[0].lower()
        if parts[0] == "requirepass" and len(parts) == 2 and requirepass is None:
            requirepass = parts[1]
        elif parts[0] == "user" and len(parts) == 3 and USERNAME_RE.match(parts[1]):
            if parts[1] in users:
                raise ConfigError(f"malformed secret file {path}: user {parts[1]!r} twice")
            users[parts[1]] = parts[2]
        else:
            raise ConfigError(f"malformed secret file {path} line {n}: {SECRET_FORMAT}")
    if requirepass is None and not users:
        raise ConfigError(f"malformed secret file {path}: {SECRET_FORMAT}")
    if any(pw.startswith(PLACEHOLDER) for pw in [requirepass or "", *users.values()]):
        raise ConfigError(f"{path} still holds the example's placeholder: put in a real password")
    return Secret(requirepass, users)


def read_secret(path: Path) -> str | None:
    """The shared password from a `requirepass <password>` file; None when there is none."""
    secret = read_credentials(path)
    if secret is None:
        return None
    if secret.requirepass is None:
        raise ConfigError(f"malformed secret file {path}: no 'requirepass <password>' line")
    return secret.requirepass


def pick_credentials(
    secret: Secret | None,
    username: str | None,
    path: Path | None,
    *,
    password_given: bool = False,
) -> tuple[str | None, str | None]:
    """(username, password) for this process.

    With `redis_username` set, its `user` line; else the `requirepass` line; else the only
    `user` line. `password_given` (from the parent process) skips the password lookup.
    """
    if secret is None:
        return username, None
    if username is not None:
        if username in secret.users:
            return username, secret.users[username]
        if password_given:
            return username, None
        raise ConfigError(
            f"{path} has no line 'user {username} <password>' (redis_username is {username!r})"
        )
    if secret.requirepass is not None:
        return None, secret.requirepass
    if len(secret.users) == 1:
        return next(iter(secret.users.items()))
    raise ConfigError(
        f"{path} holds several users ({', '.join(secret.users)}) and no requirepass line: "
        "set redis_username to the one this process logs in as"
    )


def warn_if_short(password: str, where: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH and where not in _warned:
        _warned.add(where)
        log.warning(
            "the Redis password in %s has %d characters; use at least %d "
            "(e.g. from `openssl rand -base64 32`)",
            where,
            len(password),
            MIN_PASSWORD_LENGTH,
        )


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

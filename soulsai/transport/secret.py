"""The secret file: `<config-dir>/redis.secret` (git-ignored), and which login a process uses.

It holds either the one line `requirepass <password>` (one shared password, the default) or
`user <name> <password>` lines for Redis ACL users (see soulsai/transport/acl.py and
docs/deployment.md). Lines are split the way Redis splits its config file (which the compose
stack's Redis reads it as): "double quotes" with backslash escapes, 'single quotes', `#` comments.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from soulsai.errors import ConfigError

log = logging.getLogger("soulsai.transport.connection")  # the name its log lines always had

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

"""Redis ACL users for least privilege, rendered from the key names in keys.py.

- `trainer` (training node, telemetry node, `soulsai quicksave`): every key and channel under
  the prefix, data commands only: no FLUSHALL, CONFIG, KEYS, DEBUG, SHUTDOWN, EVAL, FUNCTION.
- `client` (sampling clients): exactly what a client does, each command tied to its keys with
  ACL selectors (Redis >= 7.0): push experience and episodes, read config, weights and model
  id, heartbeat, take an index, see the throttle, subscribe to the model and commands channels.
  It cannot overwrite weights or config, read stats, flush or reconfigure Redis, switch
  databases (SELECT) or bump the index counter by more than one (INCRBY).
- `admin` (optional): everything, for maintenance by hand.

User names are a role optionally followed by `-`, `_` or `.` and a suffix (`client-pc2`), so
each machine can get its own password and be revoked alone. The `default` user is switched
off. The file holds SHA-256 hashes, never a password, and is valid both as a Redis `aclfile`
and as a config file (`redis-server users.acl`), which is how the compose stack loads it.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from soulsai.errors import ConfigError
from soulsai.transport.keys import Keys
from soulsai.transport.secret import SECRET_NAME, Secret, read_credentials, warn_if_short

ACL_NAME = "users.acl"
ROLES = ("trainer", "client", "admin")
REQUIRED_ROLES = ("trainer", "client")
ROLE_RE = re.compile(r"^(trainer|client|admin)(?:[-_.][A-Za-z0-9_.\-]+)?$")


@dataclass(frozen=True)
class Grant:
    """Commands a client may run on one key, and the access they need ("R", "W" or "RW")."""

    commands: tuple[str, ...]
    access: str


# What a sampling client may do, by Keys member (methods get "*" as their argument). Every
# member of Keys is in exactly one of CLIENT_GRANTS, CLIENT_CHANNELS and TRAINER_ONLY (a test
# checks), so a new key is a decision made here, not a silent NOPERM on some client.
CLIENT_GRANTS: dict[str, Grant] = {
    "samples": Grant(("lpush", "ltrim"), "W"),  # LTRIM: clients bound the queue (max_queue)
    "episodes": Grant(("xadd",), "W"),
    "weights": Grant(("strlen", "getrange", "get"), "R"),  # size first, then a bounded read
    "model_id": Grant(("get",), "R"),
    "config": Grant(("getrange",), "R"),  # bounded read (MAX_CONFIG_BYTES)
    "heartbeat": Grant(("set",), "W"),  # SET ... PX on <p>:client:<id>
    "client_seq": Grant(("incr",), "RW"),  # INCR only: INCRBY would let one exhaust it
    "throttle": Grant(("exists",), "R"),
}
CLIENT_CHANNELS: tuple[str, ...] = ("model_channel", "commands")
TRAINER_ONLY: frozenset[str] = frozenset(
    {
        "trainer_stats",
        "trainer_alive",
        "telemetry_stats",
        "run",
        "trainer_commands",
        "reply",
        "heartbeat_pattern",  # SCAN MATCH by the training node; clients write heartbeat(id)
    }
)
# Commands a client needs to log in and check the link (AUTH is always allowed). No SELECT:
# another database would be memory that no node sees or trims.
CONNECTION_COMMANDS = ("ping", "hello")
CLIENT_PUBSUB_COMMANDS = ("subscribe", "unsubscribe")
TRAINER_CATEGORIES = (
    "+@read",
    "+@write",
    "+@keyspace",
    "+@pubsub",
    "+@transaction",
    "+@connection",
    "-@dangerous",
    "-@admin",
    "-@scripting",  # no EVAL or FUNCTION LOAD: data commands only
    "-select",  # one database: no memory in another that nothing trims
    "-move",
)


def keys_members() -> list[str]:
    """Public names of Keys: every key, pattern and channel soulsai uses."""
    return sorted(n for n in vars(Keys) if not n.startswith("_") and n != "prefix")


def key_name(keys: Keys, member: str) -> str:
    value = getattr(keys, member)
    return value("*") if callable(value) else value


def role_of(name: str) -> str:
    m = ROLE_RE.match(name)
    if not m:
        raise ConfigError(
            f"user {name!r} in {SECRET_NAME}: names are trainer, client or admin, optionally "
            "with a suffix such as client-pc2"
        )
    return m.group(1)


def password_hash(password: str) -> str:
    return "#" + hashlib.sha256(password.encode()).hexdigest()


def trainer_rules(prefixes: Iterable[str]) -> list[str]:
    rules = []
    for p in prefixes:
        rules += [f"~{Keys(p).prefix}:*", f"&{Keys(p).prefix}:*"]
    return rules + list(TRAINER_CATEGORIES)


def client_rules(prefixes: Iterable[str]) -> list[str]:
    rules = ["-@all", *(f"+{c}" for c in CONNECTION_COMMANDS + CLIENT_PUBSUB_COMMANDS)]
    selectors = []
    for p in prefixes:
        keys = Keys(p)
        rules += [f"&{key_name(keys, m)}" for m in CLIENT_CHANNELS]
        for member, grant in CLIENT_GRANTS.items():
            cmds = " ".join(f"+{c}" for c in grant.commands)
            selectors.append(f"(%{grant.access}~{key_name(keys, member)} {cmds})")
    return rules + selectors


def user_line(name: str, password: str, prefixes: list[str]) -> str:
    role = role_of(name)
    head = ["user", name, "reset", "on", password_hash(password), "resetchannels"]
    if role == "admin":
        body = ["~*", "&*", "+@all"]
    elif role == "trainer":
        body = trainer_rules(prefixes)
    else:
        body = client_rules(prefixes)
    return " ".join(head + body)


def render_acl(secret: Secret, prefixes: list[str]) -> str:
    """The ACL file for the users in `secret` (no comments: an aclfile may not have any)."""
    roles = {role_of(name) for name in secret.users}
    missing = [r for r in REQUIRED_ROLES if r not in roles]
    if missing:
        lines = ", ".join(f"'user {r} <password>'" for r in missing)
        raise ConfigError(
            f"{SECRET_NAME} needs {lines} for the ACL file (`soulsai acl --generate` adds them)"
        )
    if not prefixes:
        raise ConfigError("no key prefix to grant")
    out = ["user default reset off"]
    for name, password in secret.users.items():
        warn_if_short(password, f"{SECRET_NAME} (user {name})")
        out.append(user_line(name, password, prefixes))
    return "\n".join(out) + "\n"


def _write_private(path: Path, text: str) -> None:
    """Write a 0600 file atomically (readers never see half of it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def add_missing_users(path: Path, roles: Iterable[str] = REQUIRED_ROLES) -> list[str]:
    """Append `user <role> <fresh password>` for each role the secret file lacks."""
    secret = read_credentials(path) or Secret()
    have = {role_of(n) for n in secret.users}
    added = [r for r in roles if r not in have]
    if added:
        old = path.read_text(encoding="utf-8") if path.is_file() else ""
        if old and not old.endswith("\n"):
            old += "\n"
        new = "".join(f"user {r} {secrets.token_urlsafe(32)}\n" for r in added)
        _write_private(path, old + new)
    return added


@dataclass(frozen=True)
class AclResult:
    acl_file: Path
    users: list[str]
    generated: list[str]
    client_secret: Path | None


def write_acl(
    config_dir: Path,
    prefixes: list[str],
    out: Path | None = None,
    generate: bool = False,
    client_secret: Path | None = None,
    client_user: str = "client",
) -> AclResult:
    """Render `users.acl` from `<config_dir>/redis.secret` (optionally adding users first)
    and, if asked, a secret file for client machines holding only `client_user`."""
    secret_path = config_dir / SECRET_NAME
    generated = add_missing_users(secret_path) if generate else []
    secret = read_credentials(secret_path)
    if secret is None:
        raise ConfigError(
            f"no {secret_path}: run `soulsai acl --generate` to create one with fresh passwords"
        )
    acl_file = out or config_dir / ACL_NAME
    _write_private(acl_file, render_acl(secret, prefixes))
    if client_secret is not None:
        if client_user not in secret.users or role_of(client_user) != "client":
            raise ConfigError(f"{secret_path} has no client user {client_user!r}")
        _write_private(client_secret, f"user {client_user} {secret.users[client_user]}\n")
    return AclResult(acl_file, list(secret.users), generated, client_secret)

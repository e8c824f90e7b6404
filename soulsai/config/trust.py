"""What a config may name, and what of it leaves the machine.

Keys that name code are local-only: `env.imports` (modules imported), `env.wrappers`
(callables called) and an `env.id` of the form `module:Env-v0` (gymnasium.make imports the
module). A process takes them from its own config (config_d.yaml <- config.yaml <- --set),
never from the config published in Redis, a run folder's `config.json` or a preset: whoever
can write those would otherwise run code on every client, or on the machine of whoever
resumes or evaluates a run folder. What such a source asks for is logged, never imported.

Credentials never leave the machine either: the userinfo of `redis_url` is stripped where
the config is serialized (schema.Config), and the published config carries no code keys.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from soulsai.errors import ConfigError

if TYPE_CHECKING:  # schema imports this module (redact_url)
    from soulsai.config.schema import Config

log = logging.getLogger(__name__)

# The keys under `env` that name code; `env.id` names code only with a ':' (see imports_module).
CODE_KEYS = ("imports", "wrappers")
SHOWN_CHARS = 200  # what a foreign source asked for is shown, cut to this length
# query arguments of a redis URL that redis-py logs in with (redis://host/0?password=pw)
CREDENTIAL_ARGS = ("password", "username")


def redact_url(url: str | None) -> str | None:
    """`url` without credentials: the user and password part (redis://user:pw@host ->
    redis://host), `password` and `username` query arguments (redis-py takes those too:
    redis://host/0?password=pw), and the fragment. An '@' after the host part (a password
    with a bare '#' or '?' in it) is taken for the end of a userinfo: what precedes it goes."""
    if not url:
        return url
    scheme, sep, rest = url.partition("://")
    if "@" in rest and "@" not in urlsplit(url).netloc:  # the '@' of a mangled userinfo
        url = f"{scheme}{sep}{rest.rsplit('@', 1)[1]}"
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = [
        (k, v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if k.lower() not in CREDENTIAL_ARGS
    ]
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query), fragment=""))


def imported_module(env_id: str) -> str | None:
    """The module gymnasium.make imports for `module:Env-v0` ids; None for plain ids."""
    module, sep, _ = env_id.partition(":")
    return module if sep else None


def code_asked(data: Any) -> list[str]:
    """The code-bearing settings in a raw config mapping (received or saved), as short text."""
    env = data.get("env") if isinstance(data, dict) else None
    if not isinstance(env, dict):
        return []
    out = []
    for key in CODE_KEYS:
        value = env.get(key)
        if value:
            shown = json.dumps(value, default=str)
            cut = shown if len(shown) <= SHOWN_CHARS else shown[: SHOWN_CHARS - 3] + "..."
            out.append(f"env.{key}={cut}")
    env_id = env.get("id")
    if isinstance(env_id, str) and imported_module(env_id) is not None:
        out.append(f"env.id={env_id[:SHOWN_CHARS]!r}")
    return out


def take_local_code(data: Any, local: Config | None) -> list[str]:
    """Set the code-bearing keys of `data` (a raw config mapping from Redis or a run folder;
    changed in place) to `local`'s (this machine's config; none without it). Returns what
    `data` asked for in code besides an env id and what `local` repeats: to be shown, never
    imported."""
    env = data.get("env") if isinstance(data, dict) else None
    if not isinstance(env, dict):
        return []
    mine = local.model_dump(mode="json")["env"] if local is not None else {}
    same = {f"env.{k}" for k in CODE_KEYS if local is not None and env.get(k) == mine[k]}
    asked = [a for a in code_asked(data) if a.split("=", 1)[0] not in same | {"env.id"}]
    env.update({k: mine.get(k, []) for k in CODE_KEYS})
    return asked


def published_json(cfg: Config) -> str:
    """The config the training node publishes: data only (no code keys, no credentials)."""
    data = cfg.model_dump(mode="json")
    take_local_code(data, None)
    return json.dumps(data)


def local_source(cfg: Config, key: str) -> str:
    """The file (or `--set`) that set `env.<key>` in a config from load_config."""
    return cfg.env.sources.get(key) or "the local config"


def check_env_id(env_id: str, local_id: str | None, where: str, hint: str) -> None:
    """Refuse an env id that imports a module unless the local config names the same id."""
    module = imported_module(env_id)
    if module is not None and env_id != local_id:
        raise ConfigError(
            f"{where} names env.id {env_id[:SHOWN_CHARS]!r}, which imports module "
            f"{module[:SHOWN_CHARS]!r}: only ids the local config names may import code; "
            f"{hint}"
        )


def received_config(raw: str | bytes, local: Config) -> Config:
    """The config a client downloaded from Redis, with the code keys of its local config.

    What the published config asks for in code is logged, never imported; an env id that
    imports a module is refused unless the local config names the same id.
    """
    from soulsai.config.loader import config_from_json

    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return config_from_json(raw)  # its one-line error
    ignored = take_local_code(data, local)
    cfg = config_from_json(json.dumps(data))
    cfg.env._sources = dict(local.env.sources)
    check_env_id(
        cfg.env.id,
        local.env.id,
        "the config published in Redis",
        f"set env.id: {cfg.env.id[:SHOWN_CHARS]} in {local_source(local, 'id')} to allow it",
    )
    if ignored:
        log.warning(
            "the config published in Redis asks for %s: ignored (code-bearing keys come from "
            "this machine's config only; set them in %s to use them)",
            ", ".join(ignored),
            local_source(local, "wrappers"),
        )
    return cfg

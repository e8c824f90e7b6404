"""Load the effective config: config_d.yaml <- preset <- config.yaml <- --set overrides.

The preset is a tuned set of values for one algorithm on one env, shipped as
`presets/<algo>/<env id>.yaml` beside config_d.yaml and chosen by the `preset` key: `auto`
(the default) takes the file of the configured algo and env when there is one, `null` none,
any other value names a file inside a presets folder (`<config dir>/presets/`, then the
shipped one; relative, no '..'). config.yaml and `--set` still override it. A preset is data:
it cannot set what chose it nor the keys that name code (env.imports, env.wrappers). Every
error is a ConfigError naming the key and the file (or `--set`) it came from.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from soulsai.config.schema import Config
from soulsai.errors import ConfigError

DEFAULTS_NAME = "config_d.yaml"
OVERRIDES_NAME = "config.yaml"
PRESETS_DIR = "presets"
SET_SOURCE = "--set"
AUTO = "auto"
# What identifies a preset cannot come from one; nor can code (presets are data).
NOT_IN_PRESET = (("algo",), ("preset",), ("env", "id"))
CODE_IN_PRESET = (("env", "imports"), ("env", "wrappers"))


def default_config_dir() -> Path:
    """`./config` when it holds the defaults, else the copy shipped inside the package."""
    local = Path.cwd() / "config"
    if (local / DEFAULTS_NAME).is_file():
        return local
    return Path(__file__).resolve().parent / "data"


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"YAML syntax error in {path}{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(data).__name__}")
    return data


def _merge(base: dict, update: dict, source: str, origin: dict, prefix: tuple = ()) -> None:
    """Deep-merge `update` into `base` in place, recording which source set each key."""
    for key, value in update.items():
        path = (*prefix, str(key))
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            origin.setdefault(path, source)
            _merge(base[key], value, source, origin, path)
        else:
            base[key] = value
            _mark(value, source, origin, path)


def _mark(value: Any, source: str, origin: dict, path: tuple) -> None:
    origin[path] = source
    if isinstance(value, dict):
        for k, v in value.items():
            _mark(v, source, origin, (*path, str(k)))


def parse_set(item: str) -> tuple[list[str], Any]:
    """Parse one `--set a.b=value`; the value is read as YAML (numbers, bools, lists, null)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set dqn.lr=0.0005")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {item!r}: empty key segment in {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def _sets_to_dict(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        parts, value = parse_set(item)
        node = out
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {p!r} was already set to a value")
            node = child
        node[parts[-1]] = value
    return out


def _source(loc: tuple, origin: dict, rank: dict[str, int]) -> str | None:
    """Who set `loc`: the latest source of it or anything under it, else of its nearest parent.

    A cross-field error on a section (e.g. `client`) blames the override that changed the
    section, not the defaults file that first created it.
    """
    under = [src for path, src in origin.items() if path[: len(loc)] == loc]
    if loc and under:
        return max(under, key=lambda src: rank.get(src, -1))
    for n in range(len(loc) - 1, 0, -1):
        if loc[:n] in origin:
            return origin[loc[:n]]
    return None


def _describe(err: dict, origin: dict, defaults_path: Path, rank: dict[str, int]) -> str:
    loc = tuple(str(p) for p in err["loc"])
    key = ".".join(loc) if loc else "(top level)"
    source = _source(loc, origin, rank)
    if err["type"] == "missing":
        source = source or str(defaults_path)
        return f"config error in {source}: key '{key}' is missing"
    source = source or str(defaults_path)
    if err["type"] == "extra_forbidden":
        return f"config error in {source}: unknown key '{key}'"
    value = err.get("input")
    shown = json.dumps(value, default=str)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    msg = err["msg"].removeprefix("Value error, ")
    return f"config error in {source}: key '{key}' = {shown}: {msg}"


def _merge_all(layers: list[tuple[str, dict[str, Any]]]) -> tuple[dict[str, Any], dict]:
    """The layers deep-merged in order (left untouched), and which source set each key."""
    origin: dict[tuple, str] = {}
    data: dict[str, Any] = {}
    for source, layer in layers:
        _merge(data, copy.deepcopy(layer), source, origin)
    return data, origin


def _find_preset(cdir: Path, data: dict[str, Any], source: str) -> Path | None:
    """The preset file the merged (not yet validated) config asks for, or None: auto looks in
    `<cdir>/presets/`, then in the presets shipped with soulsai."""
    choice = data.get("preset", AUTO)
    if choice is None:
        return None
    if not isinstance(choice, str) or not choice:
        raise ConfigError(
            f"config error in {source}: key 'preset' = {choice!r}: expected "
            f"'{AUTO}', null or a file name"
        )
    if choice != AUTO:
        return _named_preset(cdir, choice, source)
    algo, env = data.get("algo"), data.get("env")
    env_id = env.get("id") if isinstance(env, dict) else None
    if not isinstance(algo, str) or not isinstance(env_id, str):
        return None  # validation names the bad key
    parts = env_id.split("/")  # namespaced ids (ALE/Pong-v5): a folder per namespace
    if not algo.isidentifier() or any(not p or p.startswith(".") or "\\" in p for p in parts):
        return None
    for base in _preset_dirs(cdir):
        path = base.joinpath(algo, *parts[:-1], f"{parts[-1]}.yaml")
        if path.is_file():
            return path
    return None


def _preset_dirs(cdir: Path) -> list[Path]:
    return [cdir / PRESETS_DIR, Path(__file__).resolve().parent / "data" / PRESETS_DIR]


def _named_preset(cdir: Path, choice: str, source: str) -> Path:
    """The file `preset: <choice>` names: inside a presets folder, never outside one (so a
    preset value cannot make soulsai read, and echo parts of, any other file)."""
    rel = Path(choice)
    if rel.is_absolute() or ".." in rel.parts or "\\" in choice or rel.drive:
        raise ConfigError(
            f"config error in {source}: key 'preset' = {choice[:80]!r}: name a file inside "
            f"{PRESETS_DIR}/ (relative, no '..'), e.g. dqn/LunarLander-v3.yaml"
        )
    for base in _preset_dirs(cdir):
        path = base / rel
        try:
            inside = path.resolve().is_relative_to(base.resolve())
        except OSError:
            inside = False
        if inside and path.is_file():
            return path
    raise ConfigError(
        f"config error in {source}: key 'preset': no file {rel} in {cdir / PRESETS_DIR} "
        "or the shipped presets"
    )


def _read_preset(path: Path) -> dict[str, Any]:
    data = _read_yaml(path)
    for key in NOT_IN_PRESET + CODE_IN_PRESET:
        node: Any = data
        for part in key:
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            why = " (it names code: set it in config.yaml)" if key in CODE_IN_PRESET else ""
            raise ConfigError(
                f"config error in {path}: key '{'.'.join(key)}' cannot be set in a preset{why}"
            )
    return data


def load_config(config_dir: Path | str | None = None, overrides: list[str] | None = None) -> Config:
    """Read defaults, the preset, config.yaml and `--set` items (deep-merged in that order),
    validate, return the Config. Its `preset` key names the preset file that applied."""
    cdir = Path(config_dir) if config_dir is not None else default_config_dir()
    if not cdir.is_dir():
        raise ConfigError(f"config directory {cdir} does not exist (--config-dir)")
    defaults_path = cdir / DEFAULTS_NAME
    if not defaults_path.is_file():
        defaults_path = default_config_dir() / DEFAULTS_NAME
        if not defaults_path.is_file():
            raise ConfigError(f"no {DEFAULTS_NAME} in {cdir} (--config-dir)")
    user_path = cdir / OVERRIDES_NAME
    layers = [(str(defaults_path), _read_yaml(defaults_path))]
    if user_path.is_file():
        layers.append((str(user_path), _read_yaml(user_path)))
    if overrides:
        layers.append((SET_SOURCE, _sets_to_dict(overrides)))
    data, origin = _merge_all(layers)
    preset = _find_preset(cdir, data, origin.get(("preset",), str(defaults_path)))
    if preset is not None:  # again, with the preset right above the defaults
        layers.insert(1, (str(preset), _read_preset(preset)))
        data, origin = _merge_all(layers)
    data["preset"] = str(preset) if preset is not None else None
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        errors = e.errors()
        rank = {source: i for i, (source, _) in enumerate(layers)}
        first = _describe(errors[0], origin, defaults_path, rank)
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(first + more) from None
    cfg.env._sources = {
        key: origin.get(("env", key), str(defaults_path)) for key in ("id", "imports", "wrappers")
    }
    return cfg


def config_from_json(text: str | bytes) -> Config:
    """Validate a config published by the training node (the same schema)."""
    try:
        return Config.model_validate_json(text)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"published config is invalid at '{key}': {err['msg']}") from None

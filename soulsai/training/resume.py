"""`--resume RUN_DIR|latest`: which run folder and checkpoint, and the config to continue with.

The config of a resumed run is the one it was trained with (the checkpoint's `config.json`),
with two exceptions: where the run is deployed (Redis address and secret, key prefix, save
folder, ports, device, threads) comes from this machine's config, and whatever this start sets
explicitly (`config/config.yaml` and the command line) overrides the saved value and is logged.
An explicit env id or algorithm different from the saved one is an error: the checkpoint
cannot continue it.

A run folder is data, not code: the keys that name code (env.imports, env.wrappers) always
come from this machine's config, what the folder asked for is logged and never imported, and
an env id of the form `module:Env-v0` is taken only when this machine's config names the same
id (soulsai/config/trust.py). A run folder holding a symlink is refused: resuming appends to
its files and writes logs into it, which a link would redirect anywhere.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from soulsai import run as runfolder
from soulsai.config import Config
from soulsai.config.loader import OVERRIDES_NAME, parse_set
from soulsai.config.trust import check_env_id, local_source, take_local_code
from soulsai.errors import CheckpointError, ConfigError
from soulsai.training.checkpoint import MANIFEST, read_config, read_summary

log = logging.getLogger(__name__)

LATEST = "latest"
# Sections and keys that describe the experiment; everything else describes the deployment.
RUN_KEYS = frozenset(
    {"algo", "seed", "max_steps", "target_return", "env", "client", "training", "checkpoint"}
    | {"telemetry", "dqn", "ppo", "r2d2"}
)
MACHINE_KEYS = frozenset(
    {
        ("training", "metrics_port"),
        ("training", "metrics_host"),
        ("training", "device"),
        ("training", "threads"),
        ("telemetry", "http_port"),
        ("telemetry", "http_host"),
        ("telemetry", "cors_origins"),
    }
)
KeyPath = tuple[str, ...]


@dataclass(frozen=True)
class ResumePoint:
    run_dir: Path  # the run folder that continues
    checkpoint: Path  # the checkpoint folder the training node loads


def _is_checkpoint(folder: Path) -> bool:
    old = folder.with_name(f".{folder.name}.old")
    return (folder / MANIFEST).is_file() or (old / MANIFEST).is_file()


def _activity(run: Path) -> float:
    """When a run folder last made progress: its checkpoint, else its start."""
    for p in (run / runfolder.CHECKPOINT_DIR / "state.json", run / runfolder.CONFIG_FILE):
        try:
            return p.stat().st_mtime
        except OSError:
            continue
    return 0.0


def latest_run(save_dir: Path | str) -> Path:
    """The run folder under `save_dir` that was active last (newest checkpoint or start)."""
    root = Path(save_dir)
    runs = (
        [d for d in root.iterdir() if (d / runfolder.CONFIG_FILE).is_file()]
        if root.is_dir()
        else []
    )
    if not runs:
        raise ConfigError(f"--resume latest: no run folders in {root} (save_dir)")
    return max(runs, key=lambda d: (_activity(d), d.name))


def refuse_symlinks(run: Path, arg: str | Path) -> None:
    """ConfigError when anything inside the run folder is a symlink (the folder itself may be
    reached through one: that is where the user keeps it)."""
    for root, dirs, files in os.walk(run, followlinks=False):
        for name in (*dirs, *files):
            if os.path.islink(os.path.join(root, name)):
                link = Path(root, name)
                raise ConfigError(
                    f"--resume {arg}: {link} is a symlink; refusing to resume a run folder "
                    "holding links (resuming writes into the folder, a link would redirect it)"
                )


def find(arg: str | Path, save_dir: Path | str) -> ResumePoint:
    """Resolve `--resume`: `latest`, a run folder, or one of its checkpoint folders."""
    path = latest_run(save_dir) if str(arg) == LATEST else Path(arg)
    if not path.exists():
        raise ConfigError(f"--resume {arg}: {path} does not exist")
    if (path / MANIFEST).is_file():  # a checkpoint folder; run folders have no manifest
        run = path.parent
        if run.name == "checkpoints":  # a copy from the history
            run = run.parent
        refuse_symlinks(run, arg)
        return ResumePoint(run, path)
    refuse_symlinks(path, arg)
    ckpt = path / runfolder.CHECKPOINT_DIR
    if not _is_checkpoint(ckpt):
        others = [
            d.name
            for d in (path / runfolder.MANUAL_DIR, path / runfolder.BEST_DIR)
            if _is_checkpoint(d)
        ]
        hint = f"; it has {', '.join(others)}: pass --resume {path}/<folder>" if others else ""
        raise ConfigError(f"--resume {arg}: run folder {path} has no checkpoint/ yet{hint}")
    return ResumePoint(path, ckpt)


def saved_config(point: ResumePoint) -> dict[str, Any]:
    """The config the checkpoint was trained with (the run's config.json for old checkpoints)."""
    data = read_config(point.checkpoint)
    if data is None:
        try:
            data = json.loads((point.run_dir / runfolder.CONFIG_FILE).read_text())
        except (OSError, ValueError):
            raise CheckpointError(
                f"cannot resume {point.run_dir}: no readable config.json in it or its checkpoint"
            ) from None
    return data


def _explicit_paths(config_dir: Path, overrides: list[str]) -> list[KeyPath]:
    """Keys this start sets on purpose: leaves of config/config.yaml and every --set."""
    paths: list[KeyPath] = []

    def leaves(node: Any, prefix: KeyPath) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                leaves(v, (*prefix, str(k)))
        elif prefix:
            paths.append(prefix)

    user = Path(config_dir) / OVERRIDES_NAME
    if user.is_file():
        leaves(yaml.safe_load(user.read_text(encoding="utf-8")) or {}, ())
    paths += [tuple(parse_set(item)[0]) for item in overrides]
    return paths


def _related(a: KeyPath, b: KeyPath) -> bool:
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def _overlay(
    model: BaseModel, saved: dict, out: dict, prefix: KeyPath, explicit: list[KeyPath]
) -> None:
    """Copy saved values of run keys into `out` (the fresh config's dump), except those this
    start sets explicitly or that belong to the machine; keys the schema no longer knows are
    dropped."""
    for key, value in saved.items():
        path = (*prefix, key)
        if key not in out or path in MACHINE_KEYS or (not prefix and key not in RUN_KEYS):
            continue
        child = getattr(model, key, None)
        if isinstance(child, BaseModel) and isinstance(value, dict):
            _overlay(child, value, out[key], path, explicit)
        elif not any(_related(path, e) for e in explicit):
            out[key] = value


def _changes(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            out += _changes(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    if old != new:
        return [f"{prefix[:-1]}: {json.dumps(old)} -> {json.dumps(new)}"]
    return []


def _local_code(fresh: Config, saved: dict, out: dict, point: ResumePoint) -> None:
    """Put this machine's code-bearing keys into `out`; log (never import) what the run
    folder asked for; refuse a `module:Env-v0` id this machine's config does not name."""
    asked = take_local_code(copy.deepcopy(saved), fresh)
    take_local_code(out, fresh)
    env_id = out["env"]["id"]
    if isinstance(env_id, str):
        check_env_id(
            env_id,
            fresh.env.id,
            f"run folder {point.run_dir}",
            "set env.id (--env) to the same id to allow it, or start a new run",
        )
    if asked:
        log.warning(
            "run folder %s asks for %s: not imported (code-bearing keys come from this "
            "machine's config only; set them in %s to use them)",
            point.run_dir,
            ", ".join(asked),
            local_source(fresh, "wrappers"),
        )


def resume_config(
    fresh: Config, config_dir: Path, overrides: list[str], point: ResumePoint
) -> tuple[Config, list[str]]:
    """(config to continue with, the run keys it changes against the saved config)."""
    saved = saved_config(point)
    explicit = _explicit_paths(config_dir, overrides)
    out = fresh.model_dump()
    out["redis_url"] = fresh.redis_url  # a dump leaves out credentials; this process needs them
    _overlay(fresh, saved, out, (), explicit)
    _local_code(fresh, saved, out, point)
    # The run's values came with the run's preset (none before presets), not this start's.
    out["preset"] = saved.get("preset")
    try:
        cfg = Config.model_validate(out)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise ConfigError(
            f"config error resuming {point.run_dir}: key '{key}': {err['msg']}"
        ) from None
    cfg.env._sources = dict(fresh.env.sources)
    for key, now, then in (
        ("algo", cfg.algo, saved.get("algo")),
        ("env.id", cfg.env.id, (saved.get("env") or {}).get("id")),
    ):
        if then is not None and now != then:
            raise ConfigError(
                f"cannot resume {point.run_dir}: it was trained with {key}={then}, this start "
                f"sets {key}={now} (drop that setting, or start a new run)"
            )
    summary = read_summary(point.checkpoint) or {}
    for key, then in (("algo", summary.get("algo")), ("env.id", summary.get("env"))):
        now = cfg.algo if key == "algo" else cfg.env.id
        if then is not None and now != then:
            raise ConfigError(
                f"cannot resume from {point.checkpoint}: it holds {key}={then}, "
                f"the config says {key}={now}"
            )
    saved_run = {k: v for k, v in saved.items() if k in RUN_KEYS}
    new_run = {k: v for k, v in cfg.model_dump().items() if k in RUN_KEYS}
    changed = [
        c
        for c in _changes(saved_run, new_run)
        if tuple(c.split(":")[0].split(".")) not in MACHINE_KEYS
    ]
    return cfg, changed

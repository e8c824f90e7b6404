"""Checkpoints as safetensors + JSON: nothing is unpickled when loading.

A nested state (dicts, lists, tensors, numpy arrays, scalars) is split into
`tensors.safetensors` (torch), `arrays.safetensors` (numpy) and `tree.json` (the rest, with
placeholders). `state.json` holds readable counters; `manifest.json` the sha256 of every file
(extra files such as the effective `config.json` included). Written to a temporary folder and
renamed over the old one, so a crash mid-write leaves the previous checkpoint intact; loading
checks every checksum, so a damaged checkpoint is a clear CheckpointError, never a wrong state.

What goes in (the contract every training node keeps, DQN and PPO alike; see
`soulsai.training.saves`): the node's state is a dict of parts, each part the `state_dict()`
of a `Saveable` or plain data:

    policy   tensors the clients get (what `soulsai evaluate` builds its policy from)
    learner  the algorithm's state_dict(): networks, optimizer, schedules, its update count
    buffer   the replay/rollout buffer's state_dict() (numpy arrays), only when asked
    rng      rng_state(): torch, numpy and Python generators, plus any the node adds
    node     the node's counters (env_steps, model_id, accepted, ...)

`state.json` repeats the counters readably (env_steps, model_id, updates, episodes, algo, env).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file as load_np
from safetensors.numpy import save_file as save_np
from safetensors.torch import load_file as load_torch
from safetensors.torch import save_file as save_torch

from soulsai.errors import CheckpointError

TENSORS = "tensors.safetensors"
ARRAYS = "arrays.safetensors"
TREE = "tree.json"
STATE = "state.json"
MANIFEST = "manifest.json"
CONFIG = "config.json"  # the effective config the checkpoint was trained with
_CORE = (TENSORS, ARRAYS, TREE, STATE)
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,99}")
_INT_KEY = "#int:"


def _split(obj: Any, path: str, tensors: dict, arrays: dict) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": path}
    if isinstance(obj, np.ndarray):
        # not np.ascontiguousarray: it turns a 0-d array into shape (1,)
        arrays[path] = obj if obj.flags.c_contiguous else np.array(obj, order="C")
        return {"__array__": path}
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            key = f"{_INT_KEY}{k}" if isinstance(k, int) else str(k)
            out[key] = _split(v, f"{path}.{key}", tensors, arrays)
        return out
    if isinstance(obj, (list, tuple)):
        return [_split(v, f"{path}.{i}", tensors, arrays) for i, v in enumerate(obj)]
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    return obj


def _join(obj: Any, tensors: dict, arrays: dict) -> Any:
    """The state `_split` took apart; a placeholder naming nothing stored is a KeyError."""
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[_placeholder(obj["__tensor__"], tensors, "tensor")]
        if "__array__" in obj:
            return arrays[_placeholder(obj["__array__"], arrays, "array")]
        return {
            (int(k[len(_INT_KEY) :]) if k.startswith(_INT_KEY) else k): _join(v, tensors, arrays)
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [_join(v, tensors, arrays) for v in obj]
    return obj


def _placeholder(name: Any, stored: dict, what: str) -> str:
    if not isinstance(name, str) or name not in stored:
        raise KeyError(f"{TREE} names {what} {str(name)[:80]!r}, which the checkpoint lacks")
    return name


def first_nonfinite(obj: Any, path: str = "") -> str | None:
    """The path of the first tensor or array in a nested state holding NaN or inf (None when
    all are finite). Weights, normalizer statistics and optimizer moments must pass this
    before they are published, saved or resumed from; plain numbers are not checked (JSON
    holds them, and a checkpoint may keep an inf there on purpose)."""
    if isinstance(obj, torch.Tensor):
        ok = not obj.is_floating_point() or bool(torch.isfinite(obj).all())
        return None if ok else path
    if isinstance(obj, np.ndarray):
        ok = obj.dtype.kind not in "fc" or bool(np.isfinite(obj).all())
        return None if ok else path
    if isinstance(obj, dict):
        items: Any = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return None
    for k, v in items:
        found = first_nonfinite(v, f"{path}.{k}" if path else str(k))
        if found is not None:
            return found
    return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(
    folder: Path,
    state: dict[str, Any],
    summary: dict[str, Any],
    files: dict[str, bytes] | None = None,
) -> int:
    """Write `state` atomically into `folder`; `summary` becomes the readable state.json.

    `files` are extra files written beside them (e.g. `config.json`), covered by the manifest.
    Returns the checkpoint's size in bytes.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    for stale in folder.parent.glob(f".{folder.name}.tmp-*"):  # left by a killed writer
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        tensors: dict[str, torch.Tensor] = {}
        arrays: dict[str, np.ndarray] = {}
        tree = _split(state, "s", tensors, arrays)
        save_torch(tensors, str(tmp / TENSORS))
        save_np(arrays, str(tmp / ARRAYS))
        (tmp / TREE).write_text(json.dumps(tree))
        (tmp / STATE).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        for name, data in (files or {}).items():
            if name in _CORE or name == MANIFEST or not _SAFE_NAME.fullmatch(name):
                raise ValueError(f"bad extra checkpoint file name {name!r}")
            (tmp / name).write_bytes(data)
        digests = {p.name: _sha256(p) for p in sorted(tmp.iterdir())}
        (tmp / MANIFEST).write_text(json.dumps({"files": digests}, indent=2) + "\n")
        for p in tmp.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        old = folder.with_name(f".{folder.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        _fsync_dir(folder.parent)
        shutil.rmtree(old, ignore_errors=True)
        return sum(p.stat().st_size for p in folder.iterdir())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_checkpoint(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state, summary) from `folder`; a missing or damaged file is a CheckpointError."""
    folder = verify_checkpoint(folder)
    try:
        tensors = load_torch(str(folder / TENSORS))
        arrays = load_np(str(folder / ARRAYS))
        tree = json.loads((folder / TREE).read_text())
        summary = json.loads((folder / STATE).read_text())
        state = _join(tree, tensors, arrays)
    except Exception as e:  # checksums matched: a format bug or a crafted folder; one line
        text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)  # no repr quotes
        first = text.strip().splitlines()[0][:300] if text.strip() else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {folder}: {first}") from None
    if not isinstance(state, dict) or not isinstance(summary, dict):
        raise CheckpointError(f"cannot read checkpoint {folder}: {TREE} or {STATE} is not a map")
    bad = first_nonfinite(state)
    if bad is not None:
        raise CheckpointError(
            f"checkpoint {folder} holds NaN or inf in {bad[:120]}: refusing to load it "
            "(use an earlier one, e.g. from checkpoints/)"
        )
    return state, summary


def counter(counters: dict[str, Any], key: str, folder: Path, default: int | None = None) -> int:
    """A non-negative integer counter of a checkpoint (`node` part or state.json); anything
    else is a CheckpointError naming it."""
    value = counters.get(key, default)
    if value is None and default is not None:
        value = default
    if type(value) is not int or value < 0:  # not a bool, a float, a string or a list
        raise CheckpointError(
            f"checkpoint {folder}: counter {key!r} is {str(value)[:40]!r}, "
            "not a non-negative integer"
        )
    return value


def verify_checkpoint(folder: Path) -> Path:
    """Check every file against the manifest without loading anything; returns the folder to
    load (the previous one when a crash between the two renames left only that)."""
    folder = Path(folder)
    old = folder.with_name(f".{folder.name}.old")
    if not folder.is_dir() and old.is_dir():
        folder = old  # a crash between the two renames left only the previous one
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"no checkpoint in {folder} (missing {MANIFEST})")
    try:
        files = json.loads(manifest_path.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"damaged checkpoint {folder}: unreadable {MANIFEST}") from None
    if not isinstance(files, dict) or not set(_CORE) <= set(files):
        raise CheckpointError(f"damaged checkpoint {folder}: {MANIFEST} does not list every file")
    for name, digest in files.items():
        if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
            raise CheckpointError(f"damaged checkpoint {folder}: {MANIFEST} names {name!r}")
        p = folder / name
        if not p.is_file() or _sha256(p) != digest:
            raise CheckpointError(f"damaged checkpoint {folder}: {name} is missing or corrupt")
    return folder


def _fsync_dir(path: Path) -> None:
    """Make a rename durable where the OS allows it (POSIX); a no-op elsewhere."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_summary(folder: Path) -> dict[str, Any] | None:
    """A checkpoint's state.json without verifying the rest (None when absent or unreadable)."""
    for f in (Path(folder), Path(folder).with_name(f".{Path(folder).name}.old")):
        try:
            data = json.loads((f / STATE).read_text())
        except (OSError, ValueError):
            continue
        return data if isinstance(data, dict) else None
    return None


def read_config(folder: Path) -> dict[str, Any] | None:
    """The effective config saved with a checkpoint (None for checkpoints without one)."""
    try:
        data = json.loads((Path(folder) / CONFIG).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ---------------------------------------------------------------- random generators


def rng_state() -> dict[str, Any]:
    """The global generators a training node may draw from: torch (CPU, CUDA), numpy, Python."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(legacy=False),
        "python": [version, list(internal), gauss],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state()` returned (parts it lacks are left alone)."""
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# ---------------------------------------------------------------- history and disk usage


@dataclass(frozen=True)
class Archived:
    folder: Path
    kept: int  # copies in the history folder after pruning


def archive(folder: Path, history: Path, keep_last: int, label: str) -> Archived | None:
    """Keep a copy of checkpoint `folder` as `history/<local time>_<label>`, newest `keep_last`.

    Files are hard-linked where the file system allows it (a checkpoint's files are never
    changed in place, only replaced), so the copy of the newest checkpoint costs no space.
    `keep_last` 0 keeps no history.
    """
    if keep_last <= 0:
        return None
    history.mkdir(parents=True, exist_ok=True)
    for stale in history.glob(".*.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    name = f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{label}"
    tmp = Path(tempfile.mkdtemp(dir=history, prefix=f".{name}.tmp-"))
    try:
        for p in Path(folder).iterdir():
            try:
                os.link(p, tmp / p.name)
            except OSError:
                shutil.copy2(p, tmp / p.name)
        dest = history / name
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    copies = sorted(d for d in history.iterdir() if d.is_dir() and not d.name.startswith("."))
    for old in copies[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return Archived(dest, min(len(copies), keep_last))


def disk_usage(*paths: Path) -> int:
    """Bytes of the files under `paths`, each hard-linked file counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root in paths:
        if not Path(root).exists():
            continue
        for p in Path(root).rglob("*"):
            try:
                st = p.stat()
            except OSError:
                continue
            if p.is_file() and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total

"""Checkpoints as safetensors + JSON: nothing is unpickled when loading.

A nested state (dicts, lists, tensors, numpy arrays, scalars) is split into
`tensors.safetensors` (torch), `arrays.safetensors` (numpy) and `tree.json` (the rest, with
placeholders). `state.json` holds readable counters; `manifest.json` the sha256 of every file.
Written to a temporary folder and renamed over the old one, so a crash mid-write leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
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
_INT_KEY = "#int:"


def _split(obj: Any, path: str, tensors: dict, arrays: dict) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": path}
    if isinstance(obj, np.ndarray):
        arrays[path] = np.ascontiguousarray(obj)
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
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__array__" in obj:
            return arrays[obj["__array__"]]
        return {
            (int(k[len(_INT_KEY) :]) if k.startswith(_INT_KEY) else k): _join(v, tensors, arrays)
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [_join(v, tensors, arrays) for v in obj]
    return obj


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(folder: Path, state: dict[str, Any], summary: dict[str, Any]) -> int:
    """Write `state` atomically into `folder`; `summary` becomes the readable state.json.

    Returns the checkpoint's size in bytes.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        tensors: dict[str, torch.Tensor] = {}
        arrays: dict[str, np.ndarray] = {}
        tree = _split(state, "s", tensors, arrays)
        save_torch(tensors, str(tmp / TENSORS))
        save_np(arrays, str(tmp / ARRAYS))
        (tmp / TREE).write_text(json.dumps(tree))
        (tmp / STATE).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        files = {p.name: _sha256(p) for p in sorted(tmp.iterdir())}
        (tmp / MANIFEST).write_text(json.dumps({"files": files}, indent=2) + "\n")
        for p in tmp.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        old = folder.with_name(f".{folder.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
        return sum(p.stat().st_size for p in folder.iterdir())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_checkpoint(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state, summary) from `folder`; a missing or damaged file is a CheckpointError."""
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
    for name, digest in files.items():
        p = folder / name
        if not p.is_file() or _sha256(p) != digest:
            raise CheckpointError(f"damaged checkpoint {folder}: {name} is missing or corrupt")
    try:
        tensors = load_torch(str(folder / TENSORS))
        arrays = load_np(str(folder / ARRAYS))
        tree = json.loads((folder / TREE).read_text())
        summary = json.loads((folder / STATE).read_text())
    except Exception as e:  # checksums matched, so this is a format bug, still say it clearly
        raise CheckpointError(f"cannot read checkpoint {folder}: {e}") from None
    return _join(tree, tensors, arrays), summary

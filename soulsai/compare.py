"""`soulsai compare RUN_DIR...`: the returns of several runs in one figure, against env steps
and against wall time, read from each run folder's episodes.jsonl.

A run folder is untrusted input (it may come from anyone): files are read with a byte budget,
lines beyond a size are skipped, only finite, bounded numbers are kept, and the labels taken
from it are plain text (no mathtext, no hidden legend entries). Nothing in it is executed.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from soulsai import run as runfolder
from soulsai.errors import ConfigError
from soulsai.telemetry.downsample import downsample, moving_average

MAX_RUNS = 16  # runs in one figure
MAX_BYTES = 256 << 20  # of one episodes.jsonl (about 1.5M episodes); the rest is left unread
MAX_LINE = 1 << 16  # bytes; a longer line is no episode record the telemetry node wrote
MAX_CONFIG = 1 << 20  # bytes of config.json read for the label
MAX_ABS = 1e12  # a return, step count or time beyond this is not plotted
MAX_POINTS = 4000  # per curve
FORMATS = ("png", "pdf", "svg")


@dataclass
class RunCurve:
    label: str
    env_steps: np.ndarray
    wall_seconds: np.ndarray
    returns: np.ndarray
    truncated: bool = False  # the byte budget ended the read


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    f = float(v)
    return f if math.isfinite(f) and abs(f) <= MAX_ABS else None


def _text(v: Any, limit: int = 64) -> str:
    """Printable plain text for a legend: `$` would start mathtext, a leading `_` hides it."""
    s = "".join(c for c in str(v)[:limit] if c.isprintable())
    s = s.replace("\\", "/").replace("$", r"\$")
    return " " + s if s.startswith("_") else s


def read_run(run_dir: Path, name: str) -> RunCurve:
    """The returns of one run folder, or a ConfigError naming the folder."""
    if not run_dir.is_dir():
        raise ConfigError(f"{name}: not a run folder (no such folder)")
    path = run_dir / runfolder.EPISODES_FILE
    if not path.is_file():
        raise ConfigError(
            f"{name}: no {runfolder.EPISODES_FILE} (not a run folder, or no episode yet)"
        )
    steps: list[float] = []
    walls: list[float] = []
    rets: list[float] = []
    first_time: float | None = None
    truncated = False
    with open(path, "rb") as f:
        budget = MAX_BYTES
        for line in f:
            budget -= len(line)
            if budget < 0:
                truncated = True
                break
            if len(line) > MAX_LINE:
                continue
            try:
                rec = json.loads(line)
            except (ValueError, RecursionError):
                continue
            if not isinstance(rec, dict):
                continue
            ret, step = _num(rec.get("return")), _num(rec.get("env_steps"))
            if ret is None or step is None:
                continue
            wall = _num(rec.get("wall_time"))
            t = _num(rec.get("time"))
            if wall is None and t is not None:  # a record without the node's wall_time
                first_time = t if first_time is None else first_time
                wall = t - first_time
            steps.append(step)
            walls.append(math.nan if wall is None else wall)
            rets.append(ret)
    if not rets:
        raise ConfigError(f"{name}: {runfolder.EPISODES_FILE} holds no episode with a return")
    return RunCurve(
        _label(run_dir, name),
        np.asarray(steps),
        np.asarray(walls),
        np.asarray(rets),
        truncated,
    )


def _label(run_dir: Path, name: str) -> str:
    """The folder's name, with algo and env from its config.json when the name lacks them."""
    label = _text(run_dir.resolve().name or name)
    try:
        with open(run_dir / runfolder.CONFIG_FILE, "rb") as f:
            cfg = json.loads(f.read(MAX_CONFIG))
    except (OSError, ValueError, RecursionError):
        return label
    if not isinstance(cfg, dict):
        return label
    env = cfg.get("env")
    parts = [cfg.get("algo"), env.get("id") if isinstance(env, dict) else None]
    extra = [_text(p, 48) for p in parts if isinstance(p, str) and p and p not in label]
    return f"{label} ({', '.join(extra)})" if extra else label


def compare(run_dirs: list[Path], out: Path, window: int = 20) -> list[RunCurve]:
    """Read every run (all errors before any drawing) and write the figure to `out`."""
    if not run_dirs:
        raise ConfigError("compare: name at least one RUN_DIR")
    if len(run_dirs) > MAX_RUNS:
        raise ConfigError(f"compare: at most {MAX_RUNS} runs in one figure ({len(run_dirs)} given)")
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ConfigError(f"-o {out}: the file must end in {', '.join('.' + f for f in FORMATS)}")
    curves = [read_run(d, str(d)) for d in run_dirs]
    labels = [c.label for c in curves]
    for c, d in zip(curves, run_dirs, strict=True):
        if labels.count(c.label) > 1:  # two folders of one name: tell them apart by the path
            c.label = _text(d, 120)
    runfolder.atomic_write_bytes(out, draw(curves, window, fmt))
    return curves


def draw(curves: list[RunCurve], window: int, fmt: str) -> bytes:
    """Two panels: return against env steps, return against wall time; each run's raw
    returns faint and their moving average bold, in one colour per run."""
    try:
        import matplotlib
    except ImportError as e:
        raise ConfigError("soulsai compare needs matplotlib: pip install 'soulsai[server]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    longest = max(
        (float(np.nanmax(c.wall_seconds)) for c in curves if np.isfinite(c.wall_seconds).any()),
        default=0.0,
    )
    unit, scale = (
        ("h", 3600.0) if longest > 7200 else ("min", 60.0) if longest > 120 else ("s", 1.0)
    )
    fig, (by_steps, by_time) = plt.subplots(1, 2, figsize=(13, 4.8))
    for i, c in enumerate(curves):
        color = f"C{i % 10}"
        avg = moving_average(c.returns, window)
        for ax, x in ((by_steps, c.env_steps), (by_time, c.wall_seconds / scale)):
            ax.plot(*downsample(x, c.returns, MAX_POINTS), color=color, alpha=0.2, lw=0.8)
            label = c.label + (" (first 256 MiB)" if c.truncated else "")
            ax.plot(*downsample(x, avg, MAX_POINTS), color=color, lw=2.0, label=label)
    by_steps.set_xlabel("env steps")
    by_time.set_xlabel(f"wall time [{unit}]")
    for ax in (by_steps, by_time):
        ax.set_ylabel("return")
        ax.grid(alpha=0.3)
    fig.legend(
        *by_steps.get_legend_handles_labels(),
        loc="lower center",
        ncol=min(2, len(curves)),
        fontsize=8,
        frameon=False,
    )
    runs = f"{len(curves)} run{'s' if len(curves) > 1 else ''}"
    fig.suptitle(f"returns of {runs} (faint: each episode, bold: mean of {window})")
    rows = math.ceil(len(curves) / 2)
    fig.tight_layout(rect=(0, min(0.45, 0.045 * rows + 0.02), 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=90)
    plt.close(fig)
    return buf.getvalue()

"""The training figure: raw values faint, moving average bold, one panel per key."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from soulsai.run import atomic_write_bytes  # noqa: E402


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last `window` values at each point (fewer at the start)."""
    if len(values) == 0:
        return values.astype(float)
    c = np.cumsum(np.insert(values.astype(float), 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def draw(
    path: Path, records: list[dict], x_key: str, y_keys: list[str], window: int, title: str
) -> None:
    """Render `records` and write the PNG atomically."""
    fig, axes = plt.subplots(len(y_keys), 1, figsize=(9, 3.2 * len(y_keys)), squeeze=False)
    x = np.asarray([r.get(x_key, i) for i, r in enumerate(records)], dtype=float)
    for ax, key in zip(axes[:, 0], y_keys, strict=True):
        y = np.asarray([r.get(key, np.nan) for r in records], dtype=float)
        ax.plot(x, y, color="tab:blue", alpha=0.25, linewidth=0.8, label=key)
        ax.plot(
            x,
            moving_average(np.nan_to_num(y), window),
            color="tab:blue",
            linewidth=2.0,
            label=f"{key} (mean of {window})",
        )
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    axes[-1, 0].set_xlabel(x_key)
    axes[0, 0].set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())

"""The training figure: one panel per series, raw values faint, moving average bold."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from soulsai.run import atomic_write_bytes
from soulsai.telemetry.downsample import downsample
from soulsai.telemetry.stats import AVG, EpisodeStats

MAX_POINTS = 4000  # per curve; more than a 9-inch figure at 90 dpi can show


def draw_stats(path: Path, stats: EpisodeStats, x_key: str, y_keys: list[str], title: str) -> None:
    """Render the configured panels of `stats` and write the PNG atomically."""
    with stats.lock:
        x = stats.view(x_key)
        panels = [(k, stats.view(k), stats.view(k + AVG)) for k in y_keys]
    if x is None:
        return
    draw(path, x, panels, x_key, stats.window, title)


def draw(
    path: Path,
    x: np.ndarray,
    panels: list[tuple[str, np.ndarray | None, np.ndarray | None]],
    x_label: str,
    window: int,
    title: str,
) -> None:
    """panels: (name, raw values, moving average) per panel, all aligned with `x`."""
    # Imported on first use: matplotlib costs the node half a second at start, when the
    # training node and the clients need the CPU more.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 3.2 * len(panels)), squeeze=False)
    for ax, (name, raw, avg) in zip(axes[:, 0], panels, strict=True):
        if raw is not None:
            ax.plot(
                *downsample(x, raw, MAX_POINTS), color="tab:blue", alpha=0.25, lw=0.8, label=name
            )
        if avg is not None:
            ax.plot(
                *downsample(x, avg, MAX_POINTS),
                color="tab:blue",
                lw=2.0,
                label=f"{name} (mean of {window})",
            )
        if raw is None and avg is None:
            ax.text(0.5, 0.5, f"no values for {name} yet", ha="center", transform=ax.transAxes)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", fontsize=8)
    axes[-1, 0].set_xlabel(x_label)
    axes[0, 0].set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())

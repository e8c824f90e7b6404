"""The progress display of `soulsai train` and `soulsai server` (local.py): one bar row of
fixed-width columns and the run's numbers on a line below it, from the nodes' stats hashes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from soulsai.transport.links import as_int

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

BAR_WIDTH = 20  # cells: with %, steps, elapsed and ETA the bar's row takes about 70 columns


def stack_progress(console: Console, disable: bool = False) -> Progress:
    """The progress display: one row of fixed-width columns (algorithm, bar, %, env steps,
    elapsed, ETA) that fits 80 columns, and the run's numbers on a line of their own below
    it (`.info`), cut at its end when too long, never wrapped. rich is imported here: a
    client-only install imports this module without it."""
    from rich.progress import (
        BarColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.table import Column
    from rich.text import Text

    class StackProgress(Progress):
        info = ""

        def get_renderables(self):  # type: ignore[no-untyped-def]
            yield self.make_tasks_table(self.tasks)
            yield Text(self.info, no_wrap=True, overflow="ellipsis")

    def fixed(min_width: int = 0) -> Column:
        return Column(no_wrap=True, min_width=min_width)

    return StackProgress(
        TextColumn("[bold]{task.description}", table_column=fixed()),
        BarColumn(bar_width=BAR_WIDTH, table_column=fixed(BAR_WIDTH)),
        TaskProgressColumn(table_column=fixed(4)),
        TextColumn("{task.fields[steps]}", justify="right", table_column=fixed(19)),
        TimeElapsedColumn(table_column=fixed(7)),
        TextColumn("eta {task.fields[eta]}", table_column=fixed(11)),
        console=console,
        disable=disable,
        refresh_per_second=4,
    )


def update_bar(
    bar: Progress, task: TaskID, steps: int, total: int | None, trn: dict, tel: dict, window: int
) -> None:
    """Show the training node's env steps, and the telemetry node's smoothed rate (env steps
    over the last 30 s, the live page's number) with the ETA it gives."""
    rate = _float(tel.get("env_steps_per_second"))
    eta = "-:--:--"
    if total and rate:
        eta = _hms(max(0, total - steps) / rate)
    counted = f"{_count(steps)}/{_count(total)}" if total else _count(steps)
    bar.info = info_line(trn, tel, window, rate)  # type: ignore[attr-defined]
    bar.update(task, completed=steps, steps=f"{counted} steps", eta=eta)


def info_line(trn: dict, tel: dict, window: int, rate: float | None) -> str:
    """Clients and steps/s first (an 80-column line cuts its end), then episodes, the
    moving-average return over the real window, and the best one."""
    return " | ".join(
        [
            f"clients {as_int(trn.get('clients'))}",
            f"{'-' if rate is None else f'{rate:,.0f}'} steps/s",
            f"ep {as_int(tel.get('episodes')):,}",
            f"return({window}) {show_number(tel.get('rolling_return'))}",
            f"best {show_number(tel.get('best_rolling_return'))}",
        ]
    )


def join_phrases(phrases: Sequence[str], width: int, sep: str = "  ") -> list[str]:
    """Lines of `phrases` joined by `sep`, broken between phrases only, each line at most
    `width` columns (a phrase longer than that gets a line of its own)."""
    lines: list[str] = []
    for phrase in phrases:
        if lines and len(lines[-1]) + len(sep) + len(phrase) <= width:
            lines[-1] += sep + phrase
        else:
            lines.append(phrase)
    return lines


def _float(raw: object) -> float | None:
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def show_number(raw: object) -> str:
    """A stats field as up to 5 significant digits, or "-"."""
    value = _float(raw)
    return "-" if value is None else f"{value:.5g}"


def _count(n: int | None) -> str:
    """12,345 up to 99,999, then 123.4k, 1.23M: at most 7 characters below 1e9."""
    n = int(n or 0)
    if n < 100_000:
        return f"{n:,}"
    if n < 999_950:
        return f"{n / 1e3:.1f}k"
    return f"{n / 1e6:.2f}M"


def _hms(seconds: float) -> str:
    if seconds >= 100 * 3600:
        return ">99h"
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"

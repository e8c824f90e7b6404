"""`soulsai train`'s progress display rendered by rich at 80 and 120 columns: the bar keeps
its width, %, elapsed and ETA are never cut, the client count stays at 80 columns, the label
names the real moving-average window, and the final summary breaks between phrases only."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console, Group

from soulsai.progress import BAR_WIDTH, join_phrases, stack_progress, update_bar

BAR_CELLS = "━╸╺"  # rich's bar: done, the half cells at the edge


def console(width: int) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(width=width, file=out, color_system=None, force_terminal=False), out


def render(width: int, steps: int, total: int | None, trn: dict, tel: dict, window: int) -> str:
    con, out = console(width)
    bar = stack_progress(con, disable=True)
    task = bar.add_task("ppo", total=total, steps="", eta="-:--:--")
    update_bar(bar, task, steps, total, trn, tel, window)
    con.print(Group(*bar.get_renderables()))
    return out.getvalue()


BIG = {  # every number as wide as a long run makes it
    "trn": {"clients": "64"},
    "tel": {
        "env_steps_per_second": "12345.6",
        "episodes": "1234567",
        "rolling_return": "-12345.6789",
        "best_rolling_return": "-1234.5678",
    },
}


@pytest.mark.parametrize("width", [80, 120])
def test_bar_percent_elapsed_and_eta_are_whole_and_clients_stay(width: int) -> None:
    text = render(width, 1_234_000, 2_000_000, BIG["trn"], BIG["tel"], 100)
    row, info = text.splitlines()[:2]
    assert all(len(line) <= width for line in text.splitlines())
    bar = re.match(rf"ppo (.{{{BAR_WIDTH}}}) ", row).group(1)  # what is left to do: blank
    assert bar.rstrip() and set(bar) <= set(BAR_CELLS + " ")
    assert " 62% " in row and "1.23M/2.00M steps" in row
    assert re.search(r" \d+:\d\d:\d\d eta 0:01:02$", row), row  # elapsed, then ETA: 766k/12.3k/s
    assert "…" not in row
    assert info.startswith("clients 64 | 12,346 steps/s | ep 1,234,567 | return(100) -12346")


def test_the_label_names_the_configured_window_and_unknowns_are_dashes() -> None:
    text = render(80, 0, None, {}, {}, 7)
    row, info = text.splitlines()[:2]
    assert "0 steps" in row and "eta -:--:--" in row
    assert info == "clients 0 | - steps/s | ep 0 | return(7) - | best -"


def test_the_summary_breaks_between_phrases_only() -> None:
    phrases = [
        "stopped: max_steps",
        "solved: no",
        "env steps: 12,345,678",
        "episodes: 1,234,567",
        "best return(100): -12346",
    ]
    for width in (40, 80, 120):
        lines = join_phrases(phrases, width)
        assert all(len(line) <= width for line in lines)
        assert [p for line in lines for p in line.split("  ")] == phrases
        con, out = console(width)
        for line in lines:
            con.print(line, soft_wrap=True, highlight=False)
        assert out.getvalue().splitlines() == lines  # rich wraps nothing itself
    assert len(join_phrases(phrases, 120)) == 1

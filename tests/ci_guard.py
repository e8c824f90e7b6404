"""A pytest plugin (loaded by pyproject's addopts) that keeps CI honest.

Tests skip themselves when a tool they need is missing (chromium, docker-compose, hadolint,
atheris, openssl, Redis 7). On a developer's machine that is a convenience; in CI (the `CI`
environment variable set, as `.ci/run` and every CI service do) a skipped test is a test that
did not run, so it fails, naming itself and what was missing. Every run ends with one line of
counts that CI logs can be grepped for.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

FALSE = {"", "0", "false", "no", "off"}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in FALSE


def _reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (file, line, "Skipped: why")
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome: Any = yield
    report: pytest.TestReport = outcome.get_result()
    if report.skipped and in_ci() and not hasattr(report, "wasxfail"):
        why = _reason(report)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI (CI is set): {item.nodeid}: {why}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    stats = terminalreporter.stats
    line = ", ".join(
        f"{len(stats.get(k, []))} {k}" for k in ("passed", "failed", "skipped", "error")
    )
    terminalreporter.write_line(f"test summary: {line}" + (" (CI: skips fail)" if in_ci() else ""))

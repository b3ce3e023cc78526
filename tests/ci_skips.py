"""Under CI (CI=true), a skipped test fails the run: every tier must really run there.

A test skips when its tool is missing (a real engine, network namespaces, Chromium, debootstrap).
On a developer's machine that is a convenience; in CI it would be a silent hole, so the run ends
with a failing exit status and each skip is listed with its reason. tests/conftest.py registers
these hooks.
"""

from __future__ import annotations

import os

import pytest


def ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _skips(config: pytest.Config) -> list[tuple[str, str]]:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return []
    out = []
    for report in reporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        reason = reason.removeprefix("Skipped: ")
        out.append((report.nodeid, reason))
    return out


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    skips = _skips(config)
    if not (ci() and skips):
        return
    terminalreporter.section(
        f"CI=true: {len(skips)} test(s) SKIPPED, so this run FAILS", sep="!", red=True, bold=True
    )
    for nodeid, reason in skips:
        terminalreporter.write_line(f"SKIPPED {nodeid}: {reason}", red=True, bold=True)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if ci() and _skips(session.config) and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

"""A skip fails the run under CI=true, with its reason printed; elsewhere it is only reported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_pytest(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text(
        "from tests.ci_skips import pytest_sessionfinish, pytest_terminal_summary  # noqa: F401\n"
    )
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n\n"
        "def test_runs():\n    assert True\n\n"
        "def test_needs_a_tool():\n    pytest.skip('frobnicator not installed')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(REPO)
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_skip_fails_the_run_under_ci(tmp_path):
    result = run_pytest(tmp_path, "true")
    assert result.returncode == 1, result.stdout
    assert "SKIPPED, so this run FAILS" in result.stdout
    assert "test_needs_a_tool: frobnicator not installed" in result.stdout


def test_a_skip_is_only_reported_outside_ci(tmp_path):
    result = run_pytest(tmp_path, None)
    assert result.returncode == 0, result.stdout
    assert "1 skipped" in result.stdout and "this run FAILS" not in result.stdout

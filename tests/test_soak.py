"""The soak's short tier: 5 namespaced hosts (private dockerds of three kinds, node processes as
an operator runs them) through 3 minutes of a seeded schedule that injects every fault kind at
least once, with zero invariant violations (mesh.lab.soak; docs/testing.md#soak). The seed is
fixed so a failure here replays with `scripts/soak --seed 24 --hosts 5 --duration 3m`."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import pytest
from rich.console import Console

from mesh.lab.dockerd import available
from mesh.lab.engines import KINDS
from mesh.lab.soak import Soak
from mesh.lab.soak_cli import DEFAULT_KINDS, summary_of
from mesh.lab.soak_schedule import FAULTS, make_plan
from mesh.lab.soak_summary import render

pytestmark = [pytest.mark.docker, pytest.mark.netns, pytest.mark.slow]

SEED, HOSTS, DURATION = 24, 5, 180.0


def test_a_short_soak_with_every_fault_keeps_every_invariant() -> None:
    reason = available()
    if reason:
        pytest.skip(reason)
    kinds = [KINDS[k] for k in DEFAULT_KINDS.split(",")]
    missing = [k.missing() for k in kinds if k.missing()]
    if missing:
        pytest.fail(f"{missing[0]}: scripts/test installs every engine of the matrix")
    plan = make_plan(SEED, HOSTS, DURATION)
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="cachemesh-soak-", dir="/tmp") as tmp:
        outcome = Soak(Path(tmp), plan, kinds, log=lines.append).run()
    summary = summary_of(outcome)
    out = io.StringIO()
    render(summary, Console(file=out, width=160))
    report = "\n".join(lines) + "\n" + out.getvalue()
    assert all(outcome.injected.get(kind, 0) >= 1 for kind in FAULTS), report
    assert not outcome.failed_actions, report
    assert summary.violations == [], report
    assert all(summary.convergence.get(kind) for kind in FAULTS), report  # each fault converged
    assert summary.bytes_moved > 0 and all(n.peak_rss_mb > 0 for n in summary.nodes), report

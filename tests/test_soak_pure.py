"""The soak's pure parts, without engines: the schedule from a seed, the invariants over samples,
the convergence clock, the slopes and the summary (tests/test_soak.py runs the whole soak)."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from mesh.lab.soak import NO_WHEEL, previous_release_note
from mesh.lab.soak_invariants import (
    ATTEMPTS_BOUND,
    BOUNDS,
    Convergence,
    Sample,
    attempts,
    converged,
    differences,
    expected_view,
    health,
    leaks,
    own,
    percentile,
    slope,
    tagged,
)
from mesh.lab.soak_schedule import ACTIONS, FAULTS, budget_slots, make_plan
from mesh.lab.soak_summary import render, summarise

A, B, C = "sha256:" + "a" * 64, "sha256:" + "b" * 64, "sha256:" + "c" * 64
DOWN: dict[str, str] = {"engine": "down"}  # a sample whose engine did not answer


def sample(
    host="h0", *, view=None, engine=None, healthz=200, readyz=200, reason="warm", holds_all=True, failing=None
):
    return Sample(
        1.0,
        host,
        f"{host}.1",
        healthz,
        readyz,
        reason,
        view or {},
        None if engine is DOWN else (engine or {}),
        failing or {},
        50 << 20,
        40,
        holds_all,
    )


# --- the schedule ---------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another():
    assert make_plan(7, 6, 180).events == make_plan(7, 6, 180).events
    assert make_plan(7, 6, 180).events != make_plan(8, 6, 180).events


@pytest.mark.parametrize("seed", range(20))
def test_a_short_schedule_injects_every_fault_kind_and_acts_between(seed):
    plan = make_plan(seed, 5, 180)
    counts = plan.counts()
    assert set(FAULTS) <= set(counts), counts
    assert sum(counts.get(a, 0) for a in ACTIONS) >= len(plan.events) // 2
    times = [e.at for e in plan.events]
    assert times == sorted(times) and times[0] >= 20 and times[-1] <= 150  # 30 s left to converge


@pytest.mark.parametrize("seed", range(20))
def test_events_stay_within_the_fleet_and_partitions_cut_a_minority(seed):
    hosts = 6
    for e in make_plan(seed, hosts, 600).events:
        assert 0 <= e.slot < hosts
        if e.kind == "partition":
            assert 1 <= len(e.group) <= (hosts - 1) // 2 and e.lasts > 0
        if e.kind == "upgrade":
            assert len(e.group) == hosts // 2
        if e.kind == "netem":
            assert 0 < e.loss < 10 and e.delay_ms > 0 and e.lasts > 0
        if e.kind == "disk":
            assert e.size_mb > 32  # past the small budget's 32 MB


def test_some_nodes_run_with_a_small_budget():
    assert budget_slots(10) == [2, 5, 8]
    assert budget_slots(3) == [2]
    with pytest.raises(ValueError):
        make_plan(1, 2, 60)


# --- invariants on one sample ---------------------------------------------------------------


def test_health_wants_200_and_a_reason_with_every_503():
    assert health(sample()) == []
    assert health(sample(readyz=503, reason="warming: 2/3 images")) == []
    assert [v.invariant for v in health(sample(healthz=None))] == ["healthz"]
    assert [v.invariant for v in health(sample(readyz=503, reason=" "))] == ["readyz"]


def test_a_tag_is_its_publishers_image_or_a_violation():
    published = {"soak/b1:1": A, "soak/b2:1": None}
    assert tagged(sample(engine={"soak/b1:1": A, "soak/b2:1": C}), published) == []  # b2 still building
    wrong = tagged(sample(engine={"soak/b1:1": B}), published)
    assert [v.invariant for v in wrong] == ["tagged"] and "publisher built" in wrong[0].detail
    assert "nobody published" in tagged(sample(engine={"soak/x:1": A}), published)[0].detail


def test_an_image_built_here_must_stay_here_under_its_tag():
    built = {"soak/b1:1": A}
    assert own(sample(engine={"soak/b1:1": A}), built) == []
    assert "evicted" in own(sample(engine={}), built)[0].detail
    assert "overwritten" in own(sample(engine={"soak/b1:1": B}), built)[0].detail
    assert own(sample(engine=DOWN), built) == []  # engine down: nothing to say


def test_failed_pulls_in_a_row_are_bounded():
    assert attempts(sample(failing={A: ATTEMPTS_BOUND})) == []
    assert [v.invariant for v in attempts(sample(failing={A: ATTEMPTS_BOUND + 1}))] == ["attempts"]


# --- convergence ----------------------------------------------------------------------------


def test_the_expected_view_is_what_some_live_host_holds_of_what_was_published():
    published = {"soak/b1:1": A, "soak/b2:1": B, "registry:soak/p3:1": C}
    samples = [
        sample("h0", engine={"soak/b1:1": A}, view={"registry:soak/p3:1": C}),
        sample("h1", engine={"soak/b1:1": A}),
    ]
    assert expected_view(samples, published) == {"soak/b1:1": A, "registry:soak/p3:1": C}  # b2's host died


def test_converged_when_every_view_is_the_published_one_and_full_hosts_hold_the_images():
    published = {"soak/b1:1": A, "registry:soak/p3:1": C}
    view = {"soak/b1:1": A, "registry:soak/p3:1": C}
    full = sample("h0", engine={"soak/b1:1": A}, view=view)
    small = sample("h1", engine={}, view=view, holds_all=False)  # its budget cannot hold b1: fine
    assert converged([full, small], published)
    lagging = sample("h2", engine={}, view=view)  # holds all, yet lacks the image
    assert not converged([full, lagging], published)
    assert "engine lacks ['soak/b1:1']" in differences([full, lagging], published)[0]
    behind = sample("h3", engine={"soak/b1:1": A}, view={"soak/b1:1": A})  # has not seen the push
    assert not converged([full, behind], published)
    assert not converged([full, sample("h4", engine=DOWN, view=view)], published)
    assert not converged([], published)


def test_the_convergence_clock_starts_when_a_fault_ends_and_misses_once_per_deadline():
    c = Convergence(bounds={**BOUNDS, "build_classic": 10.0, "partition": 20.0})
    c.open("build_classic", 0.0)
    c.open("partition", 30.0)  # a partition from 5 s to 30 s
    assert c.observe(25.0, agreed=False) == []  # a fault still on: no deadline
    assert c.deadline(25.0) is None
    assert c.observe(45.0, agreed=False) == []  # 15 s after the heal: within 20
    missed = c.observe(51.0, agreed=False, why=["h1: view lacks x"])
    assert [v.invariant for v in missed] == ["converged"] and "h1: view lacks x" in missed[0].detail
    assert c.observe(55.0, agreed=False) == []  # one per deadline
    assert c.observe(56.0, agreed=True) == []
    assert c.times() == {"build_classic": [56.0], "partition": [26.0]}
    c.open("push", 60.0)
    assert c.observe(61.0, agreed=True) == [] and c.times()["push"] == [1.0]


# --- figures --------------------------------------------------------------------------------


def test_percentile_by_nearest_rank_and_slope_by_least_squares():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50 and percentile(values, 99) == 99 and percentile([3.0], 99) == 3
    assert slope([(0, 10), (1, 12), (2, 14)]) == pytest.approx(2.0)
    assert slope([(0, 5)]) == 0 and slope([(1, 5), (1, 6)]) == 0


def test_a_node_whose_fds_or_rss_climb_is_not_flat():
    flat = [(t * 30.0, (80 << 20) + (t % 3 << 20), 40 + t % 2) for t in range(40)]
    assert leaks("h0.1", flat) == []
    fds = [(t * 30.0, 80 << 20, 40 + 10 * t) for t in range(40)]
    assert [v.detail.split()[0] for v in leaks("h0.1", fds)] == ["open"]
    rss = [(t * 30.0, (80 << 20) + (t << 23), 40) for t in range(40)]
    assert [v.detail.split()[0] for v in leaks("h0.1", rss)] == ["RSS"]
    short = [(t * 1.0, 80 << 20, 40 + 10 * t) for t in range(40)]  # 40 s: warm-up, not a leak
    assert leaks("h0.1", short) == []


def test_the_summary_judges_flatness_and_prints_the_seed_and_every_kind():
    climbing = [(t * 30.0, 80 << 20, 40 + 10 * t) for t in range(40)]
    steady = [(t * 30.0, 90 << 20, 40) for t in range(40)]
    s = summarise(
        seed=42,
        hosts=2,
        duration=1200,
        elapsed=1234,
        kinds=["20.10"],
        injected={"kill_node": 2, "build_classic": 5},
        failed_actions={},
        violations=[],
        convergence={"kill_node": [3.0, 5.0], "build_classic": [1.0]},
        runs={"h0.1": ("h0", climbing, 81 << 20, 5 << 20), "h1.1": ("h1", steady, 95 << 20, 7 << 20)},
        upgrade_note=f"{NO_WHEEL} (test)",
    )
    assert not s.ok and [v.invariant for v in s.violations] == ["flat"]
    assert s.bytes_moved == 12 << 20 and s.convergence["kill_node"] == (2, 3.0, 5.0, 5.0)
    assert [n.host for n in s.nodes] == ["h0", "h1"] and s.nodes[0].fd_slope_h == pytest.approx(1200.0)
    out = io.StringIO()
    render(s, Console(file=out, width=200))
    text = out.getvalue()
    assert "--seed 42" in text and NO_WHEEL in text and "1 violations" in text
    assert all(kind in text for kind in (*ACTIONS, *FAULTS))


def test_without_a_tag_or_wheel_the_upgrade_says_so(tmp_path: Path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "CHANGELOG.md").write_text("# Changelog\n\n## 0.2.0 (unreleased)\n\n## 0.1.0 (2026-11-29)\n")
    note = previous_release_note(tmp_path)
    assert note.startswith(NO_WHEEL) and "git tags: none" in note and "0.1.0" in note


def test_a_node_tagging_one_image_over_and_over_is_a_loop():
    from mesh.lab.soak_invariants import RETAG_BOUND, retags

    assert retags(sample(), {(A, "soak/b1:1"): RETAG_BOUND}) == []
    found = retags(sample(), {(A, "soak/b1:1"): 122})
    assert [v.invariant for v in found] == ["retags"] and "122 times" in found[0].detail


def test_an_older_commit_stands_in_for_the_previous_release(tmp_path: Path):
    from mesh.lab.soak import prepare_previous

    repo = tmp_path / "repo"
    (repo / "mesh").mkdir(parents=True)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "mesh" / "__init__.py").write_text("RELEASE = 'old'\n")
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "old"], check=True)
    (repo / "mesh" / "__init__.py").write_text("RELEASE = 'new'\n")
    subprocess.run([*git, "commit", "-qam", "new"], check=True)
    previous = prepare_previous("HEAD~1", tmp_path / "work", repo)
    assert previous.label.startswith("commit ") and (previous.code / "mesh" / "__init__.py").read_text() == (
        "RELEASE = 'old'\n"
    )
    with pytest.raises(subprocess.CalledProcessError):
        prepare_previous("no-such-rev", tmp_path / "work2", repo)

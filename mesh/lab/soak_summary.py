"""The soak's summary: its figures as rows (pure), and those rows as rich tables.

Per node the figures are of its longest-lived process (a restarted node starts a new run, whose
RSS begins again); peak RSS is the highest of all its runs, bytes the sum.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from mesh.lab.soak_invariants import BOUNDS, Violation, leaks, percentile, slope
from mesh.lab.soak_schedule import ACTIONS, FAULTS

INVARIANTS = ("healthz", "readyz", "tagged", "own", "attempts", "retags", "converged", "flat")


@dataclass(frozen=True)
class NodeRow:
    host: str
    runs: int
    peak_rss_mb: float
    rss_slope_mb_h: float
    fd_slope_h: float
    fds_last: int
    bytes_in: int


@dataclass(frozen=True)
class Summary:
    seed: int
    hosts: int
    duration: float
    elapsed: float
    kinds: list[str]
    injected: dict[str, int]
    failed_actions: dict[str, int]
    violations: list[Violation]
    convergence: dict[str, tuple[int, float, float, float]]  # kind -> n, p50, p99, max
    nodes: list[NodeRow]
    bytes_moved: int
    upgrade_note: str

    @property
    def ok(self) -> bool:
        return not self.violations


def summarise(
    *,
    seed: int,
    hosts: int,
    duration: float,
    elapsed: float,
    kinds: Sequence[str],
    injected: Mapping[str, int],
    failed_actions: Mapping[str, int],
    violations: Sequence[Violation],
    convergence: Mapping[str, Sequence[float]],
    runs: Mapping[str, tuple[str, Sequence[tuple[float, int, int]], int, int]],
    upgrade_note: str,
) -> Summary:
    """`runs`: run name -> (host, its (t, rss, fds) points, peak RSS, bytes it brought in). The
    flat invariant is judged here, per run, and its violations join the others."""
    found = list(violations)
    by_host: dict[str, list[tuple[str, Sequence[tuple[float, int, int]], int, int]]] = {}
    for run, (host, points, peak, moved) in sorted(runs.items()):
        by_host.setdefault(host, []).append((run, points, peak, moved))
        found += leaks(run, points)
    nodes = []
    for host, host_runs in sorted(by_host.items(), key=lambda kv: _host_order(kv[0])):
        longest = max(host_runs, key=lambda r: (r[1][-1][0] - r[1][0][0]) if r[1] else -1.0)
        points = longest[1]
        nodes.append(
            NodeRow(
                host,
                len(host_runs),
                max(r[2] for r in host_runs) / 2**20,
                slope([(t, rss) for t, rss, _ in points]) * 3600 / 2**20,
                slope([(t, fds) for t, _, fds in points]) * 3600,
                points[-1][2] if points else 0,
                sum(r[3] for r in host_runs),
            )
        )
    times = {
        kind: (len(v), percentile(v, 50), percentile(v, 99), max(v))
        for kind, v in sorted(convergence.items())
        if v
    }
    return Summary(
        seed,
        hosts,
        duration,
        elapsed,
        list(kinds),
        dict(injected),
        dict(failed_actions),
        sorted(found, key=lambda v: v.t),
        times,
        nodes,
        sum(n.bytes_in for n in nodes),
        upgrade_note,
    )


def _host_order(name: str) -> tuple[int, int]:
    index, _, gen = name[1:].partition("g")
    return int(index) if index.isdigit() else 0, int(gen) if gen.isdigit() else 0


def render(s: Summary, console: Console) -> None:
    console.print(
        f"seed {s.seed}, {s.hosts} hosts ({', '.join(s.kinds)}), schedule {s.duration:g}s, "
        f"ran {s.elapsed:.0f}s; replay: scripts/soak --seed {s.seed} --hosts {s.hosts} "
        f"--duration {s.duration:g}s --kinds {','.join(s.kinds)}"
    )
    console.print(s.upgrade_note)

    events = Table(title="events injected")
    for col in ("kind", "injected", "failed to inject", "converged n", "p50 s", "p99 s", "max s", "bound s"):
        events.add_column(col, justify="right" if col != "kind" else "left")
    for kind in (*ACTIONS, *FAULTS):
        count, p50, p99, top = s.convergence.get(kind, (0, float("nan"), float("nan"), float("nan")))
        events.add_row(
            kind,
            str(s.injected.get(kind, 0)),
            str(s.failed_actions.get(kind, 0)),
            str(count),
            f"{p50:.1f}",
            f"{p99:.1f}",
            f"{top:.1f}",
            f"{BOUNDS[kind]:g}",
        )
    console.print(events)

    nodes = Table(title=f"nodes (bytes moved between peers: {s.bytes_moved / 2**20:.0f} MB)")
    for col in ("host", "runs", "peak RSS MB", "RSS slope MB/h", "fds", "fd slope /h", "MB in"):
        nodes.add_column(col, justify="right" if col != "host" else "left")
    for row in s.nodes:
        nodes.add_row(
            row.host,
            str(row.runs),
            f"{row.peak_rss_mb:.0f}",
            f"{row.rss_slope_mb_h:+.1f}",
            str(row.fds_last),
            f"{row.fd_slope_h:+.1f}",
            f"{row.bytes_in / 2**20:.0f}",
        )
    console.print(nodes)

    counts = Table(title="invariant violations (must be zero)")
    counts.add_column("invariant")
    counts.add_column("violations", justify="right")
    for name in INVARIANTS:
        counts.add_row(name, str(sum(1 for v in s.violations if v.invariant == name)))
    console.print(counts)
    for v in s.violations[:40]:
        console.print(f"  {v}", markup=False)
    console.print("[green]no violations[/]" if s.ok else f"[red]{len(s.violations)} violations[/]")

"""`scripts/soak`: a fleet of namespaced hosts through a seeded schedule of builds, pushes and
faults, with the invariants watched all along (docs/testing.md#soak). Exits 1 on any violation.

    sudo scripts/soak [--hosts 10] [--duration 10m] [--seed S] [--kinds 20.10,28.5-overlay2,...]

The seed is printed first and last: the same seed, hosts and duration replay the same schedule.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from rich.console import Console

from mesh.lab.dockerd import available
from mesh.lab.engines import KINDS
from mesh.lab.soak import Outcome, Soak, prepare_previous
from mesh.lab.soak_schedule import make_plan
from mesh.lab.soak_summary import Summary, render, summarise
from mesh.values import parse_duration

DEFAULT_KINDS = "20.10,28.5-overlay2,28.5-containerd"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=10, help="hosts in the fleet (default 10)")
    parser.add_argument(
        "--duration", type=parse_duration, default=600.0, help="schedule length (default 10m)"
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="the schedule's seed (default: random, printed)"
    )
    parser.add_argument(
        "--kinds",
        default=DEFAULT_KINDS,
        help=f"engine kinds, one per host in turn (default {DEFAULT_KINDS}; any of {', '.join(KINDS)})",
    )
    parser.add_argument(
        "--budget", type=int, default=32, help="the small --disk-budget of every third node, MB"
    )
    parser.add_argument("--poll", type=parse_duration, default=4.0, help="how often every node is looked at")
    parser.add_argument(
        "--mbit", type=int, default=100, help="each host's link, Mbit/s each way (0: unshaped)"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="where logs go (default: a new temp dir)")
    parser.add_argument(
        "--previous",
        default=None,
        metavar="WHEEL|REV",
        help="the release half the fleet runs until the first rolling upgrade: a cachemesh wheel, "
        "or a git revision of this repository (default: none; the upgrade restarts on this commit)",
    )
    args = parser.parse_args(argv)
    unknown = [k for k in args.kinds.split(",") if k not in KINDS]
    if unknown:
        parser.error(f"unknown engine kinds {unknown}: any of {', '.join(KINDS)}")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1, 1 << 31)
    return args


def summary_of(outcome: Outcome) -> Summary:
    return summarise(
        seed=outcome.plan.seed,
        hosts=outcome.plan.hosts,
        duration=outcome.plan.duration,
        elapsed=outcome.elapsed,
        kinds=outcome.kinds,
        injected=outcome.injected,
        failed_actions=outcome.failed_actions,
        violations=outcome.violations,
        convergence=outcome.convergence,
        runs={r: (f.host, f.points, f.peak_rss, f.bytes_in) for r, f in outcome.runs.items()},
        upgrade_note=outcome.upgrade_note,
    )


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # run's cleanup takes every host down


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 150)
    why_not = available()
    if why_not:
        console.print(f"soak: {why_not}")
        return 2
    kinds = [KINDS[k] for k in args.kinds.split(",")]
    missing = [k.missing() for k in kinds if k.missing()]
    if missing:
        console.print(f"soak: {missing[0]}")
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cachemesh-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    plan = make_plan(args.seed, args.hosts, args.duration)
    console.print(
        f"seed {args.seed}: {len(plan.events)} events over {args.duration:g}s on {args.hosts} hosts; "
        f"logs in {workdir}"
    )

    def log(line: str) -> None:
        console.print(f"{time.strftime('%H:%M:%S')} {line}", markup=False, highlight=False)

    signal.signal(signal.SIGTERM, _interrupted)
    previous = prepare_previous(args.previous, workdir) if args.previous else None
    soak = Soak(
        workdir,
        plan,
        kinds,
        budget_mb=args.budget,
        poll_every=args.poll,
        mbit=args.mbit,
        previous=previous,
        log=log,
    )
    outcome = soak.run()
    summary = summary_of(outcome)
    render(summary, console)
    console.print(f"seed {args.seed}")
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())

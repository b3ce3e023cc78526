#!/usr/bin/env python3
"""Run N cachemesh cores (the real protocol code) over a simulated network and measure the mesh.

    python scripts/simulate.py --nodes 1000 --loss 0.05 --minutes 10 --seed 1 --json

A human-readable summary goes to stderr; with --json the last line of stdout is one JSON object
with nodes, rounds_to_converge_p99, seconds_to_detect_failure_max, false_dead,
bytes_per_node_per_second_p99 and seconds_to_converge_after_heal. See mesh/sim/scenario.py for the
timeline. Bytes are what a real node would put on the wire: each envelope as a signed HTTP request and
its signed response, with the HTTP overhead measured from the real client and server (mesh/sim/wirecost.py).
False deaths are counted over the whole run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mesh.config import Config
from mesh.sim.scenario import FleetScenario

TARGETS = {
    "rounds_to_converge_p99": 12,
    "seconds_to_detect_failure_max": 30,
    "false_dead": 0,
    "bytes_per_node_per_second_p99": 10_240,
    "seconds_to_converge_after_heal": 30,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--loss", type=float, default=0.05, help="probability each message is lost")
    parser.add_argument("--minutes", type=float, default=10.0, help="simulated minutes (>= 2)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument(
        "--breakdown", action="store_true", help="split steady-state bytes by message type (busiest 1%%)"
    )
    args = parser.parse_args()

    # A thousand cores hold millions of small objects and make almost no reference cycles: the
    # cyclic collector's frequent full scans cost more than they free.
    gc.set_threshold(200_000, 20, 100)
    started = time.monotonic()
    scenario = FleetScenario(
        args.nodes,
        loss=args.loss,
        seed=args.seed,
        minutes=args.minutes,
        config=Config.lan(secret=b"simulated-cluster-secret"),
        breakdown=args.breakdown,
    )
    summary = scenario.run().summary()
    summary["wall_seconds"] = round(time.monotonic() - started, 1)

    print(
        f"cachemesh simulation: {args.nodes} nodes, {args.loss:.0%} loss, "
        f"{args.minutes:g} simulated minutes, seed {args.seed}, LAN config",
        file=sys.stderr,
    )
    for key, value in summary.items():
        target = TARGETS.get(key)
        verdict = ""
        if target is not None:
            ok = value is not None and value <= target
            verdict = f"  (target <= {target}: {'ok' if ok else 'MISSED'})"
        print(f"  {key:34} {value}{verdict}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip tearing down millions of objects one by one (about half a minute at 1,000 nodes)


if __name__ == "__main__":
    raise SystemExit(main())

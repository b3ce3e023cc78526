#!/usr/bin/env python3
"""What TLS adds to gossip bytes at N simulated nodes: the simulator's steady phase, priced twice.

Runs the simulator's join, announce and steady phases (mesh.sim.scenario, as scripts/simulate.py
does) and prices every envelope that travels over the peer API (too big for a sealed datagram, or
a reply in an HTTP response) with mesh.sim.tls_wirecost.TLSWireCost on top of the simulator's own count
(HTTP framing and datagram sealing included): a request costs one TLS record for the sender and
one for the receiver's response, plus a full mutual handshake from each side when the sender has
not dialled that peer within the keep-alive; an envelope sent as an HTTP response costs one
record. Prints the p99 and p50 of bytes sent per node per second without and with TLS, for a few
keep-alives.

    python scripts/tls_gossip_cost.py --nodes 1000        # about 5 minutes, several GB of memory

The simulator does not count TLS itself (docs/testing.md); this wraps its send from outside.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mesh.protocol import wire
from mesh.protocol.datagram import fits as datagram_fits
from mesh.protocol.timings import Timings
from mesh.sim import simnet
from mesh.sim.scenario import FleetScenario, _pct
from mesh.sim.tls_wirecost import TLSWireCost, tls_overhead


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--loss", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keepalive", type=float, nargs="*", default=[30.0, 120.0, 600.0])
    args = parser.parse_args()

    sends: list[tuple[float, str, str, int, bool]] = []  # (time, src, dst, body bytes, as a response)
    original = simnet.SimNetwork._send

    def send(self: simnet.SimNetwork, node: simnet.SimNode, out: object, as_reply: bool = False) -> None:
        body = len(wire.encode(out.envelope)) if self.count_bytes else 0  # type: ignore[attr-defined]
        sends.append((self.now, node.addr, out.addr, body, as_reply))  # type: ignore[attr-defined]
        original(self, node, out, as_reply)  # type: ignore[arg-type]

    simnet.SimNetwork._send = send  # type: ignore[method-assign,assignment]
    gc.set_threshold(200_000, 20, 100)
    scenario = FleetScenario(args.nodes, loss=args.loss, seed=args.seed, minutes=10, timings=Timings.lan())
    scenario.net.on_deliver = None
    scenario._join_phase()
    scenario._announce_phase()
    scenario._steady_phase()
    start, end = scenario.t(90), scenario.t(150)
    first, last = math.ceil(start), math.floor(end)
    per_second = scenario.net.traffic.per_second
    addrs = list(scenario.net.nodes)
    base = [per_second.get((a, s), 0) for a in addrs for s in range(first, last)]
    result: dict[str, object] = {
        "nodes": args.nodes,
        "without_tls": {"p99": _pct(base, 99), "p50": _pct(base, 50)},
    }
    for keepalive in args.keepalive:
        cost = TLSWireCost(keepalive)
        extra: dict[tuple[str, int], int] = defaultdict(int)
        before = None
        for at, src, dst, body, as_reply in sends:
            if before is None and at >= start:
                before = cost.handshakes
            if not as_reply and datagram_fits(body):
                continue  # a sealed datagram: the simulator's count is all it costs
            if as_reply:
                to_src, to_dst = tls_overhead(body), 0
            else:
                to_src, to_dst = cost.request(src, dst, body, at)
            if first <= at < last:
                extra[(src, int(at))] += to_src
                extra[(dst, int(at))] += to_dst
        samples = [
            per_second.get((a, s), 0) + extra.get((a, s), 0) for a in addrs for s in range(first, last)
        ]
        result[f"keepalive_{keepalive:g}s"] = {
            "p99": _pct(samples, 99),
            "p50": _pct(samples, 50),
            "handshakes_per_node_per_second": round(
                (cost.handshakes - (before or 0)) / (end - start) / args.nodes, 2
            ),
        }
    print(json.dumps(result))
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""A burst of new hosts: the time for an image to reach 4 receivers against the time to reach 1,
in the same run, on the same hosts.

One source and N receivers, each a network namespace with a private dockerd and a link shaped to
--mbit Mbit/s each way (tc), run as an operator would (LAN preset, TLS on). What the receivers
hold first is --held:
  base (the default, what an autoscaler's new hosts meet): every host imported the same small
       base (--base-mb), and the image is that base plus an --mb MB layer built on the source;
  mixed: the same image; receivers hold, in turn, nothing, the base, an older build on the base,
       the base;
  nothing: a one-layer image of --mb MB that no receiver holds any of (the old case).
--registry: the same burst through the registry path instead, as `docker pull` through each
host's own node at the same moment (BuildKit cache imports take the same path). The source pushes
the base and the image to its node; receivers that hold the base pulled it once before, through
their own node. Each way is timed from the moment every receiver's node knows the tag to the end
of the last pull, and the source's bytes sent are printed as copies of the layer.
The image is made on the source under a tag the mesh does not share; each way is timed from the
moment the source tags it `burst:1` to the moment the last receiver's engine shows `burst:1`:
  one:   the source and one receiver run nodes;
  burst: the source and all N receivers run nodes.
Before each way every node is stopped, the image leaves the receivers and the tag the source, and
fresh node processes start (so no node remembers the removal as an eviction). The order alternates
by round. Prints the median time of each way, their ratio (the target: 4 receivers in at most 1.5x
the time of 1; a star is about 4x), and which source each receiver pulled from. The one-receiver
way uses a receiver that holds the base (in every mode but `nothing`): the ratio is against the
common case, not the hardest one.

    sudo .venv/bin/python scripts/bench_fanout.py [--held base|mixed|nothing] [--mb 64] \\
        [--base-mb 8] [--receivers 4] [--mbit 200] [--engine 28.5-overlay2] [--rounds 1] \\
        [--registry]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mesh.lab.arrival import Arrival
from mesh.lab.dockerd import Dockerd, available
from mesh.lab.engines import KINDS
from mesh.lab.fanout import HELD_SETS, TAG, BurstLab
from mesh.lab.netns import Network
from mesh.lab.poll import wait_until


def held_sets(mode: str, receivers: list[str]) -> dict[str, str]:
    if mode == "mixed":
        pattern = ("nothing", "base", "older", "base")
        return {r: pattern[i % len(pattern)] for i, r in enumerate(receivers)}
    return dict.fromkeys(receivers, mode)


def run_once(
    lab: BurstLab, receivers: list[str], held: dict[str, str], timeout: float
) -> tuple[float, dict[str, list]]:
    for name in receivers:
        lab.hold(name, held[name])
    names = [lab.source, *receivers]
    for name in names:
        lab.start(name)
    lab.wait_joined(names)
    # Watching by events costs the burst way no more than the one-receiver way (mesh.lab.arrival).
    arrivals = {r: Arrival(lab.hosts[r].engine.host, TAG) for r in receivers}
    started = lab.burst()
    try:
        arrived = {name: arrival.wait(started, timeout) for name, arrival in arrivals.items()}
    finally:
        for arrival in arrivals.values():
            arrival.close()
    # The engine shows the tag a moment before the node logs the pull it came from.
    wait_until(lambda: all(lab.sources_used(r) for r in receivers), 10, 0.1, what="every pull logged")
    used = {r: lab.sources_used(r) for r in receivers}
    for name in names:
        lab.stop(name)
    lab.reset(receivers)
    return max(arrived.values()), used


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--held", choices=[*HELD_SETS[:2], "mixed"], default="base")
    parser.add_argument("--mb", type=int, default=64, help="the layer the burst carries (MB)")
    parser.add_argument("--base-mb", type=int, default=8, help="the base every host holds (MB)")
    parser.add_argument("--receivers", type=int, default=4)
    parser.add_argument("--mbit", type=int, default=200)
    parser.add_argument("--engine", choices=sorted(KINDS), default="28.5-overlay2")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--registry", action="store_true", help="pull through each host's node")
    args = parser.parse_args()
    if args.registry and args.held == "nothing":
        parser.error("--registry needs a base to build on: --held base or mixed")
    reason = available()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    kind = KINDS[args.engine]
    network = Network()
    engines: list[Dockerd] = []
    with tempfile.TemporaryDirectory(prefix="cachemesh-fanout-") as tmp:
        workdir = Path(tmp)

        def make_engine(name: str, netns: str, k=kind) -> Dockerd:  # type: ignore[no-untyped-def]
            engine = Dockerd(workdir / f"engine-{name}", netns=netns, name=name, kind=k).start()
            engines.append(engine)
            return engine

        lab = BurstLab(network, make_engine, workdir, kind, mbit=args.mbit)
        try:
            lab.add("src")
            receivers = [lab.add(f"r{i}").name for i in range(1, args.receivers + 1)]
            if args.held == "nothing":
                lab.make_image(args.mb)
            else:
                lab.make_layered(args.base_mb, args.mb)
            held = held_sets(args.held, receivers)
            if args.registry:
                lab.prepare_registry(receivers, held)
            single = next((r for r in receivers if held[r] == "base"), receivers[0])
            one: list[float] = []
            burst: list[float] = []
            timeout = 20 + args.mb * 8 / args.mbit * (args.receivers + 2) * 3
            for round_ in range(args.rounds):
                ways = [("one", [single]), ("burst", receivers)]
                for way, names in ways if round_ % 2 == 0 else ways[::-1]:
                    if args.registry:
                        elapsed, copies = lab.registry_burst(names, held, args.mb << 20)
                        (one if way == "one" else burst).append(elapsed)
                        said = f"the source sent {copies:.2f} copies of the layer"
                        print(f"round {round_ + 1} {way}: {elapsed:.2f}s  [{said}]", flush=True)
                        continue
                    elapsed, used = run_once(lab, names, held, timeout)
                    (one if way == "one" else burst).append(elapsed)
                    tree = ", ".join(
                        f"{r}[{held[r]}]<-{src}{' (relay)' if relay else ''}"
                        for r, pulls in used.items()
                        for src, relay in pulls
                    )
                    print(f"round {round_ + 1} {way}: {elapsed:.2f}s  [{tree}]", flush=True)
        except Exception:
            print(lab.logs(), file=sys.stderr)
            raise
        finally:
            for h in lab.hosts.values():
                if h.node is not None:
                    h.node.stop()
            for engine in engines:
                engine.destroy()
            network.destroy()
    t1, tn = statistics.median(one), statistics.median(burst)
    print(
        f"{'registry path, ' if args.registry else ''}"
        f"held {args.held}: {args.mb} MB to carry, {args.mbit} Mbit/s links, engine {kind.name}: "
        f"1 receiver {t1:.2f}s, {args.receivers} receivers {tn:.2f}s, ratio {tn / t1:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

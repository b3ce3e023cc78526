#!/usr/bin/env python3
"""`docker pull` through the mesh against the reference registry, in the same run.

Two private dockerds on this machine (root needed) and Debian's `docker-registry` (the reference
implementation, distribution 2.8). An image of --mb megabytes of random data is built on engine A
and pushed twice: to the reference registry, and to node A's registry endpoint. Each round, on
engine B, with B's images removed before each pull:
  reference: `docker pull 127.0.0.1:R/bench:1` from the reference registry;
  mesh:      `docker pull 127.0.0.1:NB/bench:1` from node B, a fresh node that holds nothing, so
             every blob is fetched from node A as B's engine asks for it.
The order of the ways turns between rounds. Neither node shares images by `docker save`
(CACHEMESH_EXCLUDE=*), so only the registry path moves bytes. With --tls-off-too, a third way
pulls through a node B whose source is a second node A, both with TLS off (`--tls off
--insecure`): what encryption between the nodes costs, measured in the same sitting.
Free page reporting is paused for the run (mesh.lab.memory; --keep-page-reporting leaves it on).
Prints the median of each, their ratio (mesh / reference), and node B's peak RSS. Each pull also
prints the CPU-seconds of each process (an engine's with its containerd) and of the whole machine:
the mesh way does more work (a second hop, TLS both ends, a digest check and a store on B), and
the least time that work needs on this machine's cores bounds how close the ratio can come to 1.

    sudo .venv/bin/python scripts/bench_registry.py --mb 500 --rounds 3 [--engine KIND] [--tls-off-too]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mesh.lab import memory
from mesh.lab.dockerd import Dockerd, available, import_base
from mesh.lab.engines import DEFAULT, KINDS
from mesh.lab.nodes import NodeProcess, free_ports
from mesh.lab.poll import wait_until
from mesh.lab.procstat import cpu_seconds, machine_cpu, peak_rss_mb

CORES = os.cpu_count() or 1


def reference_registry(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    config = workdir / "registry.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {workdir / 'registry-data'}\nhttp:\n  addr: 127.0.0.1:{port}\n"
    )
    log = open(workdir / "registry.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    wait_until(lambda: _answers(port), 30, 0.1, what="docker-registry answering")
    return proc


@dataclass
class Pull:
    seconds: float
    busy: float  # CPU-seconds the whole machine spent
    report: str  # each process's CPU-seconds, and the machine's


def cpu_report(pids: dict[str, int], before: dict[str, float], busy: float, elapsed: float) -> str:
    """Each process's CPU time over the pull (an engine's includes its containerd), then the whole
    machine's: how much of what its cores could have done they did."""
    after = cpu_seconds(pids)
    each = ", ".join(f"{name} {after[name] - before[name]:.2f}s" for name in pids)
    return f"{each}; machine busy {busy:.2f} of {CORES * elapsed:.2f} CPU-s ({busy / (CORES * elapsed):.0%})"


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def clear(engine: Dockerd) -> None:
    ids = engine.cli("images", "-a", "-q").stdout.split()
    if ids:
        engine.cli("rmi", "-f", *set(ids), check=False)


def timed_pull(engine: Dockerd, ref: str, pids: dict[str, int]) -> Pull:
    """`docker pull ref` on an engine that holds no image: how long, and what it cost in CPU."""
    clear(engine)
    before, machine = cpu_seconds(pids), machine_cpu()
    started = time.monotonic()
    engine.cli("pull", "-q", ref, timeout=1800)
    elapsed = time.monotonic() - started
    busy = (machine_cpu() - machine).busy
    return Pull(elapsed, busy, cpu_report(pids, before, busy, elapsed))


def knows(node: NodeProcess) -> bool:
    return any(r["name"] == "bench" for r in node.api()["registry"]["repositories"])


def reference_round(b: Dockerd, pid_registry: int, port: int) -> Pull:
    pull = timed_pull(
        b, f"127.0.0.1:{port}/bench:1", {"docker-registry": pid_registry, "engine B": b.proc.pid}
    )
    print("  reference pull CPU: " + pull.report, flush=True)
    return pull


# Between the nodes: the default (TLS from the cluster secret), or none at all.
TLS_OFF = {"CACHEMESH_TLS": "off", "CACHEMESH_INSECURE": "true"}


@dataclass
class BenchNode:
    node: NodeProcess
    peer_port: int
    registry_port: int

    @property
    def pid(self) -> int:
        assert self.node.proc is not None, "started by wait_up"
        return self.node.proc.pid


def start_node(name: str, workdir: Path, engine: Dockerd, *, tls: bool, seed: int | None = None) -> BenchNode:
    """A node of this bench, with its registry on a port of its own and no image sharing by
    docker save (CACHEMESH_EXCLUDE=*): only the registry path moves bytes."""
    peer, registry, status = free_ports(3)
    env = {
        "CACHEMESH_DOCKER_HOST": engine.host,
        "CACHEMESH_LISTEN": f"127.0.0.1:{peer}",
        "CACHEMESH_REGISTRY_LISTEN": f"127.0.0.1:{registry}",
        "CACHEMESH_EXCLUDE": "*",
        "CACHEMESH_LOG_LEVEL": "warning",
        **({} if tls else TLS_OFF),
        **({"CACHEMESH_SEEDS": f"127.0.0.1:{seed}"} if seed else {}),
    }
    node = NodeProcess(name, workdir, env=env, status=f"127.0.0.1:{status}").wait_up()
    return BenchNode(node, peer, registry)


def mesh_round(b: Dockerd, workdir: Path, source: BenchNode, name: str, *, tls: bool) -> tuple[Pull, float]:
    """A pull through a fresh node B, which holds nothing: every blob is fetched from `source`
    (node A). Returns the pull and B's peak RSS in MB."""
    node_b = start_node(name, workdir, b, tls=tls, seed=source.peer_port)
    try:
        wait_until(lambda: knows(node_b.node), 30, 0.1, what="node B knows bench:1")
        pids = {"node A": source.pid, "node B": node_b.pid, "engine B": b.proc.pid}
        pull = timed_pull(b, f"127.0.0.1:{node_b.registry_port}/bench:1", pids)
        print(f"  mesh pull{'' if tls else ' (TLS off)'} CPU: " + pull.report, flush=True)
        return pull, peak_rss_mb(node_b.pid)
    finally:
        node_b.node.stop()
        # A fresh node B every round: its store goes, and the memory it took is free for the next.
        shutil.rmtree(node_b.node.data_dir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=500, help="image size in MB of random data")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--keep-page-reporting",
        action="store_true",
        help="leave the VM's free page reporting on (node B then stores into memory the host took back)",
    )
    parser.add_argument(
        "--engine", choices=list(KINDS), default=DEFAULT.name, help="engine and image store of both hosts"
    )
    parser.add_argument(
        "--tls-off-too",
        action="store_true",
        help="also pull through nodes with TLS off between them: what encryption costs, in the same sitting",
    )
    args = parser.parse_args()
    if reason := available():
        print(f"bench: {reason}", file=sys.stderr)
        return 2
    if not shutil.which("docker-registry"):
        print("bench: docker-registry not installed (apt-get install docker-registry)", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="cachemesh-bench-registry-"))
    kind = KINDS[args.engine]
    a = Dockerd(workdir / "a", name="a", kind=kind).start()
    b = Dockerd(workdir / "b", name="b", kind=kind).start()
    (ref_port,) = free_ports(1)
    reference = reference_registry(workdir, ref_port)
    sources = {"mesh": start_node("bench-a", workdir, a, tls=True)}
    try:
        if args.tls_off_too:
            sources["mesh, TLS off"] = start_node("bench-a-plain", workdir, a, tls=False)
        import_base(a, "base:1")
        layers = 4
        per_layer = max(1, args.mb // layers)
        dockerfile = "FROM base:1\n" + "".join(
            f"RUN dd if=/dev/urandom of=/data{i} bs=1M count={per_layer} 2>/dev/null\n" for i in range(layers)
        )
        a.cli("build", "--network", "none", "-t", "bench:1", "-", input=dockerfile.encode(), timeout=1800)
        size = int(a.cli("image", "inspect", "--format", "{{.Size}}", "bench:1").stdout) / 1e6
        for port in (ref_port, *(source.registry_port for source in sources.values())):
            a.cli("tag", "bench:1", f"127.0.0.1:{port}/bench:1")
            started = time.monotonic()
            a.cli("push", f"127.0.0.1:{port}/bench:1", timeout=1800)
            print(f"pushed to 127.0.0.1:{port} in {time.monotonic() - started:.1f}s", flush=True)
        print(f"engine {kind.name}: image bench:1, {size:.0f} MB in {layers + 1} layers", flush=True)
        ways = ["reference", *sources]
        pulls: dict[str, list[Pull]] = {way: [] for way in ways}
        rss: list[float] = []
        with ExitStack() as stack:
            if args.keep_page_reporting:
                print("free page reporting left as it is (--keep-page-reporting)", flush=True)
            else:
                print(stack.enter_context(memory.reporting_paused()), flush=True)
            # Node B stores what it passes on, the reference serves what it holds: new memory must not
            # cost the mesh way a host's page faults that the reference way never meets (see
            # mesh.lab.memory; in one sitting on the containerd store, 3.68 s with it on, 2.50 s off).
            memory.touch(workdir, memory.usable(6 * args.mb * 1_000_000))
            for round_no in range(args.rounds):
                # The order turns between rounds, so no way always finds a warmer machine.
                turn = round_no % len(ways)
                for way in ways[turn:] + ways[:turn]:
                    if way == "reference":
                        pulls[way].append(reference_round(b, reference.pid, ref_port))
                        continue
                    tls = way == "mesh"
                    pull, peak = mesh_round(b, workdir, sources[way], f"bench-b{len(rss)}", tls=tls)
                    pulls[way].append(pull)
                    rss.append(peak)
                print(
                    f"round {round_no + 1}: "
                    + ", ".join(f"{way} {pulls[way][-1].seconds:.2f}s" for way in ways)
                    + f", node B peak RSS {max(rss):.0f} MB",
                    flush=True,
                )
        seconds = {way: statistics.median(p.seconds for p in pulls[way]) for way in ways}
        busy = {way: statistics.median(p.busy for p in pulls[way]) for way in ways}
        r = seconds["reference"]
        print(
            f"reference docker-registry pull: {r:.2f}s ({size / r:.0f} MB/s), machine busy "
            f"{busy['reference']:.2f} CPU-s"
        )
        for way in sources:
            label = "mesh pull via node B:" if way == "mesh" else f"{way}:"
            print(
                f"{label:<31} {seconds[way]:.2f}s ({size / seconds[way]:.0f} MB/s), machine busy "
                f"{busy[way]:.2f} CPU-s, ratio {seconds[way] / r:.2f}"
            )
        m = seconds["mesh"]
        print(f"ratio mesh/reference: {m / r:.2f}")
        # A pull can go no faster than the machine's cores can do its work.
        least = busy["mesh"] / CORES
        print(f"least time the mesh pull's work needs on {CORES} cores: {least:.2f}s ({least / r:.2f}x)")
        print(
            f"node B peak RSS: {max(rss):.0f} MB; node A peak RSS: {peak_rss_mb(sources['mesh'].pid):.0f} MB"
        )
        return 0
    finally:
        for source in sources.values():
            source.node.stop()
        reference.terminate()
        reference.wait(timeout=10)
        a.destroy()
        b.destroy()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())

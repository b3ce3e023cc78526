#!/usr/bin/env python3
"""`docker pull` through the mesh against a central registry on another host, in the same run.

Two hosts, each a network namespace with its own private dockerd (root needed), and Debian's
`docker-registry` (the reference implementation, distribution 2.8) serving over TLS from host A,
as a fleet's central registry serves from a host of its own. An image of --mb megabytes of random
data is built on engine A and pushed twice: to the reference registry, and to node A's registry
endpoint. Each round, on engine B, with B's images removed before each pull:
  reference: `docker pull A:5000/bench:1` over TLS from the reference registry on host A
             (engine B trusts its certificate through /etc/docker/certs.d/A:5000/ca.crt);
  mesh:      `docker pull 127.0.0.1:7613/bench:1` from node B on B's own loopback, a fresh node
             that holds nothing, so every blob comes from node A over the mesh's TLS.
The order of the ways turns between rounds. Neither node shares images by `docker save`
(CACHEMESH_EXCLUDE=*), so only the registry path moves bytes. With --tls-off-too, a third way
pulls through a node B whose source is a second node A, both with TLS off (`--tls off
--insecure`): what encryption between the nodes costs, measured in the same sitting. The link
between the hosts is not shaped (--mbit shapes it): the figure is what the receiving host's CPU
allows.
Free page reporting is paused for the run (mesh.lab.memory; --keep-page-reporting leaves it on).
Prints the median of each way, their ratio (mesh / reference), node B's peak RSS, and the
receiving host's CPU-seconds per GB pulled for each way (engine B with its containerd, plus node B
on the mesh way): the price a build host pays for what it receives. Each pull also prints the
CPU-seconds of each process and of the whole machine (both hosts share its cores).

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
from mesh.lab.engines import KINDS
from mesh.lab.netns import Host, Network
from mesh.lab.nodes import NodeProcess
from mesh.lab.poll import wait_until
from mesh.lab.procstat import cpu_seconds, machine_cpu, peak_rss_mb

CORES = os.cpu_count() or 1
REFERENCE_PORT = 5000
CERTS_D = Path("/etc/docker/certs.d")


def self_signed(workdir: Path, address: str) -> tuple[Path, Path]:
    """A P-256 certificate for `address` that is its own CA, as a small fleet's registry has."""
    cert, key = workdir / "registry.crt", workdir / "registry.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", f"/CN={address}", "-addext", f"subjectAltName=IP:{address}",
         "-addext", "basicConstraints=critical,CA:TRUE", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def reference_registry(workdir: Path, host: Host) -> subprocess.Popen[bytes]:
    """docker-registry on host A, over TLS, trusted by every engine on this machine through
    certs.d (the file goes when the bench ends)."""
    cert, key = self_signed(workdir, host.address)
    trust = CERTS_D / f"{host.address}:{REFERENCE_PORT}"
    trust.mkdir(parents=True, exist_ok=True)
    shutil.copy(cert, trust / "ca.crt")
    config = workdir / "registry.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {workdir / 'registry-data'}\n"
        f"http:\n  addr: {host.address}:{REFERENCE_PORT}\n  tls:\n    certificate: {cert}\n    key: {key}\n"
    )
    log = open(workdir / "registry.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [*host.nsenter(), "docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    wait_until(lambda: _answers(host.address, REFERENCE_PORT), 30, 0.1, what="docker-registry answering")
    return proc


@dataclass
class Pull:
    seconds: float
    busy: float  # CPU-seconds the whole machine spent
    receiver: float  # CPU-seconds the receiving host spent: engine B, and node B on the mesh way
    report: str  # each process's CPU-seconds, and the machine's


def _answers(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False


def clear(engine: Dockerd) -> None:
    ids = engine.cli("images", "-a", "-q").stdout.split()
    if ids:
        engine.cli("rmi", "-f", *set(ids), check=False)
    engine.cli("image", "prune", "-a", "-f", check=False)


def timed_pull(engine: Dockerd, ref: str, pids: dict[str, int], receiving: tuple[str, ...]) -> Pull:
    """`docker pull ref` on an engine that holds no image: how long, and what it cost in CPU
    (each process's, the receiving host's named in `receiving`, and the machine's)."""
    clear(engine)
    before, machine = cpu_seconds(pids), machine_cpu()
    started = time.monotonic()
    engine.cli("pull", "-q", ref, timeout=1800)
    elapsed = time.monotonic() - started
    busy = (machine_cpu() - machine).busy
    after = cpu_seconds(pids)
    spent = {name: after[name] - before[name] for name in pids}
    each = ", ".join(f"{name} {cpu:.2f}s" for name, cpu in spent.items())
    report = (
        f"{each}; machine busy {busy:.2f} of {CORES * elapsed:.2f} CPU-s ({busy / (CORES * elapsed):.0%})"
    )
    return Pull(elapsed, busy, sum(spent[name] for name in receiving), report)


def engine_pid(engine: Dockerd) -> int:
    assert engine.proc is not None, "started"
    return engine.proc.pid


def knows(node: NodeProcess) -> bool:
    return any(r["name"] == "bench" for r in node.api()["registry"]["repositories"])


# Between the nodes: the default (TLS from the cluster secret), or none at all.
TLS_OFF = {"CACHEMESH_TLS": "off", "CACHEMESH_INSECURE": "true"}


@dataclass
class BenchNode:
    node: NodeProcess
    host: Host
    peer_port: int

    @property
    def pid(self) -> int:
        assert self.node.proc is not None, "started by wait_up"
        return self.node.proc.pid

    @property
    def seed(self) -> str:
        return f"{self.host.address}:{self.peer_port}"


def start_node(
    name: str, workdir: Path, host: Host, engine: Dockerd, *, tls: bool, port: int, seed: str | None = None
) -> BenchNode:
    """A node of this bench on `host`, its registry on that host's 127.0.0.1:7613, with no image
    sharing by docker save (CACHEMESH_EXCLUDE=*): only the registry path moves bytes."""
    status = f"{host.address}:{port + 1}"
    env = {
        "CACHEMESH_DOCKER_HOST": engine.host,
        "CACHEMESH_LISTEN": f"0.0.0.0:{port}",
        "CACHEMESH_REGISTRY_LISTEN": f"127.0.0.1:{port + 2}",
        "CACHEMESH_STATUS_LISTEN": status,
        "CACHEMESH_PRESET": "lan",
        "CACHEMESH_EXCLUDE": "*",
        "CACHEMESH_LOG_LEVEL": "warning",
        **({} if tls else TLS_OFF),
        **({"CACHEMESH_SEEDS": seed} if seed else {}),
    }
    node = NodeProcess(name, workdir, env=env, prefix=host.nsenter(), status=status).wait_up()
    return BenchNode(node, host, port)


def mesh_round(
    b: Dockerd, host_b: Host, workdir: Path, source: BenchNode, name: str, *, tls: bool
) -> tuple[Pull, float]:
    """A pull through a fresh node B, which holds nothing: every blob is fetched from `source`
    (node A). Returns the pull and B's peak RSS in MB."""
    node_b = start_node(name, workdir, host_b, b, tls=tls, port=7611, seed=source.seed)
    try:
        wait_until(lambda: knows(node_b.node), 30, 0.1, what="node B knows bench:1")
        pids = {"node A": source.pid, "node B": node_b.pid, "engine B": engine_pid(b)}
        pull = timed_pull(b, "127.0.0.1:7613/bench:1", pids, ("node B", "engine B"))
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
    parser.add_argument("--mbit", type=int, default=0, help="shape each host's link (0: not shaped)")
    parser.add_argument(
        "--keep-page-reporting",
        action="store_true",
        help="leave the VM's free page reporting on (node B then stores into memory the host took back)",
    )
    parser.add_argument(
        "--engine",
        choices=list(KINDS),
        default="28.5-containerd",
        help="engine and image store of both hosts",
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
    network = Network()
    engines: list[Dockerd] = []
    sources: dict[str, BenchNode] = {}
    reference: subprocess.Popen[bytes] | None = None
    try:
        host_a, host_b = network.add_host("a"), network.add_host("b")
        if args.mbit:
            for host in (host_a, host_b):
                network.limit(host, args.mbit)
        a = Dockerd(workdir / "a", host_a.netns, name="a", kind=kind).start()
        engines.append(a)
        b = Dockerd(workdir / "b", host_b.netns, name="b", kind=kind).start()
        engines.append(b)
        reference = reference_registry(workdir, host_a)
        sources["mesh"] = start_node("bench-a", workdir, host_a, a, tls=True, port=7611)
        if args.tls_off_too:
            sources["mesh, TLS off"] = start_node("bench-a-plain", workdir, host_a, a, tls=False, port=7621)
        import_base(a, "base:1")
        layers = 4
        per_layer = max(1, args.mb // layers)
        dockerfile = "FROM base:1\n" + "".join(
            f"RUN dd if=/dev/urandom of=/data{i} bs=1M count={per_layer} 2>/dev/null\n" for i in range(layers)
        )
        a.cli("build", "--network", "none", "-t", "bench:1", "-", input=dockerfile.encode(), timeout=1800)
        size = int(a.cli("image", "inspect", "--format", "{{.Size}}", "bench:1").stdout) / 1e6
        reference_ref = f"{host_a.address}:{REFERENCE_PORT}/bench:1"
        targets = [reference_ref, *(f"127.0.0.1:{s.peer_port + 2}/bench:1" for s in sources.values())]
        for ref in targets:
            a.cli("tag", "bench:1", ref)
            started = time.monotonic()
            a.cli("push", ref, timeout=1800)
            print(f"pushed to {ref} in {time.monotonic() - started:.1f}s", flush=True)
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
                        pids = {"docker-registry": reference.pid, "engine B": engine_pid(b)}
                        pull = timed_pull(b, reference_ref, pids, ("engine B",))
                        print("  reference pull CPU: " + pull.report, flush=True)
                        pulls[way].append(pull)
                        continue
                    tls = way == "mesh"
                    pull, peak = mesh_round(b, host_b, workdir, sources[way], f"bench-b{len(rss)}", tls=tls)
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
        per_gb = {way: statistics.median(p.receiver for p in pulls[way]) / (size / 1000) for way in ways}
        r = seconds["reference"]
        print(
            f"reference docker-registry pull (TLS, host A): {r:.2f}s ({size / r:.0f} MB/s), machine busy "
            f"{busy['reference']:.2f} CPU-s, receiving host {per_gb['reference']:.2f} CPU-s/GB"
        )
        for way in sources:
            label = "mesh pull via node B:" if way == "mesh" else f"{way}:"
            print(
                f"{label:<44} {seconds[way]:.2f}s ({size / seconds[way]:.0f} MB/s), machine busy "
                f"{busy[way]:.2f} CPU-s, receiving host {per_gb[way]:.2f} CPU-s/GB, "
                f"ratio {seconds[way] / r:.2f}"
            )
        m = seconds["mesh"]
        print(f"ratio mesh/reference: {m / r:.2f}; receiving host CPU per GB, mesh/reference: "
              f"{per_gb['mesh'] / per_gb['reference']:.2f}")  # fmt: skip
        print(
            f"node B peak RSS: {max(rss):.0f} MB; node A peak RSS: {peak_rss_mb(sources['mesh'].pid):.0f} MB"
        )
        return 0
    finally:
        for source in sources.values():
            source.node.stop()
        if reference is not None:
            reference.terminate()
            reference.wait(timeout=10)
        for engine in engines:
            engine.destroy()
        network.destroy()
        for host in network.hosts:
            shutil.rmtree(CERTS_D / f"{host.address}:{REFERENCE_PORT}", ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())

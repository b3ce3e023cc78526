"""A burst lab: one source and several receivers, each a network namespace with its own dockerd,
a link shaped to a fixed rate (tc), and a cachemesh node process run as an operator would.

Used by scripts/bench_fanout.py and tests/test_fanout.py. The image is random data (it does not
compress), made on the source under a tag the mesh does not share (`hold:1`, the nodes share only
`burst:*`); tagging it `burst:1` starts the burst.

What receivers hold before a burst is the case that matters: an autoscaler's new hosts hold the
base image and want the layers on top. `make_layered` imports one base, the same bytes on every
host (so its chain ID matches everywhere, as a base pulled from one registry does), and builds the
burst's image on it at the source; `hold` then sets each receiver's held set: nothing, the base,
or an older build on the base. `make_image` is the one-layer image no receiver holds any of.

The registry path (`prepare_registry`, `registry_burst`): the same image pushed to the source's
node, then `docker pull` through each receiver's own node at the same moment.
"""

from __future__ import annotations

import concurrent.futures
import re
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mesh.lab.dockerd import Dockerd, busybox_rootfs, import_base
from mesh.lab.engines import EngineKind
from mesh.lab.netns import Host, Network
from mesh.lab.nodes import NodeProcess, data_dir
from mesh.lab.poll import wait_until

SHARED = "burst:*"
TAG = "burst:1"
BASE = "base:1"  # not shared: each receiver's own
HELD_SETS = ("nothing", "base", "older")
"""What a receiver may hold before a burst: nothing, the base, or an older build on the base."""
REGISTRY = "127.0.0.1:7613"  # each host's own node, on its own loopback (the registry path)
PUSHED_BASE = f"{REGISTRY}/burst/base:1"
PUSHED = f"{REGISTRY}/burst/app:1"
PULLED = re.compile(r"pulled (sha256:[0-9a-f]+) .* from (\S+?)( \(a relay\))?$", re.MULTILINE)


@dataclass
class LabHost:
    name: str
    host: Host
    engine: Dockerd
    node: NodeProcess | None = None
    runs: int = 0  # node processes started on this host: each run gets a fresh data dir
    env: dict[str, str] = field(default_factory=dict)


class BurstLab:
    def __init__(
        self,
        network: Network,
        make_engine: Callable[[str, str, EngineKind], Dockerd],
        workdir: Path,
        kind: EngineKind,
        *,
        mbit: int,
        env: dict[str, str] | None = None,
    ) -> None:
        self.network = network
        self.make_engine = make_engine
        self.workdir = workdir
        self.kind = kind
        self.mbit = mbit
        self.env = env or {}
        self.hosts: dict[str, LabHost] = {}
        self.source = ""

    def add(self, name: str, kind: EngineKind | None = None) -> LabHost:
        host = self.network.add_host(name)
        self.network.limit(host, self.mbit)
        engine = self.make_engine(name, host.netns, kind or self.kind)
        lab_host = LabHost(name, host, engine)
        self.hosts[name] = lab_host
        self.source = self.source or name
        return lab_host

    @property
    def seed(self) -> str:
        return f"{self.hosts[self.source].host.address}:7611"

    def start(self, name: str, **env: str) -> NodeProcess:
        """A fresh node process on host `name` (new data dir: no memory of earlier runs)."""
        h = self.hosts[name]
        h.runs += 1
        run_name = f"{name}" if h.runs == 1 else f"{name}.{h.runs}"
        shutil.rmtree(data_dir(self.workdir, run_name), ignore_errors=True)
        full_env = {
            "CACHEMESH_DOCKER_HOST": h.engine.host,
            "CACHEMESH_STATUS_LISTEN": f"{h.host.address}:7612",
            "CACHEMESH_PRESET": "lan",
            "CACHEMESH_INCLUDE": SHARED,
            "CACHEMESH_NODE_NAME": name,
            **({"CACHEMESH_SEEDS": self.seed} if name != self.source else {}),
            **self.env,
            **env,
        }
        h.node = NodeProcess(
            run_name, self.workdir, env=full_env, prefix=h.host.nsenter(), status=f"{h.host.address}:7612"
        ).wait_up()
        return h.node

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        h = self.hosts[name]
        if h.node is not None:
            h.node.stop(sig)

    def wait_joined(self, names: list[str], timeout: float = 30.0) -> None:
        """Every named node sees every other as alive."""

        def joined() -> bool:
            for name in names:
                node = self.hosts[name].node
                assert node is not None
                alive = {p["name"] for p in node.api()["peers"] if p["state"] == "alive"}
                if not set(names) - {name} <= alive:
                    return False
            return True

        wait_until(joined, timeout, 0.2, what=f"{names} joined")

    def make_image(self, mb: int) -> str:
        """The burst's image on the source, held under hold:1 (not shared)."""
        return import_base(self.hosts[self.source].engine, "hold:1", payload=mb << 20)

    def make_layered(self, base_mb: int, top_mb: int) -> str:
        """A base of `base_mb` MB imported on every host from the same bytes, and the burst's image
        on the source: that base plus a `top_mb` MB layer of random data."""
        rootfs = busybox_rootfs(base_mb << 20)
        for h in self.hosts.values():
            h.engine.cli("import", "-", BASE, input=rootfs)
        source = self.hosts[self.source].engine
        dockerfile = f"FROM {BASE}\nRUN head -c {top_mb << 20} /dev/urandom > /top\n"
        build_env = {"DOCKER_BUILDKIT": "0"}
        source.cli(
            "build", "--network", "none", "-t", "hold:1", "-", input=dockerfile.encode(), env=build_env
        )
        image = source.image_id("hold:1")
        assert image
        return image

    def hold(self, name: str, held: str) -> None:
        """Give receiver `name` the held set `held` (one of HELD_SETS) before a burst; what an
        earlier burst left (the source's base, a parent that lost its child) goes."""
        if held not in HELD_SETS:
            raise ValueError(f"held set {held!r}: one of {', '.join(HELD_SETS)}")
        engine = self.hosts[name].engine
        if held != "older":
            engine.cli("rmi", "-f", "older:1", check=False)
        if held == "nothing":
            engine.cli("rmi", "-f", BASE, check=False)
        engine.cli("image", "prune", "-f", check=False)
        if held == "older":
            dockerfile = f"FROM {BASE}\nRUN echo an older build > /top\n"
            build = ("build", "--network", "none", "-t", "older:1", "-")
            engine.cli(*build, input=dockerfile.encode(), env={"DOCKER_BUILDKIT": "0"})

    def burst(self) -> float:
        """Tag the image burst:1 on the source: the clock starts once the tag exists."""
        self.hosts[self.source].engine.cli("tag", "hold:1", TAG)
        return time.monotonic()

    def reset(self, receivers: list[str]) -> None:
        """The image off the receivers and the tag off the source (their nodes must be stopped
        first, or they would remember the removal as an eviction)."""
        for name in receivers:
            engine = self.hosts[name].engine
            engine.cli("rmi", "-f", TAG, check=False)
            image = self.hosts[self.source].engine.image_id("hold:1")
            if image:
                engine.cli("rmi", "-f", image, check=False)
        self.hosts[self.source].engine.cli("rmi", TAG, check=False)

    def sources_used(self, name: str) -> list[tuple[str, bool]]:
        """(source node, was it a relay) of each completed pull of host `name`'s current node."""
        node = self.hosts[name].node
        assert node is not None
        return [(m.group(2), bool(m.group(3))) for m in PULLED.finditer(node.log.read_text(errors="replace"))]

    def logs(self) -> str:
        out = []
        for h in self.hosts.values():
            if h.node is not None:
                out.append(f"--- node {h.node.name}'s log ---\n{h.node.tail(120)}")
        return "\n".join(out)

    # --- the registry path --------------------------------------------------------------------

    def registry_tags(self, name: str) -> set[str]:
        node = self.hosts[name].node
        assert node is not None
        section = node.api()["registry"]
        return {f"{r['name']}:{t['tag']}" for r in section["repositories"] for t in r["tags"]}

    def bytes_out(self, name: str) -> float:
        """What host `name`'s node has sent peers: saves and registry content."""
        node = self.hosts[name].node
        assert node is not None
        for line in node.get("/metrics")[1].decode().splitlines():
            if line.startswith('cachemesh_transfer_bytes_total{direction="out"}'):
                return float(line.split()[-1])
        return 0.0

    def _wait_tag(self, name: str, tag: str) -> None:
        wait_until(lambda: tag in self.registry_tags(name), 20, 0.05, what=f"{name}'s node knows {tag}")

    def start_registry_nodes(self, names: list[str]) -> None:
        for name in names:
            self.start(name, CACHEMESH_REGISTRY_LISTEN=REGISTRY)
        self.wait_joined(names)

    def prepare_registry(self, receivers: list[str], held: dict[str, str]) -> None:
        """After make_layered: the base pushed to the source's node and pulled once, through their
        own nodes, by the receivers that hold it, so their engines know its blob, as after any
        earlier pull. Nodes stopped after."""
        source = self.hosts[self.source].engine
        source.cli("tag", BASE, PUSHED_BASE)
        source.cli("tag", "hold:1", PUSHED)
        self.start_registry_nodes([self.source, *receivers])
        source.cli("push", PUSHED_BASE)
        for name in receivers:
            if held[name] != "nothing":
                self._wait_tag(name, "burst/base:1")
                self.hosts[name].engine.cli("pull", PUSHED_BASE)
        for name in [self.source, *receivers]:
            self.stop(name)

    def registry_burst(
        self, receivers: list[str], held: dict[str, str], layer_bytes: int
    ) -> tuple[float, float]:
        """Fresh nodes (no receiver's node holds any of it), the image pushed to the source's,
        and once every receiver's node knows the tag, `docker pull` on each at once. (Seconds to
        the end of the last pull, copies of `layer_bytes` the source's node sent.) Nodes stopped
        and the image off the receivers after."""
        for name in receivers:
            if held[name] == "nothing":
                self.hosts[name].engine.cli("rmi", "-f", PUSHED_BASE, BASE, check=False)
                self.hosts[name].engine.cli("image", "prune", "-f", check=False)
        names = [self.source, *receivers]
        self.start_registry_nodes(names)
        try:
            self.hosts[self.source].engine.cli("push", PUSHED_BASE)
            self.hosts[self.source].engine.cli("push", PUSHED)
            for name in receivers:
                self._wait_tag(name, "burst/app:1")
            sent_before = self.bytes_out(self.source)
            started = time.monotonic()

            def pull(name: str) -> float:
                self.hosts[name].engine.cli("pull", PUSHED)
                return time.monotonic() - started

            with concurrent.futures.ThreadPoolExecutor(len(receivers)) as pool:
                elapsed = max(pool.map(pull, receivers))
            copies = (self.bytes_out(self.source) - sent_before) / layer_bytes
        finally:
            for name in names:
                self.stop(name)
            for name in receivers:
                self.hosts[name].engine.cli("rmi", "-f", PUSHED, check=False)
        return elapsed, copies

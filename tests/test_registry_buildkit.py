"""BuildKit's registry cache through the mesh: Engine 28.5 with the containerd image store and
buildx 0.29 (Debian unstable's, unpacked by scripts/engines.sh), on two hosts.

Host A builds a multi-stage Dockerfile with `--cache-to type=registry,...,mode=max` into its own
node (127.0.0.1:7613 inside A's namespace). Host B builds the same Dockerfile with
`--cache-from type=registry,...` from its own node, which has never seen the cache: no RUN step may
run, the builder stage's included (each prints a marker when it runs).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from mesh.lab.dockerd import Dockerd, busybox_rootfs
from mesh.lab.engines import KINDS
from mesh.lab.netns import Host
from mesh.lab.nodes import NodeProcess
from mesh.lab.poll import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.netns, pytest.mark.slow]

REGISTRY = "127.0.0.1:7613"
CACHE = f"{REGISTRY}/cache/app:ms"
BASE = f"{REGISTRY}/base/busybox:1"

DOCKERFILE = f"""FROM {BASE} AS builder
RUN echo "ran: compile" && echo "compiled at $(date +%s%N)" > /artifact && sleep 2
RUN echo "ran: blob" && dd if=/dev/urandom of=/blob bs=1k count=256 2>/dev/null

FROM {BASE}
COPY --from=builder /artifact /app/artifact
RUN echo "ran: final" && echo "final stage $(date +%s%N)" > /app/final
CMD ["cat", "/app/artifact"]
"""


ENGINE = KINDS["28.5-containerd"]


def start(network, engines, workdir, name: str, seeds: str = "") -> tuple[Host, Dockerd, NodeProcess]:  # type: ignore[no-untyped-def]
    host = network.add_host(name)
    engine = engines(name, netns=host.netns, kind=ENGINE)
    env = {
        "CACHEMESH_DOCKER_HOST": engine.host,
        "CACHEMESH_STATUS_LISTEN": f"{host.address}:7612",
        "CACHEMESH_REGISTRY_LISTEN": REGISTRY,
        "CACHEMESH_PRESET": "lan",
        # Images are not shared by `docker save` here: what B gets, it gets through the registry.
        "CACHEMESH_EXCLUDE": "*",
        "CACHEMESH_SEEDS": seeds,
    }
    node = NodeProcess(name, workdir, env=env, prefix=host.nsenter(), status=f"{host.address}:7612").wait_up()
    return host, engine, node


def ran_steps(progress: str) -> list[str]:
    """The RUN steps BuildKit executed: each prints `ran: NAME`, which plain progress shows as
    `#N 0.123 ran: NAME`. A step answered from a registry cache never runs its command; BuildKit
    marks it `CACHED`, or, when it must fetch the step's layer for the image, shows that download
    under the step and `DONE` instead, so the progress marks alone cannot tell."""
    return re.findall(r"^#\d+ [\d.]+ ran: (\w+)$", progress, re.M)


def build(engine: Dockerd, context: Path, *args: str) -> str:
    """`docker buildx build` with the default (docker) driver; the plain progress output."""
    result = engine.cli(
        "buildx",
        "build",
        "--progress",
        "plain",
        "--network",
        "none",
        "-t",
        "app:1",
        *args,
        str(context),
        timeout=600,
    )
    return result.stdout + result.stderr


def test_buildkit_mode_max_cache_from_another_host(network, engines, workdir) -> None:  # type: ignore[no-untyped-def]
    started = []
    try:
        a = start(network, engines, workdir, "a")
        started.append(a)
        b = start(network, engines, workdir, "b", seeds=f"{a[0].address}:7611")
        started.append(b)
        _, engine_a, node_a = a
        _, engine_b, node_b = b
        wait_until(lambda: [p["state"] for p in node_b.api()["peers"]] == ["alive"], 20, what="b sees a")
        # The base image travels through the mesh too, so both hosts build FROM the same digest.
        engine_a.cli("import", "-", BASE, input=busybox_rootfs())
        engine_a.cli("push", BASE)
        wait_until(lambda: "base/busybox" in repos(node_b), 5, what="b knows the base image")
        engine_b.cli("pull", BASE)
        context = workdir / "context"
        context.mkdir()
        (context / "Dockerfile").write_text(DOCKERFILE)

        first = build(engine_a, context, "--cache-to", f"type=registry,ref={CACHE},mode=max")
        pushed = time.monotonic()
        assert len(ran_steps(first)) == 3, first[-3000:]
        wait_until(lambda: "cache/app" in repos(node_b), 5, 0.05, what="b's node knows the cache")
        known = time.monotonic() - pushed

        second = build(engine_b, context, "--cache-from", f"type=registry,ref={CACHE}")
        assert ran_steps(second) == [], second[-3000:]
        print(f"cache pushed on a, known to b's node after {known:.2f}s")
        assert known < 2.0
        out = engine_b.cli("run", "--rm", "--network", "none", "app:1").stdout
        assert out.startswith("compiled at")
    finally:
        for _, _, node in reversed(started):
            node.stop()
            if os.environ.get("CACHEMESH_TEST_LOGS"):
                print(node.tail(200))


def repos(node: NodeProcess) -> set[str]:
    return {r["name"] for r in node.api()["registry"]["repositories"]}

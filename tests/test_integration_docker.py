"""Two hosts, each a network namespace with its own dockerd and a cachemesh node process, as an
operator runs them (configured by env vars alone, LAN defaults). Build on A; B gets the cache.

The build tests run on every engine and image store of the matrix (mesh.lab.engines), with the
flags docs/engines.md gives each builder there."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import pytest

from mesh.lab.dockerd import Dockerd, import_base
from mesh.lab.engines import DEFAULT, KINDS, EngineKind
from mesh.lab.netns import Host
from mesh.lab.nodes import NodeProcess
from mesh.lab.poll import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.netns, pytest.mark.slow]


@dataclass
class MeshHost:
    host: Host
    engine: Dockerd
    node: NodeProcess


def start_host(network, engines, workdir, name: str, seeds: str = "", kind: EngineKind = DEFAULT) -> MeshHost:
    host = network.add_host(name)
    engine = engines(name, netns=host.netns, kind=kind)
    env = {
        "CACHEMESH_DOCKER_HOST": engine.host,
        "CACHEMESH_STATUS_LISTEN": f"{host.address}:7612",
        "CACHEMESH_PRESET": "lan",
    }
    if seeds:
        env["CACHEMESH_SEEDS"] = seeds
    node = NodeProcess(name, workdir, env=env, prefix=host.nsenter(), status=f"{host.address}:7612").wait_up()
    return MeshHost(host, engine, node)


@pytest.fixture
def two_hosts(network, engines, workdir, request):
    kind_a = kind_b = getattr(request, "param", None) or DEFAULT
    if isinstance(kind_a, tuple):
        kind_a, kind_b = kind_a
    a = start_host(network, engines, workdir, "a", kind=kind_a)
    b = start_host(network, engines, workdir, "b", seeds=f"{a.host.address}:7611", kind=kind_b)
    try:
        wait_until(lambda: [p["state"] for p in b.node.api()["peers"]] == ["alive"], 20, what="b sees a")
        yield a, b
    finally:
        for h in (b, a):
            h.node.stop()
            print(f"--- node {h.node.name}'s log ---\n{h.node.tail(200)}")  # shown when a test fails


CLASSIC = """FROM base:1
RUN mkdir /app && echo dependencies > /app/deps && sleep 1
RUN echo "more dependencies" > /app/more && sleep 1
RUN touch /app/built
CMD ["cat", "/app/deps"]
"""


def build(engine: Dockerd, dockerfile: str, tag: str, *extra: str, buildkit: bool = False) -> str:
    # 20.10's CLI builds with BuildKit only under DOCKER_BUILDKIT=1; newer CLIs use buildx by
    # default; DOCKER_BUILDKIT=0 selects the classic builder on every version.
    env = {"DOCKER_BUILDKIT": "1" if buildkit else "0"}
    args = ["build", "--network", "none", "-t", tag, *extra]
    if buildkit:
        args += ["--progress", "plain"]
    result = engine.cli(*args, "-", input=dockerfile.encode(), env=env)
    return result.stdout + result.stderr


def cache_from(kind: EngineKind, image: str) -> list[str]:
    """Since Engine 25.0.2 (CVE-2024-24557) the classic builder uses a pulled or loaded image as
    cache only when the build names it; 20.10 finds the parent chain by itself."""
    return [] if kind.version == "20.10" else ["--cache-from", image]


ALL_KINDS = list(KINDS.values())
GRAPH_KINDS = [k for k in ALL_KINDS if not k.containerd_store]


@pytest.mark.parametrize("two_hosts", ALL_KINDS, ids=[k.name for k in ALL_KINDS], indirect=True)
def test_classic_build_on_a_is_cache_on_b_within_10s(two_hosts):
    a, b = two_hosts
    kind = b.engine.kind
    import_base(a.engine)
    build(a.engine, CLASSIC, "app:1")
    built_at = time.monotonic()
    image = a.engine.image_id("app:1")
    wait_until(lambda: b.engine.image_id("app:1") == image, 10, 0.05, what="app:1 on B")
    elapsed = time.monotonic() - built_at
    print(f"classic: app:1 reached B {elapsed:.2f}s after the build on A finished")
    assert b.engine.image_id("base:1") == a.engine.image_id("base:1")  # the FROM image travels too

    output = build(b.engine, CLASSIC, "app:1", *cache_from(kind, "app:1"))
    assert output.count("Using cache") == 4, output  # three RUNs and the CMD
    assert "Running in" not in output, output  # no step ran on B
    assert b.engine.image_id("app:1") == image

    status = b.node.api()
    assert status["ready"] is True
    app = next(i for i in status["images"] if "app:1" in i["tags"])
    assert sorted(app["holders"]) == ["a", "b"]
    # The page names the image as `docker images` does on this engine; the mesh key beside it.
    shown = b.engine.cli("images", "--no-trunc", "--format", "{{.ID}}", "app:1").stdout.split()
    assert shown == [app["engine_id"]], (shown, app)
    code, metrics = b.node.get("/metrics")
    assert code == 200
    assert metric(metrics, 'cachemesh_transfers_total{direction="in",outcome="ok"}') >= 1
    assert metric(metrics, 'cachemesh_transfers_total{direction="in",outcome="failed"}') == 0


def metric(text: bytes, name: str) -> float:
    for line in text.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in metrics")


BUILDKIT = """FROM base:1
RUN mkdir /bk && echo dependencies > /bk/deps
RUN echo "compile step" > /bk/out
"""


@pytest.mark.parametrize("two_hosts", GRAPH_KINDS, ids=[k.name for k in GRAPH_KINDS], indirect=True)
def test_buildkit_inline_cache_on_a_gives_cached_steps_on_b(two_hosts):
    """On a graph driver, BuildKit's --cache-from IMAGE reads the local image's inline cache. On
    the containerd store the same flag asks a registry (docs/engines.md): the registry cache is
    the way there, tested in tests/test_registry*.py."""
    a, b = two_hosts
    import_base(a.engine)
    build(a.engine, BUILDKIT, "bk:1", "--build-arg", "BUILDKIT_INLINE_CACHE=1", buildkit=True)
    built_at = time.monotonic()
    image = a.engine.image_id("bk:1")
    wait_until(
        lambda: b.engine.image_id("bk:1") == image and b.engine.image_id("base:1"),
        10,
        0.05,
        what="bk:1 and base:1 on B",
    )
    print(f"buildkit: bk:1 reached B {time.monotonic() - built_at:.2f}s after the build on A finished")

    output = build(b.engine, BUILDKIT, "bk:1", "--cache-from", "bk:1", buildkit=True)
    run_steps = re.findall(r"#\d+ \[\d+/\d+\] RUN .*", output)
    assert len(run_steps) == 2, output
    for step in run_steps:
        number = step.split()[0]
        assert f"{number} CACHED" in output, output


def test_engine_restart_is_survived(two_hosts):
    """One engine is enough: what is tested is the node's reconnect to a socket that goes away and
    comes back, which is the same Engine API on every version and store."""
    a, b = two_hosts
    import_base(a.engine)
    wait_until(lambda: b.engine.image_id("base:1"), 10, what="base on B")
    b.engine.stop()
    wait_until(lambda: b.node.get("/readyz")[0] == 503, 20, what="B reports its engine gone")
    assert "unreachable" in b.node.get("/readyz")[1]["reason"]
    assert b.node.get("/healthz")[0] == 200  # the node itself stays healthy
    b.engine.start()
    wait_until(lambda: b.node.get("/readyz")[0] == 200, 30, what="B ready again")
    build(a.engine, CLASSIC, "after-restart:1")
    image = a.engine.image_id("after-restart:1")
    wait_until(lambda: b.engine.image_id("after-restart:1") == image, 20, what="transfers resume")


CONTAINERD_KINDS = [k for k in ALL_KINDS if k.containerd_store]


@pytest.mark.parametrize("two_hosts", CONTAINERD_KINDS, ids=[k.name for k in CONTAINERD_KINDS], indirect=True)
def test_a_buildkit_image_with_attestations_crosses_the_containerd_store_intact(two_hosts):
    """buildx on the containerd store adds an attestation manifest: the image's ID there is its
    index's digest. It still crosses as one image, verified, with no failed pull on the way.
    (Its cache crosses by the registry cache, tests/test_registry*.py.)"""
    a, b = two_hosts
    import_base(a.engine)
    build(a.engine, BUILDKIT, "bk:1", buildkit=True)
    image = a.engine.image_id("bk:1")
    wait_until(lambda: b.engine.image_id("bk:1") == image, 60, 0.05, what="bk:1 on B, same index digest")
    run = b.engine.cli("run", "--rm", "--network", "none", "bk:1", "cat", "/bk/out")
    assert run.stdout.strip() == "compile step"
    metrics = b.node.get("/metrics")[1]
    assert metric(metrics, 'cachemesh_transfers_total{direction="in",outcome="failed"}') == 0
    assert metric(metrics, 'cachemesh_transfers_total{direction="in",outcome="ok"}') >= 2

"""The disk budget and the watermarks on real engines: namespaced hosts, private dockerds, node
processes configured by env vars as an operator runs them."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from mesh.lab.dockerd import Dockerd, import_base
from mesh.lab.engines import KINDS, EngineKind
from mesh.lab.nodes import NodeProcess
from mesh.lab.poll import wait_until
from tests.test_integration_docker import MeshHost, metric

pytestmark = [pytest.mark.docker, pytest.mark.netns, pytest.mark.slow]


def assert_no_pulls_over_three_checks(host) -> None:  # type: ignore[no-untyped-def]
    """Steady state: several disk checks and planner rounds pass, and nothing is pulled (no churn)."""
    pulled = 'cachemesh_transfers_total{direction="in",outcome="ok"}'
    before = metric(host.node.get("/metrics")[1], pulled)
    checks = host.node.api()["disk"]["checks"]
    wait_until(lambda: host.node.api()["disk"]["checks"] >= checks + 3, 20, 0.2, what="three more checks")
    assert metric(host.node.get("/metrics")[1], pulled) == before


def start(network, engines, workdir, name: str, kind: EngineKind, env: dict[str, str], seeds: str = ""):  # type: ignore[no-untyped-def]
    host = network.add_host(name)
    engine = engines(name, netns=host.netns, kind=kind)
    full = {"CACHEMESH_DOCKER_HOST": engine.host, "CACHEMESH_STATUS_LISTEN": f"{host.address}:7612", **env}
    if seeds:
        full["CACHEMESH_SEEDS"] = seeds
    node = NodeProcess(
        name, workdir, env=full, prefix=host.nsenter(), status=f"{host.address}:7612"
    ).wait_up()
    return MeshHost(host, engine, node)


@pytest.fixture
def small_fs(workdir: Path):  # type: ignore[no-untyped-def]
    """A 96 MB ext4 filesystem in an image file, loop-mounted; unmounted and removed afterwards."""
    image, mount = workdir / "small.ext4", workdir / "small"
    mount.mkdir()
    with open(image, "wb") as fh:
        fh.truncate(96 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True, capture_output=True)
    try:
        yield mount
    finally:
        # The engine on it is stopped by then (its fixture tears down first); lazy as a last resort.
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)
        image.unlink(missing_ok=True)


def build_blob(engine: Dockerd, tag: str, kb: int = 600) -> str:
    """A base-like image (no ADD/COPY: shared) adding `kb` KB of random bytes."""
    dockerfile = f"FROM base:1\nRUN head -c {kb * 1024} /dev/urandom > '/blob {tag}'\n"  # no build cache hit
    engine.cli(
        "build", "--network", "none", "-t", tag, "-", input=dockerfile.encode(), env={"DOCKER_BUILDKIT": "0"}
    )
    image = engine.image_id(tag)
    assert image
    # Images carry their creation time to the second, and the budget keeps the newest first: the
    # next image must be newer, not a tie.
    built_in = int(time.time())
    wait_until(lambda: int(time.time()) > built_in, 2, 0.05, what="the next second")
    return image


def images_by_tag(host) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    return {t: i for i in host.node.api()["images"] for t in i["tags"]}


def stop_all(*hosts) -> None:  # type: ignore[no-untyped-def]
    for h in hosts:
        h.node.stop()
        print(f"--- node {h.node.name}'s log ---\n{h.node.tail(200)}")  # shown when a test fails


def start_node(host: MeshHost, workdir: Path, env: dict[str, str], seeds: str) -> NodeProcess:
    full = {
        "CACHEMESH_DOCKER_HOST": host.engine.host,
        "CACHEMESH_STATUS_LISTEN": f"{host.host.address}:7612",
        "CACHEMESH_SEEDS": seeds,
        **env,
    }
    status = f"{host.host.address}:7612"
    return NodeProcess(host.node.name, workdir, env=full, prefix=host.host.nsenter(), status=status).wait_up()


def test_many_images_into_a_small_budget_on_the_containerd_store(network, engines, workdir):
    """A (overlay2) builds five images; B (containerd store) holds them all, then restarts with a
    budget for about two and a half: it keeps the newest and the one a container uses, evicts the
    rest, swaps when a newer image comes, leaves its own image alone, and pulls nothing again."""
    a = start(network, engines, workdir, "a", KINDS["28.5-overlay2"], {})
    seeds = f"{a.host.address}:7611"
    b = start(network, engines, workdir, "b", KINDS["28.5-containerd"], {}, seeds=seeds)
    try:
        import_base(a.engine)
        for i in range(5):
            build_blob(a.engine, f"img:{i}")
        wait_until(lambda: all(b.engine.image_id(f"img:{i}") for i in range(5)), 60, 0.2, what="all on B")
        import_base(b.engine, "mine-base:1")
        build_blob_on(b.engine, "mine:1", "mine-base:1")  # B's own build: never the mesh's to evict
        b.engine.cli("create", "--network", "none", "img:1", "true")  # a container pins img:1
        on_b = wait_until(
            lambda: _sizes(b, ["base:1", *(f"img:{i}" for i in range(5))]), 10, what="B's sizes"
        )
        own = max(on_b[f"img:{i}"] - on_b["base:1"] for i in range(5))
        budget = on_b["base:1"] + int(2.5 * own)

        ids_b = {f"img:{i}": b.engine.image_id(f"img:{i}") for i in range(5)}  # its store's own IDs
        b.node.stop()
        b.node = start_node(b, workdir, {"CACHEMESH_DISK_BUDGET": str(budget)}, seeds)
        # Kept: the base, img:1 (a container uses it), img:4 (the newest). Evicted: 0, 2, 3.
        wait_until(
            lambda: not any(b.engine.image_id(f"img:{i}") for i in (0, 2, 3)), 30, 0.2, what="evictions"
        )
        assert b.engine.image_id("img:4") == ids_b["img:4"] and b.engine.image_id("img:1") == ids_b["img:1"]
        assert b.engine.image_id("base:1") and b.engine.image_id("mine:1")
        status = b.node.api()
        assert status["disk"]["evictions"] == {"budget": 3}
        wait_until(lambda: b.node.get("/readyz")[0] == 200, 20, what="B ready without the evicted")

        # A newer image: it comes in, and img:4 (now the least recently used one not pinned) goes.
        build_blob(a.engine, "img:5")
        wait_until(lambda: b.engine.image_id("img:5"), 30, 0.2, what="img:5 on B")
        wait_until(lambda: b.engine.image_id("img:4") is None, 30, 0.2, what="img:4 evicted")
        # Announced: A stops listing B as a holder of what B evicted.
        wait_until(lambda: images_by_tag(a)["img:4"]["holders"] == ["a"], 20, 0.2, what="A sees it")

        # Steady state: several disk checks and planner rounds later, nothing came back.
        assert_no_pulls_over_three_checks(b)
        assert not any(b.engine.image_id(f"img:{i}") for i in (0, 2, 3, 4))
        disk = b.node.api()["disk"]
        assert disk["evictions"] == {"budget": 4} and disk["held"] <= budget + own, disk
        metrics = b.node.get("/metrics")[1]
        assert metric(metrics, 'cachemesh_evictions_total{kind="image",reason="budget"}') == 4
        assert metric(metrics, "cachemesh_disk_budget_bytes") == budget
    finally:
        stop_all(a, b)


def build_blob_on(engine: Dockerd, tag: str, base: str) -> None:
    dockerfile = f"FROM {base}\nRUN head -c 300000 /dev/urandom > /mine\n"
    engine.cli(
        "build", "--network", "none", "-t", tag, "-", input=dockerfile.encode(), env={"DOCKER_BUILDKIT": "0"}
    )


def _sizes(host, tags: list[str]) -> dict[str, int] | None:  # type: ignore[no-untyped-def]
    found = {t: i["size"] for t, i in images_by_tag(host).items() if i["local"] and i["size"]}
    return found if all(t in found for t in tags) else None


def test_above_the_high_watermark_mesh_content_goes_oldest_first_until_below_low(
    network, engines, workdir, small_fs
):
    """B's engine keeps its data on a small filesystem. Five images of 8 MB from A fill it past
    --disk-high 50%; B evicts the oldest until use is under --disk-low 35%, keeps the newest, and
    pulls nothing back."""
    a = start(network, engines, workdir, "a", KINDS["28.5-overlay2"], {})
    host_b = network.add_host("b")
    engine_b = Dockerd(workdir / "engine-b", netns=host_b.netns, name="b", kind=KINDS["28.5-overlay2"])
    (workdir / "engine-b").mkdir()
    (workdir / "engine-b" / "data").symlink_to(small_fs)  # the engine's data root is on it
    engine_b.start()
    b = None
    try:
        import_base(a.engine)
        for i in range(5):
            build_blob(a.engine, f"big:{i}", kb=8 * 1024)
        env = {
            "CACHEMESH_DOCKER_HOST": engine_b.host,
            "CACHEMESH_STATUS_LISTEN": f"{host_b.address}:7612",
            "CACHEMESH_SEEDS": f"{a.host.address}:7611",
            "CACHEMESH_DISK_HIGH": "50%",
            "CACHEMESH_DISK_LOW": "35%",
        }
        node_b = NodeProcess("b", workdir, env=env, prefix=host_b.nsenter(), status=f"{host_b.address}:7612")
        b = MeshHost(host_b, engine_b, node_b.wait_up())

        def settled():  # type: ignore[no-untyped-def]
            disk = b.node.api()["disk"]
            fs = [f for f in disk["filesystems"] if f["path"] == str(small_fs)]  # the resolved data root
            done = disk["evictions"].get("watermark", 0) >= 1 and fs and fs[0]["fraction"] < 0.5
            return disk if done and b.engine.image_id("big:4") else None

        disk = wait_until(settled, 90, 0.5, what="B evicted past the high watermark")
        evicted = [i for i in range(5) if b.engine.image_id(f"big:{i}") is None]
        kept = [i for i in range(5) if i not in evicted]
        assert evicted and evicted == list(range(len(evicted))), (evicted, disk)  # oldest first
        assert 4 in kept and b.engine.image_id("base:1")
        assert disk["limit_reason"] in ("watermark", ""), disk

        assert_no_pulls_over_three_checks(b)
        assert [i for i in range(5) if b.engine.image_id(f"big:{i}") is None] == evicted  # none back
        assert (
            metric(b.node.get("/metrics")[1], 'cachemesh_evictions_total{kind="image",reason="watermark"}')
            >= 1
        )
    finally:
        stop_all(a, *([b] if b else []))
        engine_b.destroy()

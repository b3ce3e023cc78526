"""A fleet of mixed engines and stores, and transfers that carry only what the receiver lacks.

Real namespaced hosts, real engines, node processes configured as an operator would. Bytes on the
wire are read from the kernel's counters of the veth that leads into the receiving host, not from
the node's own tally.
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from mesh.lab.dockerd import Dockerd, import_base
from mesh.lab.engines import KINDS
from mesh.lab.poll import wait_until
from tests.test_integration_docker import CLASSIC, build, cache_from, metric, two_hosts

pytestmark = [pytest.mark.docker, pytest.mark.netns, pytest.mark.slow]
__all__ = ["two_hosts"]  # the fixture, shared with the integration tests

MIXED = [
    (KINDS["28.5-overlay2"], KINDS["28.5-containerd"]),
    (KINDS["20.10"], KINDS["28.5-containerd"]),
]

FROM_B = """FROM base:1
RUN echo "built on the other store" > /b && sleep 1
"""


def failed_pulls(host) -> float:  # type: ignore[no-untyped-def]
    return metric(host.node.get("/metrics")[1], 'cachemesh_transfers_total{direction="in",outcome="failed"}')


@pytest.mark.parametrize("two_hosts", MIXED, ids=[f"{a.name}+{b.name}" for a, b in MIXED], indirect=True)
def test_a_mixed_pair_exchanges_images_both_ways(two_hosts):
    a, b = two_hosts
    import_base(a.engine)
    build(a.engine, CLASSIC, "app:1")
    wait_until(lambda: b.engine.image_id("app:1"), 60, 0.1, what="app:1 (built on A) on B")
    output = build(b.engine, CLASSIC, "app:1", *cache_from(b.engine.kind, "app:1"))
    assert output.count("Using cache") == 4 and "Running in" not in output, output

    build(b.engine, FROM_B, "fromb:1", *cache_from(b.engine.kind, "base:1"))
    wait_until(lambda: a.engine.image_id("fromb:1"), 60, 0.1, what="fromb:1 (built on B) on A")
    # Named even on 20.10: an image from a containerd-store host arrives without parent links,
    # so 20.10's classic builder finds it only through --cache-from.
    output = build(a.engine, FROM_B, "fromb:1", "--cache-from", "fromb:1")
    assert output.count("Using cache") == 1 and "Running in" not in output, output

    # One image under two engine IDs is one image to the mesh: both nodes hold each, once the
    # last pull has been gossiped.
    def held_by_both() -> bool:
        images = b.node.api()["images"]
        return all(
            any(tag in i["tags"] and sorted(i["holders"]) == ["a", "b"] for i in images)
            for tag in ("app:1", "fromb:1", "base:1")
        )

    wait_until(held_by_both, 15, 0.1, what="B's view: a and b hold app:1, fromb:1 and base:1")
    assert sum("fromb:1" in i["tags"] for i in b.node.api()["images"]) == 1  # one image, not two
    assert failed_pulls(a) == 0 and failed_pulls(b) == 0


def veth_bytes_into(host) -> int:  # type: ignore[no-untyped-def]
    """Bytes the bridge sent down the host's veth: everything the host received."""
    return int(Path(f"/sys/class/net/{host.host.veth}/statistics/tx_bytes").read_text())


def layer_bytes(engine: Dockerd, image: str, held: set[str]) -> int:
    """The size of the layer files of `image` in its own engine's save, less the held layers."""
    save = subprocess.run(
        [engine.kind.cli_path, "-H", engine.host, "save", image], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(save)) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())[0]  # type: ignore[union-attr]
        config = json.loads(tar.extractfile(manifest["Config"]).read())  # type: ignore[union-attr]
        sizes = {m.name: m.size for m in tar.getmembers()}
    pairs = zip(manifest["Layers"], config["rootfs"]["diff_ids"], strict=True)
    return sum(sizes[name] for name, diff_id in pairs if diff_id not in held)


def diff_ids(engine: Dockerd, ref: str) -> list[str]:
    out = engine.cli("image", "inspect", "--format", "{{json .RootFS.Layers}}", ref).stdout
    return list(json.loads(out))


DELTA_KINDS = [KINDS["20.10"], KINDS["28.5-overlay2"], KINDS["28.5-containerd"]]
BASE_BYTES = 24 << 20


@pytest.mark.parametrize("two_hosts", DELTA_KINDS, ids=[k.name for k in DELTA_KINDS], indirect=True)
def test_a_small_top_layer_on_a_big_base_crosses_as_few_bytes(two_hosts):
    """Both stores, and 20.10's legacy format. The target: bytes into B at most 1.1x the layers B
    lacks, plus a small fixed overhead (HTTP, tar headers, the image's index files, and the gossip
    that goes on meanwhile)."""
    a, b = two_hosts
    import_base(a.engine, "bigbase:1", payload=BASE_BYTES)
    wait_until(lambda: b.engine.image_id("bigbase:1"), 60, 0.1, what="the big base on B")
    held = set(diff_ids(b.engine, "bigbase:1"))

    app = CLASSIC.replace("FROM base:1", "FROM bigbase:1")
    before = veth_bytes_into(b)
    started = time.monotonic()
    build(a.engine, app, "app:1")
    wait_until(lambda: b.engine.image_id("app:1"), 30, 0.05, what="app:1 on B")
    received = veth_bytes_into(b) - before
    elapsed = time.monotonic() - started
    missing = layer_bytes(a.engine, "app:1", held)
    overhead = 256 << 10
    print(
        f"{a.engine.kind.name}: {received} bytes into B for {missing} bytes of missing layers "
        f"(base {BASE_BYTES}), ratio {received / max(missing, 1):.2f}, in {elapsed:.1f}s"
    )
    assert received <= 1.1 * missing + overhead, (received, missing)
    assert received < BASE_BYTES / 10

    output = build(b.engine, app, "app:1", *cache_from(b.engine.kind, "app:1"))
    assert output.count("Using cache") == 4 and "Running in" not in output, output
    assert failed_pulls(b) == 0
    assert metric(a.node.get("/metrics")[1], "cachemesh_layers_left_out_total") >= 1

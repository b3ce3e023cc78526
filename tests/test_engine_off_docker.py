"""`--engine off` between hosts: a node with no Docker socket shares registry content with a host
that has a real engine, both ways.

Host A runs a real dockerd and its node; host B runs only a node, started with --engine off and a
Docker host that does not exist, so anything that dialled an engine would fail. skopeo in B's
namespace stands for what runs on such a host (BuildKit's docker-container driver, kaniko,
buildah): it pulls through B's endpoint what A's engine pushed, and pushes what A's engine then
pulls. Both engine stores, since what A's engine pushes differs between them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess

import pytest

from mesh.lab.dockerd import import_base
from mesh.lab.engines import KINDS
from mesh.lab.netns import Host
from mesh.lab.nodes import NodeProcess
from mesh.lab.poll import wait_until
from tests.test_registry_docker import REGISTRY, registry_tags, start_host
from tests.test_registry_skopeo import oci_layout

pytestmark = [
    pytest.mark.docker,
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(not shutil.which("skopeo"), reason="skopeo not installed (scripts/test)"),
]


def skopeo_in(host: Host, *args: str) -> str:
    result = subprocess.run(
        [*host.nsenter(), "skopeo", *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"skopeo {' '.join(args)} on {host.name}: {result.stderr[-2000:]}"
    return result.stdout


@pytest.mark.parametrize("kind", ["28.5-containerd", "20.10"])
def test_an_engine_less_host_shares_registry_content_both_ways(network, engines, workdir, kind) -> None:  # type: ignore[no-untyped-def]
    a = start_host(network, engines, workdir, "a", kind=KINDS[kind])
    b_host = network.add_host("b")
    b = NodeProcess(
        "b",
        workdir,
        env={
            "CACHEMESH_ENGINE": "off",
            "CACHEMESH_DOCKER_HOST": "unix:///nonexistent/docker.sock",
            "CACHEMESH_STATUS_LISTEN": f"{b_host.address}:7612",
            "CACHEMESH_REGISTRY_LISTEN": REGISTRY,
            "CACHEMESH_PRESET": "lan",
            "CACHEMESH_SEEDS": f"{a.host.address}:7611",
        },
        prefix=b_host.nsenter(),
        status=f"{b_host.address}:7612",
    ).wait_up()
    try:
        wait_until(lambda: [p["state"] for p in b.api()["peers"]] == ["alive"], 20, what="b sees a")
        wait_until(b.ready, 30, what="the engine-less node turns ready")
        status = b.api()
        assert status["node"]["engine"] == "off" and status["images"] == []
        code, ready = b.get("/readyz")
        assert code == 200, ready

        # A's engine pushes; B's endpoint serves it, whole and with the same digest.
        import_base(a.engine)
        context = workdir / "ctx"
        context.mkdir()
        (context / "Dockerfile").write_text("FROM base:1\nRUN dd if=/dev/urandom of=/payload bs=1M count=3\n")
        image = f"{REGISTRY}/app/off:1"
        a.engine.cli("build", "--network", "none", "-t", image, str(context))
        pushed = a.engine.cli("push", image).stdout
        digest = next(w for w in pushed.split() if w.startswith("sha256:"))
        wait_until(lambda: registry_tags(b).get("app/off:1"), 20, what="b learns app/off:1")
        raw = skopeo_in(b_host, "inspect", "--raw", "--tls-verify=false", f"docker://{image}")
        served = "sha256:" + hashlib.sha256(raw.encode()).hexdigest()
        assert served == digest
        # dir: keeps what the registry served byte for byte (oci: would convert Docker manifests).
        out = workdir / "out"
        skopeo_in(b_host, "copy", "--all", "--src-tls-verify=false", f"docker://{image}", f"dir:{out}")
        assert hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest() == digest.split(":")[1]
        manifest = json.loads(raw)
        if "manifests" in manifest:  # the containerd store pushes an index: each manifest, copied
            wanted = {m["digest"].split(":")[1] + ".manifest.json" for m in manifest["manifests"]}
        else:
            wanted = {d["digest"].split(":")[1] for d in [manifest["config"], *manifest["layers"]]}
        assert wanted <= {p.name for p in out.iterdir()}  # skopeo checked each digest as it copied

        # Pushed to B (no engine), pulled by A's engine through A's node.
        source = workdir / "source"
        pushed_digest = oci_layout(source, "v1", os.urandom(2 * 1024 * 1024))
        skopeo_in(
            b_host, "copy", "--dest-tls-verify=false", f"oci:{source}:v1", f"docker://{REGISTRY}/ci/fromb:1"
        )
        wait_until(lambda: registry_tags(a.node).get("ci/fromb:1"), 20, what="a learns ci/fromb:1")
        a.engine.cli("pull", f"{REGISTRY}/ci/fromb:1")
        repo_digests = a.engine.cli(
            "image", "inspect", "--format", "{{json .RepoDigests}}", f"{REGISTRY}/ci/fromb:1"
        )
        assert pushed_digest in repo_digests.stdout
        assert b.api()["images"] == []  # it never held or loaded an image
    finally:
        for node in (b, a.node):
            node.stop()
            if os.environ.get("CACHEMESH_TEST_LOGS"):
                print(node.tail(100))

"""`docker push` to host A's node, `docker pull` from host B's node: real engines, two hosts.

Each host is a network namespace with its own dockerd and node; each node's registry listens on
127.0.0.1:7613 inside its namespace, which is what that host's engine reaches (Docker treats
127.0.0.0/8 as an insecure, plain-HTTP registry by default).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import pytest

from mesh.lab.dockerd import Dockerd, import_base
from mesh.lab.engines import DEFAULT, EngineKind
from mesh.lab.netns import Host
from mesh.lab.nodes import NodeProcess
from mesh.lab.poll import wait_until
from mesh.ui.status_doc import RegistryTagDoc

pytestmark = [pytest.mark.docker, pytest.mark.netns, pytest.mark.slow]

REGISTRY = "127.0.0.1:7613"


@dataclass
class RegistryHost:
    host: Host
    engine: Dockerd
    node: NodeProcess


def start_host(
    network, engines, workdir, name: str, seeds: str = "", kind: EngineKind = DEFAULT, **env: str
) -> RegistryHost:  # type: ignore[no-untyped-def]
    host = network.add_host(name)
    engine = engines(name, netns=host.netns, kind=kind)
    full_env = {
        "CACHEMESH_DOCKER_HOST": engine.host,
        "CACHEMESH_STATUS_LISTEN": f"{host.address}:7612",
        "CACHEMESH_REGISTRY_LISTEN": REGISTRY,
        "CACHEMESH_PRESET": "lan",
        # Images are not shared by `docker save` here: what B gets, it gets through the registry.
        "CACHEMESH_EXCLUDE": "*",
        **env,
    }
    if seeds:
        full_env["CACHEMESH_SEEDS"] = seeds
    node = NodeProcess(
        name, workdir, env=full_env, prefix=host.nsenter(), status=f"{host.address}:7612"
    ).wait_up()
    return RegistryHost(host, engine, node)


def registry_tags(node: NodeProcess) -> dict[str, RegistryTagDoc]:
    """`repo:tag` -> its row in the node's /api/status registry section."""
    section = node.api()["registry"]
    return {f"{r['name']}:{t['tag']}": t for r in section["repositories"] for t in r["tags"]}


@pytest.fixture
def two_hosts(network, engines, workdir):  # type: ignore[no-untyped-def]
    a = start_host(network, engines, workdir, "a")
    b = start_host(network, engines, workdir, "b", seeds=f"{a.host.address}:7611")
    try:
        wait_until(lambda: [p["state"] for p in b.node.api()["peers"]] == ["alive"], 20, what="b sees a")
        yield a, b
    finally:
        for h in (b, a):
            h.node.stop()
            if os.environ.get("CACHEMESH_TEST_LOGS"):
                print(h.node.tail(200))


def test_docker_push_on_a_pull_on_b(two_hosts, workdir) -> None:  # type: ignore[no-untyped-def]
    a, b = two_hosts
    import_base(a.engine)
    context = workdir / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(
        'FROM base:1\nRUN dd if=/dev/urandom of=/payload bs=1M count=8 && echo "hello from a" > /msg\n'
        'CMD ["cat", "/msg"]\n'
    )
    a.engine.cli("build", "--network", "none", "-t", f"{REGISTRY}/app/hello:1", str(context))
    pushed = a.engine.cli("push", f"{REGISTRY}/app/hello:1")
    pushed_at = time.monotonic()
    digest = next(w for w in pushed.stdout.split() if w.startswith("sha256:"))
    row = wait_until(lambda: registry_tags(b.node).get("app/hello:1"), 5, 0.05, what="b knows app/hello:1")
    known_after = time.monotonic() - pushed_at
    assert row["digest"] == digest

    b.engine.cli("pull", f"{REGISTRY}/app/hello:1")
    image = f"{REGISTRY}/app/hello:1"
    repo_digests = b.engine.cli("image", "inspect", "--format", "{{json .RepoDigests}}", image)
    assert digest in repo_digests.stdout
    out = b.engine.cli("run", "--rm", "--network", "none", f"{REGISTRY}/app/hello:1").stdout
    assert out.strip() == "hello from a"
    # b pulled everything through its node, so it holds the image too and says so.
    wait_until(
        lambda: registry_tags(a.node)["app/hello:1"]["holders"] == ["b", "(this node)"],
        10,
        what="a sees b hold app/hello:1",
    )
    print(f"push on a -> known on b after {known_after:.2f}s")
    assert known_after < 2.0

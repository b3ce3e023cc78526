"""A pull through a host's own node the moment that node knows a tag pushed on another host.

The tag reaches a node before the pusher's metadata (which blobs the manifest needs) does; the
node then serves the manifest, and the client asks for its config and layers at once. Every blob
a served manifest names must be fetchable through that node then, not 404 until gossip catches up.
"""

from __future__ import annotations

import concurrent.futures
import os

import pytest

from mesh.lab.dockerd import import_base
from mesh.lab.engines import KINDS
from mesh.lab.poll import wait_until
from tests.test_registry_docker import REGISTRY, registry_tags, start_host

pytestmark = [pytest.mark.docker, pytest.mark.netns, pytest.mark.slow]

ROUNDS = 6
RECEIVERS = 3


@pytest.mark.parametrize("kind", ["28.5-containerd", "20.10"])
def test_every_pull_right_after_a_remote_push_succeeds(network, engines, workdir, kind) -> None:  # type: ignore[no-untyped-def]
    a = start_host(network, engines, workdir, "a", kind=KINDS[kind])
    seeds = f"{a.host.address}:7611"
    receivers = [
        start_host(network, engines, workdir, f"r{i}", seeds=seeds, kind=KINDS[kind])
        for i in range(RECEIVERS)
    ]
    hosts = [a, *receivers]
    try:
        for r in receivers:
            wait_until(lambda r=r: len(r.node.api()["peers"]) >= 1, 20, what=f"{r.host.name} joins")
        import_base(a.engine)
        context = workdir / "ctx"
        context.mkdir()
        failures: list[str] = []
        with concurrent.futures.ThreadPoolExecutor(RECEIVERS) as pool:
            for round_ in range(ROUNDS):
                image = f"{REGISTRY}/app/burst:{round_}"
                (context / "Dockerfile").write_text(
                    f"FROM base:1\nRUN dd if=/dev/urandom of=/payload bs=1M count=4 && echo {round_} > /n\n"
                )
                a.engine.cli("build", "--network", "none", "-t", image, str(context))
                pushed = a.engine.cli("push", image).stdout
                digest = next(w for w in pushed.split() if w.startswith("sha256:"))

                def pull(r, image=image, digest=digest, round_=round_) -> str:  # type: ignore[no-untyped-def]
                    # The moment this host's node knows the tag: that is when a CI job would pull.
                    wait_until(
                        lambda: registry_tags(r.node).get(image.split("/", 1)[1]), 10, 0.02, what="tag known"
                    )
                    result = r.engine.cli("pull", image, check=False)
                    if result.returncode != 0:
                        return f"{r.host.name} round {round_}: {result.stderr.strip()}"
                    found = r.engine.cli("image", "inspect", "--format", "{{json .RepoDigests}}", image)
                    return "" if digest in found.stdout else f"{r.host.name} round {round_}: wrong digest"

                failures += [f for f in pool.map(pull, receivers) if f]
        print(f"{ROUNDS * RECEIVERS - len(failures)} of {ROUNDS * RECEIVERS} pulls right after a push passed")
        assert not failures, "\n".join(failures)
    finally:
        for h in reversed(hosts):
            h.node.stop()
            if os.environ.get("CACHEMESH_TEST_LOGS"):
                print(h.node.tail(100))

"""Bursts whose receivers already hold something, on real namespaced hosts, on both image stores.

The case an autoscaler makes: new hosts hold the base and want the layers on top. The stream each
gets is a delta, and relays must still spread it (a receiver relays to those its delta covers),
so a burst of four is served mostly by relays, not by the source four times. The same on the
registry path, where every host pulls through its own node at the same moment. A mixed burst (some
hold the base, some nothing, some an older build) must leave every receiver with the whole image:
a stream that left out a layer the receiver lacks would not load, so the image being there, with
the source's ID, is the check.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.lab.dockerd import Dockerd, available
from mesh.lab.engines import KINDS
from mesh.lab.fanout import TAG, BurstLab
from mesh.lab.netns import Network
from mesh.lab.poll import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.netns, pytest.mark.slow]

MBIT = 100
RECEIVERS = ("r1", "r2", "r3", "r4")


@pytest.fixture(scope="module", params=["28.5-overlay2", "28.5-containerd"])
def lab(request: pytest.FixtureRequest) -> Iterator[BurstLab]:
    reason = available()
    if reason:
        pytest.skip(reason)
    kind = KINDS[request.param]
    network = Network()
    engines: list[Dockerd] = []
    with tempfile.TemporaryDirectory(prefix="cachemesh-held-", dir="/tmp") as tmp:
        workdir = Path(tmp)

        def make_engine(name: str, netns: str, kind=kind) -> Dockerd:  # type: ignore[no-untyped-def]
            engine = Dockerd(workdir / f"engine-{name}", netns=netns, name=name, kind=kind).start()
            engines.append(engine)
            return engine

        burst = BurstLab(network, make_engine, workdir, kind, mbit=MBIT)
        try:
            for name in ("src", *RECEIVERS):
                burst.add(name)
            yield burst
        finally:
            for h in burst.hosts.values():
                if h.node is not None:
                    h.node.stop()
            for engine in engines:
                engine.destroy()
            network.destroy()


def run_burst(lab: BurstLab, held: dict[str, str]) -> tuple[str, dict[str, list[tuple[str, bool]]], float]:
    """Each receiver given its held set, a fresh image on the source, the burst; (the image, each
    receiver's pulls as (source, from a relay), seconds until every receiver held it)."""
    image = lab.make_layered(8, 24)
    for name, what in held.items():
        lab.hold(name, what)
    names = ["src", *RECEIVERS]
    try:
        for name in names:
            lab.start(name)
        lab.wait_joined(names)
        started = lab.burst()

        def everywhere() -> bool:
            return all(lab.hosts[r].engine.image_id(TAG) for r in RECEIVERS)

        wait_until(everywhere, 90, 0.1, what="the burst's image on every receiver")
        elapsed = time.monotonic() - started
        # Each engine verified every layer against the config on load; the ID is the source's.
        assert {r: lab.hosts[r].engine.image_id(TAG) for r in RECEIVERS} == {r: image for r in RECEIVERS}
        wait_until(lambda: all(lab.sources_used(r) for r in RECEIVERS), 10, 0.05, what="every pull logged")
        return image, {r: lab.sources_used(r) for r in RECEIVERS}, elapsed
    finally:
        print(lab.logs())
        for name in names:
            lab.stop(name)
        lab.reset(list(RECEIVERS))
        lab.hosts["src"].engine.cli("rmi", "-f", "hold:1", check=False)


def test_receivers_holding_the_base_are_served_by_relays(lab: BurstLab) -> None:
    _, pulls, elapsed = run_burst(lab, {r: "base" for r in RECEIVERS})
    print(f"{lab.kind.name}: 4 receivers holding the base in {elapsed:.1f}s: {pulls}")
    assert all(len(p) == 1 for p in pulls.values()), pulls  # one pull each: nothing retried
    # Served by a peer, not the source: a relay, or a receiver that finished before it asked.
    from_relays = [r for r, p in pulls.items() if p[0][0] != "src"]
    assert len(from_relays) >= 3, pulls
    # A tree: following sources from any receiver reaches the source without a cycle.
    parents = {r: p[0][0] for r, p in pulls.items()}
    for r in parents:
        seen, at = set(), r
        while at != "src":
            assert at not in seen, parents
            seen.add(at)
            at = parents[at]


def test_a_mixed_burst_leaves_every_receiver_whole(lab: BurstLab) -> None:
    held = {"r1": "base", "r2": "nothing", "r3": "older", "r4": "base"}
    _, pulls, elapsed = run_burst(lab, held)
    print(f"{lab.kind.name}: mixed burst {held} in {elapsed:.1f}s: {pulls}")
    # A receiver holding nothing can be served only by a holder or a relay of a full stream: any
    # relay that served it must itself have spooled everything (else its image would not load).
    assert all(p for p in pulls.values()), pulls
    assert any(relay for p in pulls.values() for _, relay in p), pulls  # not a star


def test_pulls_through_each_hosts_node_at_once_are_served_mostly_by_relays(lab: BurstLab) -> None:
    """The registry path: four `docker pull`s through their own nodes at the same moment. The
    source's node sends the 24 MB layer about once, not four times: the others come from the
    peers it handed the fetches on to. Each engine checked every blob's digest as it pulled."""
    lab.make_layered(8, 24)
    held = dict.fromkeys(RECEIVERS, "base")
    try:
        lab.prepare_registry(list(RECEIVERS), held)
        elapsed, copies = lab.registry_burst(list(RECEIVERS), held, 24 << 20)
    finally:
        print(lab.logs())
        lab.hosts["src"].engine.cli("rmi", "-f", "hold:1", check=False)
    print(
        f"{lab.kind.name}: 4 pulls through their own nodes in {elapsed:.1f}s; "
        f"the source sent {copies:.2f} copies"
    )
    assert copies <= 2.0  # a star sends 4

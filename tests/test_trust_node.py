"""Trust classes in running nodes (in-process, over real TLS and HTTP, with the in-memory engine):
trusted T1 and T2, untrusted U1 and U2, `*:main` and `cache/*:main` protected.

An untrusted host's newer image under a protected name moves no tag anywhere, its own host's
included; its unprotected tags reach only untrusted hosts; forged, moved and replayed signatures
from a holder of the cluster secret are refused and counted while the mesh carries on; and the
same holds for registry tags. Without a key, nothing changes (the rest of the suite)."""

from __future__ import annotations

import base64
import io
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from rich.console import Console

from mesh.engine.fake import FakeEngine
from mesh.lab.poll import async_wait_until
from mesh.net.trust_keys import write_pair
from mesh.node.node import Node
from mesh.node.status import build_status
from mesh.protocol import wire
from mesh.protocol.trust import REFUSED_BAD_SIGNATURE, REFUSED_PROTECTED, REFUSED_REPLAYED, REFUSED_UNSIGNED
from mesh.ui.status_cli import print_status
from mesh.ui.status_page import render_html
from tests.inproc import has_image, start_node
from tests.test_registry_mesh import push, resolves

PROTECT = ("*:main", "cache/*:main")
TOKEN = b"push-token-0123456789abcdef"


def refused(node: Node, reason: str) -> float:
    return sum(
        sample.value
        for metric in node.metrics.registry.collect()
        if metric.name == "cachemesh_trust_claims_refused"
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels.get("reason") == reason
    )


class Fleet:
    def __init__(self, t1: Node, t2: Node, u1: Node, u2: Node, engines: dict[str, FakeEngine]) -> None:
        self.t1, self.t2, self.u1, self.u2 = t1, t2, u1, u2
        self.engines = engines

    @property
    def nodes(self) -> list[Node]:
        return [self.t1, self.t2, self.u1, self.u2]


@pytest.fixture
async def fleet(workdir: Path) -> AsyncIterator[Fleet]:
    keys = workdir / "keys"
    keys.mkdir()
    write_pair(keys / "trust.key", keys / "trust.pub")
    (keys / "token").write_bytes(TOKEN + b"\n")
    trusted = {
        "trust_key": str(keys / "trust.key"),
        "trust_pub": str(keys / "trust.pub"),
        "protect": PROTECT,
        "registry_push_token_file": str(keys / "token"),
    }
    untrusted = {"trust_pub": str(keys / "trust.pub"), "protect": PROTECT}
    engines = {name: FakeEngine() for name in ("t1", "t2", "u1", "u2")}
    t1 = await start_node(workdir, "t1", engine=engines["t1"], **trusted)
    seeds = (t1.peer_addr,)
    t2 = await start_node(workdir, "t2", engine=engines["t2"], seeds=seeds, **trusted)
    u1 = await start_node(workdir, "u1", engine=engines["u1"], seeds=seeds, **untrusted)
    u2 = await start_node(workdir, "u2", engine=engines["u2"], seeds=seeds, **untrusted)
    nodes = [t1, t2, u1, u2]
    try:
        await async_wait_until(
            lambda: all(len(n.core.membership.live_ids()) == 3 for n in nodes), 15, what="all see all"
        )
        yield Fleet(t1, t2, u1, u2, engines)
    finally:
        for node in reversed(nodes):
            await node.stop()


async def rounds(nodes: list[Node], n: int = 3) -> None:
    """Let every node plan `n` more times."""
    for _ in range(n):
        for node in nodes:
            before = node.puller.plan
            node.puller.poke()
            await async_wait_until(lambda p=before, x=node: x.puller.plan is not p, 5, what="a round")


async def test_an_untrusted_build_under_a_protected_name_moves_no_tag(fleet: Fleet) -> None:
    t1, t2, u1, u2 = fleet.t1, fleet.t2, fleet.u1, fleet.u2
    now = int(time.time())
    main = fleet.engines["t1"].build("app:main", [os.urandom(1000)], created=now - 100)
    await async_wait_until(
        lambda: all(has_image(n, main, "app:main") for n in fleet.nodes),
        15,
        what="main's app:main everywhere",
    )
    # A fork's pull request on U1: a newer app:main (the poison), and its own branch's tag.
    poison = fleet.engines["u1"].build("app:main", [os.urandom(1000)], created=now)
    branch = fleet.engines["u1"].build("app:pr-7", [os.urandom(1000)], created=now)
    await async_wait_until(lambda: has_image(u2, branch, "app:pr-7"), 15, what="the branch's tag on u2")
    # U1's own app:main goes back to main's: a protected name counts only from a signed claim.
    await async_wait_until(lambda: has_image(u1, main, "app:main"), 15, what="main's app:main back on u1")
    await rounds(fleet.nodes)
    for node in fleet.nodes:
        assert has_image(node, main, "app:main"), node.config.node_name
        assert not has_image(node, poison, "app:main"), node.config.node_name
    for node in (t1, t2):  # the branch reaches no trusted host: nothing there names it
        assert branch not in node.local.images and poison not in node.local.images
    assert has_image(u2, branch, "app:pr-7")
    assert refused(t2, REFUSED_UNSIGNED) >= 1 and refused(t2, REFUSED_PROTECTED) >= 1
    assert refused(u2, REFUSED_PROTECTED) >= 1 and refused(u2, REFUSED_UNSIGNED) == 0

    # The status document names each claim's publisher and class.
    trust = build_status(t2.parts.status_facts)["trust"]
    assert trust["mode"] == "trusted" and trust["protected"] == list(PROTECT) and trust["push_token"]
    rows = {(c["name"], c["publisher"]): c for c in trust["claims"] if c["kind"] == "image"}
    assert rows[("app:main", "t1")]["trust_class"] == "trusted" and rows[("app:main", "t1")]["believed"]
    assert rows[("app:main", "u1")] | {"target": ""} == {
        "kind": "image",
        "name": "app:main",
        "target": "",
        "publisher": "u1",
        "publisher_id": u1.node_id,
        "trust_class": "untrusted",
        "believed": False,
        "reason": "protected",
    }
    assert rows[("app:pr-7", "u1")]["reason"] == "unsigned"
    html = render_html(build_status(t2.parts.status_facts))
    assert "Trust classes" in html and "this host is <b>trusted</b>" in html and "no: protected" in html
    out = io.StringIO()
    print_status(build_status(t2.parts.status_facts), Console(file=out, width=200))
    assert "this host is trusted" in out.getvalue() and "no: protected" in out.getvalue()
    assert build_status(u2.parts.status_facts)["trust"]["mode"] == "untrusted"

    # A trusted host's newer build still moves main everywhere: nothing was disturbed.
    later = fleet.engines["t2"].build("app:main", [os.urandom(1000)], created=now + 5)
    await async_wait_until(
        lambda: all(has_image(n, later, "app:main") for n in fleet.nodes), 15, what="t2's app:main everywhere"
    )


def _entry(node: Node, origin: Node, tag: str) -> tuple[str, wire.Tags, int, bytes]:
    """An entry of `origin`'s manifest as `node` holds it: what anyone with the cluster secret
    can learn by listening to gossip."""
    for image, (tags, stamp, sig) in node.core.view.entries(origin.node_id).items():
        if tag in tags:
            return image, tags, stamp, sig
    raise AssertionError(f"no entry of {origin.config.node_name} tags {tag}")


async def _send_as(sender: Node, to: Node, message: wire.Message) -> None:
    envelope = wire.Envelope(sender.node_id, sender.advertise, (message,), sender.core.incarnation)
    await sender.parts.client.exchange(to.advertise, envelope)


async def test_forged_moved_and_replayed_signatures_are_refused_and_counted(fleet: Fleet) -> None:
    t1, t2, u1, u2 = fleet.t1, fleet.t2, fleet.u1, fleet.u2
    now = int(time.time())
    old = fleet.engines["t1"].build("app:main", [os.urandom(1000)], created=now - 200)
    await async_wait_until(lambda: has_image(t2, old, "app:main"), 15, what="the old main on t2")
    old_entry = _entry(t2, t1, "app:main")
    current = fleet.engines["t1"].build("app:main", [os.urandom(1000)], created=now - 100)
    await async_wait_until(
        lambda: all(has_image(n, current, "app:main") for n in fleet.nodes), 15, what="main everywhere"
    )
    image, tags, stamp, sig = _entry(t2, t1, "app:main")
    assert sig and len(sig) == 64
    poison = fleet.engines["u1"].build("app:pr-9", [os.urandom(1000)], created=now)
    await async_wait_until(lambda: all(poison in n.core.view.metas() for n in (t2, u2)), 15, what="metas")
    before = {n.config.node_name: refused(n, REFUSED_BAD_SIGNATURE) for n in (t2, u2)}

    # U1 holds the cluster secret, not the key. It speaks for T1 in gossip: T1's manifest at a
    # later version (ahead of T1's own, so no real update overtakes it meanwhile), with app:main
    # on the poison, signed by garbage, then by T1's own signature moved from main's entry, then
    # by nothing but a malformed field.
    version = t2.core.manifests.version_of(t1.node_id) + 100
    forged = [
        wire.Entry(poison, ("app:main",), version + 1, os.urandom(64)),
        wire.Entry(poison, ("app:main",), stamp, sig),
        wire.Entry(poison, ("app:main",), version + 3, b"\x01"),
    ]
    for target in (t2, u2):
        for n, entry in enumerate(forged):
            update = wire.ManifestUpdate(t1.node_id, version + n, version + n + 1, (entry,))
            await _send_as(u1, target, update)
    await async_wait_until(
        lambda: all(refused(n, REFUSED_BAD_SIGNATURE) > before[n.config.node_name] for n in (t2, u2)),
        10,
        what="the forged claims refused",
    )
    # A replay: T1's manifest as it was, with the old signed claim, hiding the current one. While
    # the old entry's change is remembered (its tombstone or newer stamp) the copy drops it by
    # itself; once the tombstone's time has passed only the trust check stands in the way.
    for node in (t2, u2):
        node.core.manifests.expire(time.monotonic() + node.config.timings.tombstone_ttl + 1)
    replay = wire.ManifestDelta(t1.node_id, 0, version + 10, True, 0, (wire.Entry(*old_entry),))
    for target in (t2, u2):
        await _send_as(u1, target, replay)
    await async_wait_until(
        lambda: all(refused(n, REFUSED_REPLAYED) >= 1 for n in (t2, u2)), 10, what="the replay refused"
    )
    await rounds([t2, u2])
    for node in (t2, u2):
        assert has_image(node, current, "app:main"), node.config.node_name
        assert not has_image(node, poison, "app:main")
    assert poison not in t2.local.images  # U2 holds it as the untrusted app:pr-9 it is
    # The mesh carries on: every node alive, and a new trusted build still spreads.
    assert all(len(n.core.membership.live_ids()) == 3 for n in fleet.nodes)
    fresh = fleet.engines["t2"].build("tool:main", [os.urandom(1000)], created=now)
    await async_wait_until(
        lambda: all(has_image(n, fresh, "tool:main") for n in fleet.nodes), 15, what="a new build spreads"
    )


def _basic(token: bytes) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(b"ci:" + token).decode()}


async def test_registry_tags_follow_the_same_classes(fleet: Fleet) -> None:
    t1, t2, u1, u2 = fleet.t1, fleet.t2, fleet.u1, fleet.u2
    async with aiohttp.ClientSession(headers=_basic(TOKEN)) as trusted, aiohttp.ClientSession() as fork:
        main = await push(trusted, t1, "cache/app:main", [b'{"layers": []}', os.urandom(2000)])
        for node in fleet.nodes:
            await async_wait_until(
                lambda n=node: _is(resolves(trusted, n, "cache/app:main"), main), 10, what="main's cache"
            )
        # The fork's job on U1: a protected name is DENIED outright (no host would believe it)...
        name, _, tag = "cache/app:main".rpartition(":")
        async with fork.put(
            f"http://{u1.registry_addr}/v2/{name}/manifests/{tag}",
            data=b'{"schemaVersion": 2}',
            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        ) as r:
            assert r.status == 403
            body = await r.json()
        assert body["errors"][0]["code"] == "DENIED" and "protected" in body["errors"][0]["message"]
        # ...and its own branch's cache is taken and reaches the other untrusted host only.
        branch = await push(fork, u1, "cache/app:pr-7", [b'{"layers": [1]}', os.urandom(2000)])
        await async_wait_until(
            lambda: _is(resolves(fork, u2, "cache/app:pr-7"), branch), 10, what="the branch's cache on u2"
        )
        await rounds([t1, t2])
        for node in (t1, t2):
            assert await resolves(trusted, node, "cache/app:pr-7") is None
            assert "cache/app:pr-7" not in node.registry.resolve()
        # A push without the token to a trusted host is UNAUTHORIZED, with a challenge and what to do.
        async with fork.post(f"http://{t2.registry_addr}/v2/cache/app/blobs/uploads/") as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"].startswith('Bearer realm="http://')
            error = (await r.json())["errors"][0]
        assert error["code"] == "UNAUTHORIZED" and "--registry-push-token-file" in error["message"]
        # Pulls stay open on every host: U1 reads main's cache, T2 the content of U1's by digest.
        assert await resolves(fork, u1, "cache/app:main") == main
        async with fork.get(f"http://{t2.registry_addr}/v2/cache/app/manifests/{branch}") as r:
            assert r.status == 200
    assert refused(t2, REFUSED_UNSIGNED) >= 1


async def _is(found: object, expected: str) -> bool:
    return await found == expected  # type: ignore[misc]


async def test_a_bad_key_file_stops_the_node_with_why(workdir: Path) -> None:
    bad = workdir / "bad.key"
    bad.write_text("not a key\n")
    with pytest.raises(ValueError, match=r"--trust-key file .* is not an unencrypted PEM private key"):
        await start_node(workdir, "n", trust_key=str(bad))

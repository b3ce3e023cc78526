"""Tag rollbacks in running nodes (in-process, over real HTTP, with the in-memory engine): a tag
moved on its origin to an older shared image moves on every node, the origin included, stays
there round after round, never moves a newer build of a host's own, gives way to a later build,
and outlives its origin."""

from __future__ import annotations

import os
import time

from mesh.engine.fake import FakeEngine
from mesh.lab.poll import async_wait_until
from mesh.node.node import Node
from mesh.node.status import build_status
from tests.inproc import has_image, start_node


async def rounds(nodes: list[Node], n: int = 3) -> None:
    """Let every node plan `n` more times, and check that no plan moves a tag or pulls."""
    for _ in range(n):
        for node in nodes:
            before = node.puller.plan
            node.puller.poke()
            await async_wait_until(lambda p=before, x=node: x.puller.plan is not p, 5, what="a round")
            plan = node.puller.plan
            assert plan is not None and plan.tags == [] and plan.pulls == [] and not node.puller.active


async def test_a_rollback_on_the_origin_moves_every_node_and_stays(workdir):
    ea = FakeEngine()
    now = int(time.time())
    old = ea.build("app:41", [os.urandom(1000)], created=now - 100)
    await ea.tag(old, "app:latest")
    a = await start_node(workdir, "a", engine=ea)
    b = await start_node(workdir, "b", seeds=(a.peer_addr,))
    c = await start_node(workdir, "c", seeds=(a.peer_addr,))
    nodes = [a, b, c]

    async def all_tag(image: str, what: str) -> None:
        await async_wait_until(lambda: all(has_image(n, image, "app:latest") for n in nodes), 15, what=what)

    try:
        await all_tag(old, "app:41 as latest everywhere")
        new = ea.build("app:42", [os.urandom(1000)], created=now - 50)
        await ea.tag(new, "app:latest")
        await all_tag(new, "app:42 as latest everywhere")

        # The rollback: on the origin, app:latest back to the older app:41.
        await ea.tag(old, "app:latest")
        await all_tag(old, "the rollback on every node")
        origin_set = a.local.tagsets["app:latest"]
        assert origin_set.image == old and origin_set.at > (now - 50) * 1000
        await async_wait_until(
            lambda: all(n.local.tagsets.get("app:latest") == origin_set for n in (b, c)), 5, what="adopted"
        )
        await rounds(nodes)  # no flip-flop
        assert all(has_image(n, old, "app:latest") and has_image(n, new, "app:42") for n in nodes)
        assert b.core.view.status(a.node_id).tagsets == {"app:latest": origin_set}
        shown = build_status(c.parts.status_facts)
        assert shown["tag_sets"] == [{"tag": "app:latest", "image": old, "set_at": origin_set.at / 1000}]
        assert shown["tags_kept"] == []

        # A host that joins with its own build under the tag, newer than app:41 though older than
        # the rollback's claim (a clock behind the origin's), keeps it: an image from the mesh
        # never moves a tag off a newer build of the host's own.
        ed = FakeEngine()
        mine = ed.build("app:latest", [os.urandom(1000)], created=now - 30)
        d = await start_node(workdir, "d", engine=ed, seeds=(a.peer_addr,))
        try:
            await async_wait_until(lambda: has_image(d, old, "app:41"), 15, what="app:41 on d")
            await rounds([d])
            assert d.puller.plan is not None and d.puller.plan.kept == ["app:latest"]
            assert has_image(d, mine, "app:latest") and not d.local.tagsets
            assert all(has_image(n, old, "app:latest") for n in nodes)
        finally:
            await d.stop()

        # A build after the rollback takes the tag, and the sets go.
        newer = ea.build("app:43", [os.urandom(1000)], created=origin_set.at // 1000 + 1)
        await ea.tag(newer, "app:latest")
        await all_tag(newer, "the build after the rollback everywhere")
        await async_wait_until(lambda: not any(n.local.tagsets for n in nodes), 5, what="sets dropped")

        # Rolled back again: app:43 claims the next whole second, likely still ahead of the clock,
        # and the move takes anyway, at least a millisecond past that claim. It outlives its origin.
        await ea.tag(new, "app:latest")
        await all_tag(new, "the second rollback on every node")
        assert a.local.tagsets["app:latest"].at >= (origin_set.at // 1000 + 1) * 1000 + 1
        await async_wait_until(
            lambda: all(n.local.tagsets.get("app:latest") == a.local.tagsets["app:latest"] for n in (b, c)),
            5,
            what="second set adopted",
        )
        await a.stop()
        nodes = [b, c]
        await async_wait_until(
            lambda: all(a.node_id not in {p.id for p in n.core.view.live_peers()} for n in nodes),
            10,
            what="a gone",
        )
        await rounds(nodes)
        assert all(has_image(n, new, "app:latest") for n in nodes)
    finally:
        for node in (a, b, c):
            await node.stop()

"""The disk budget in running nodes (in-process, over real HTTP, with the in-memory engine):
the newest mesh content that fits is kept, older content is evicted and never pulled back, the
host's own images and what containers use are untouched, and peers stop seeing evicted images."""

from __future__ import annotations

import os

import aiohttp

from mesh.engine.fake import FakeEngine
from mesh.lab.poll import async_wait_until
from mesh.protocol import oci
from mesh.registry import upkeep
from tests.inproc import has_image, start_node
from tests.test_registry_mesh import digest_of, push

APP = 10_000  # bytes each app adds over the base


async def test_many_images_into_a_small_budget_keep_the_newest_and_never_churn(workdir):
    ea, eb = FakeEngine(), FakeEngine()
    base = ea.build("base:1", [os.urandom(1000)], created=1000)
    apps = [ea.build(f"app:{i}", [os.urandom(APP)], parent=base, created=1001 + i) for i in range(6)]
    mine = eb.build("mine:1", [os.urandom(50_000)], created=999)  # built on B: not the mesh's
    eb.containers_of.add(mine)
    a = await start_node(workdir, "a", engine=ea)
    # Room for the base and three apps.
    b = await start_node(
        workdir,
        "b",
        engine=eb,
        seeds=(a.peer_addr,),
        disk_budget=1000 + 3 * APP + 500,
        disk_check_interval=0.2,
    )
    try:
        newest = apps[-3:]
        await async_wait_until(
            lambda: all(has_image(b, i) for i in newest) and has_image(b, base, "base:1"),
            15,
            what="newest on b",
        )
        await async_wait_until(lambda: b.readiness.ready, 10, what="b ready with the rest skipped")
        assert not any(has_image(b, i) for i in apps[:3])  # older ones were never pulled
        pulls = len(b.puller.recent)
        assert pulls == 3  # the three newest (the base came with the first one's chain), nothing else

        # A newer build: it comes in, the least recently used app goes, and stays gone.
        app7 = ea.build("app:7", [os.urandom(APP)], parent=base, created=2000)
        await async_wait_until(lambda: has_image(b, app7) and not has_image(b, newest[0]), 15, what="swap")
        assert newest[0] in b.local.evicted and b.disk.evictions["budget"] == 1
        await async_wait_until(
            lambda: newest[0] not in a.core.view.holdings(b.node_id), 10, what="a sees the eviction"
        )
        for _ in range(3):  # steady state: planner and disk rounds change nothing
            before, check = b.puller.plan, b.disk.last
            b.puller.poke()
            b.disk.poke()
            await async_wait_until(
                lambda p=before, c=check: b.puller.plan is not p and b.disk.last is not c, 5, what="a round"
            )
            assert not b.puller.active and not b.disk.last.evict
        assert len(b.puller.recent) == pulls + 1  # only app:7 came in: no re-pulls
        assert has_image(b, mine, "mine:1")  # the host's own image is untouched
        status = b.disk.status()
        assert status["budget"] == 1000 + 3 * APP + 500 and status["held"] <= status["budget"]
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://{b.status_addr}/") as r:
                page = await r.text()
            async with session.get(f"http://{b.status_addr}/metrics") as r:
                metrics = await r.text()
        assert "brought by the mesh of a 31.5 kB budget" in page and "evicted: 1 for the budget" in page
        assert 'cachemesh_evictions_total{kind="image",reason="budget"} 1.0' in metrics
        assert "cachemesh_disk_budget_bytes 31500.0" in metrics
    finally:
        await b.stop()
        await a.stop()


async def test_images_in_use_and_what_local_builds_stand_on_are_never_evicted(workdir):
    ea, eb = FakeEngine(), FakeEngine()
    base = ea.build("base:1", [os.urandom(1000)], created=1000)
    old = ea.build("old:1", [os.urandom(APP)], parent=base, created=1001)
    a = await start_node(workdir, "a", engine=ea)
    b = await start_node(workdir, "b", engine=eb, seeds=(a.peer_addr,), disk_check_interval=0.2)
    try:
        await async_wait_until(lambda: has_image(b, old) and has_image(b, base), 15, what="old on b")
        eb.containers_of.add(old)  # a container made from it
        built_here = eb.build("local:1", [b"local step"], parent=base, created=3000)
        await async_wait_until(lambda: has_image(b, built_here), 5, what="b's own build seen")
        b.disk.config = b.disk.config.replace(disk_budget=100)  # far below what is held
        b.disk.poke()
        await async_wait_until(
            lambda: b.disk.last is not None and b.disk.last.held_bytes > 100, 5, what="check"
        )
        result = await b.disk.check()
        assert not result.evict and result.pinned_bytes >= 1000 + APP
        assert has_image(b, old) and has_image(b, base) and has_image(b, built_here)
    finally:
        await b.stop()
        await a.stop()


async def test_registry_content_under_the_budget_keeps_every_blob_of_a_kept_manifest(workdir):
    node = await start_node(workdir, "r", disk_budget=10_000 + 2 * 21_000, disk_check_interval=60)
    shared = os.urandom(10_000)  # a layer every manifest references: kept while any of them is
    try:
        async with aiohttp.ClientSession() as session:
            pushed = {}
            for i in range(4):
                pushed[i] = await push(session, node, f"cache/app:{i}", [b"{}", shared, os.urandom(20_000)])
            blobs = {i: node.registry.parsed(d).blobs for i, d in pushed.items()}  # type: ignore[union-attr]
            result = await node.disk.check()
            assert {e.id for e in result.evict} == {pushed[0], pushed[1]}
            for i in (2, 3):
                assert all(node.registry.store.has(b) for b in blobs[i]) and node.registry.complete(pushed[i])
            for i in (0, 1):
                assert not node.registry.store.has(pushed[i]) and not node.registry.store.has(blobs[i][2])
            assert node.registry.store.has(digest_of(shared))
            entries, _ = node.registry.announcement()
            assert oci.entry_key(pushed[0]) not in entries and oci.entry_key(pushed[3]) in entries

            # A client reads app:2: it is now more recently used than app:3, which goes for app:4.
            async with session.get(f"http://{node.registry_addr}/v2/cache/app/manifests/2") as r:
                assert r.status == 200
            pushed[4] = await push(session, node, "cache/app:4", [b"{}", shared, os.urandom(20_000)])
            result = await node.disk.check()
            assert [e.id for e in result.evict] == [pushed[3]]
            assert node.registry.complete(pushed[2]) and node.registry.complete(pushed[4])
            assert node.disk.status()["evictions"] == {"budget": 3}
            assert node.registry.evicted == {pushed[0], pushed[1], pushed[3]}  # kept on disk too
            assert upkeep.load_evicted(node.registry.store) == node.registry.evicted
    finally:
        await node.stop()

"""The engine watcher: when engine events lead to a rescan (mesh/node/local_images.py)."""

from __future__ import annotations

import asyncio
import time

from mesh.config import Config
from mesh.engine.fake import FakeEngine
from mesh.lab.poll import async_wait_until
from mesh.node.local_images import LocalImages
from mesh.node.persistence import NodeState


class CountingEngine(FakeEngine):
    def __init__(self) -> None:
        super().__init__()
        self.listings = 0

    async def images(self):  # type: ignore[no-untyped-def]
        self.listings += 1
        return await super().images()


async def test_a_tag_after_a_quiet_spell_is_seen_at_once_and_a_burst_costs_two_scans(workdir):
    engine = CountingEngine()
    config = Config.local(event_debounce=1.0, rescan_interval=3600.0, data_dir=str(workdir))
    changes: list[float] = []
    local = LocalImages(
        config,
        engine,
        NodeState(str(workdir)),
        on_change=lambda: changes.append(0),
        on_error=lambda: None,
        mesh_layers=set,
        winning_sets=dict,
    )
    watcher = asyncio.create_task(local.run())
    try:
        await async_wait_until(lambda: local.scanned, 5, what="first scan")
        await async_wait_until(lambda: bool(engine._subscribers), 5, what="watching events")
        started = time.monotonic()
        image = engine.build("app:1", [b"layer"])
        await async_wait_until(lambda: image in local.images, 0.9, what="app:1 seen before the debounce")
        listings = engine.listings
        steps = [engine.build(f"step:{n}", [b"step %d" % n]) for n in range(10)]  # a build's burst
        await async_wait_until(lambda: all(s in local.images for s in steps), 5, what="the burst seen")
        assert engine.listings == listings + 1  # one scan, once the burst had been quiet a second
        assert time.monotonic() - started >= 1.0
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


class StaleListingEngine(FakeEngine):
    """Takes its listing the moment it is asked, and answers only when released: a scan under
    way while the node tags."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.release.set()
        self.listed = asyncio.Event()

    async def images(self):  # type: ignore[no-untyped-def]
        listing = await super().images()
        self.listed.set()
        await self.release.wait()
        return listing


def local_over(engine: FakeEngine, workdir) -> LocalImages:  # type: ignore[no-untyped-def]
    config = Config.local(event_debounce=1.0, rescan_interval=3600.0, data_dir=str(workdir))
    return LocalImages(
        config,
        engine,
        NodeState(str(workdir)),
        on_change=lambda: None,
        on_error=lambda: None,
        mesh_layers=set,
        winning_sets=dict,
    )


async def test_a_tag_the_node_set_is_seen_at_once_and_a_scan_begun_before_it_does_not_undo_it(workdir):
    engine = StaleListingEngine()
    image = engine.build("", [b"layer"])
    local = local_over(engine, workdir)
    await local.rescan()
    assert local.images[image].tags == ()

    engine.release.clear()
    engine.listed.clear()
    stale = asyncio.create_task(local.rescan())  # lists before the tag, answers after it
    await engine.listed.wait()
    await engine.tag(image, "app:1")
    local.note_tagged(image, "app:1")
    assert local.images[image].tags == ("app:1",)
    engine.release.set()
    await stale
    assert local.images[image].tags == ("app:1",)

    await engine.delete("app:1")  # the operator untags and removes it: the engine's word is the last
    await local.rescan()
    assert image not in local.images


async def test_a_noted_tag_the_engine_lost_before_the_next_scan_began_is_not_kept(workdir):
    engine = FakeEngine()
    image = engine.build("", [b"layer"])
    other = engine.build("", [b"other"])
    local = local_over(engine, workdir)
    await local.rescan()
    await engine.tag(image, "app:1")
    local.note_tagged(image, "app:1")
    await engine.tag(other, "app:1")  # moved on by someone else after the node's tag
    await local.rescan()
    assert local.images[image].tags == () and local.images[other].tags == ("app:1",)

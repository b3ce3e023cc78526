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

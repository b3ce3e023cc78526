"""Keeps this node's view of its own engine current: scans, engine events, evictions.

Engine events (tag, untag, delete, load, import, pull) trigger a rescan after a short debounce, so
a build's burst of events costs one scan and the manifest changes within a second. A periodic
rescan backs up a missed event. If the engine goes away (restart, socket gone), the watcher backs
off and reconnects, and the first scan after it returns catches up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from mesh.config import Config
from mesh.engine.base import Engine, EngineError, LocalImage, chain_ids
from mesh.node.persistence import NodeState
from mesh.protocol.planner import local_manifest
from mesh.protocol.wire import ImageMeta, Tags

log = logging.getLogger("cachemesh.engine")


class LocalImages:
    def __init__(
        self,
        config: Config,
        engine: Engine,
        state: NodeState,
        on_change: Callable[[dict[str, Tags], dict[str, ImageMeta]], None],
        on_error: Callable[[], None],
    ) -> None:
        self.config = config
        self.engine = engine
        self.state = state
        self.images: dict[str, LocalImage] = {}
        self.shared: dict[str, Tags] = {}
        self.evicted: dict[str, str] = state.evicted()
        self.scanned = False
        self.available = False
        self.last_error = ""
        self._on_change = on_change
        self._on_error = on_error

    def tags(self) -> dict[str, Tags]:
        return {i: img.tags for i, img in self.images.items()}

    def held_chains(self) -> set[str]:
        """The chain ID of every layer prefix of every image here: layers a pull can skip."""
        return {chain for image in self.images.values() for chain in chain_ids(image.meta.layers)}

    def metas(self) -> dict[str, ImageMeta]:
        return {i: img.meta for i, img in self.images.items()}

    async def rescan(self) -> None:
        images = await self.engine.images()
        self.images = {i.meta.id: i for i in images}
        shared, metas = local_manifest(
            ((i.meta, i.tags) for i in images), self.config.include, self.config.exclude
        )
        self.shared = shared
        back = [i for i in self.evicted if i in self.images]
        if back:  # rebuilt or pulled here again: no longer evicted
            for image in back:
                del self.evicted[image]
            self.state.save_evicted(self.evicted)
        self.scanned = True
        self._on_change(shared, metas)

    def _note(self, event: dict[str, object]) -> None:
        if event.get("Action") != "delete":
            return
        native = str(event.get("id") or "")
        image = next((k for k, i in self.images.items() if i.native == native), native)
        if self.shared.get(image):
            # The operator removed an image the mesh gave or shares: remember, so it is not pulled back.
            self.evicted[image] = self.shared[image][0]
            self.state.save_evicted(self.evicted)
            log.info(
                "%s (%s) was removed here; it will not be pulled back", image[:19], self.shared[image][0]
            )

    async def run(self) -> None:
        backoff = 0.5
        while True:
            try:
                await self.rescan()
                if not self.available:
                    log.info("engine reachable; %d images here", len(self.images))
                self.available, self.last_error, backoff = True, "", 0.5
                await self._watch()
            except EngineError as exc:
                if self.available or not self.last_error:
                    log.warning("engine unavailable: %s (retrying)", exc)
                self.available, self.last_error = False, str(exc)
                self._on_error()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def _watch(self) -> None:
        events = self.engine.events()
        pending: asyncio.Future[dict[str, object]] = asyncio.ensure_future(anext(events))
        dirty = False
        next_scan = time.monotonic() + self.config.rescan_interval
        try:
            while True:
                now = time.monotonic()
                timeout = self.config.event_debounce if dirty else max(0.0, next_scan - now)
                done, _ = await asyncio.wait({pending}, timeout=timeout)
                if pending in done:
                    try:
                        event = pending.result()
                    except StopAsyncIteration:
                        raise EngineError("engine event stream ended") from None
                    self._note(event)
                    dirty = True
                    pending = asyncio.ensure_future(anext(events))
                    continue
                await self.rescan()
                dirty = False
                next_scan = time.monotonic() + self.config.rescan_interval
        finally:
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
            await events.aclose()  # type: ignore[attr-defined]

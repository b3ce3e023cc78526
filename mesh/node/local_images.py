"""Keeps this node's view of its own engine current: scans, engine events, evictions, and what
of it the node shares (mesh.protocol.share decides; this reads the histories it needs).

Engine events (tag, untag, delete, load, import, pull) trigger a rescan: at once for the first
event after a quiet spell (a `docker tag`, or a build's first image, reaches peers without waiting),
then once a debounce after the last event of a burst, so a build's burst costs two scans. A periodic
rescan backs up a missed event. If the engine goes away (restart, socket gone), the watcher backs
off and reconnects, and the first scan after it returns catches up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from mesh.config import Config
from mesh.engine.base import Engine, EngineError, LocalImage, chain_ids
from mesh.node.persistence import NodeState
from mesh.protocol import tagsets
from mesh.protocol.share import Candidate, Decision, Step, share_manifest
from mesh.protocol.tagsets import TagSet
from mesh.protocol.wire import ImageMeta, Tags

log = logging.getLogger("cachemesh.engine")


class LocalImages:
    def __init__(
        self,
        config: Config,
        engine: Engine,
        state: NodeState,
        *,
        on_change: Callable[[], None],
        on_error: Callable[[], None],
        mesh_layers: Callable[[], set[str]],
        winning_sets: Callable[[], dict[str, TagSet]],
    ) -> None:
        """`on_change`: what this node shares changed (read `shared`, `shared_metas`); `on_error`:
        the engine failed; `mesh_layers`: chain IDs of the layers the rest of the mesh holds;
        `winning_sets`: tag -> the tag set that decided it in the puller's last plan."""
        self.config = config
        self.engine = engine
        self.state = state
        self.images: dict[str, LocalImage] = {}
        self.shared: dict[str, Tags] = {}
        self.shared_metas: dict[str, ImageMeta] = {}
        self.decisions: dict[str, Decision] = {}
        """Why each tagged local image is shared or kept here."""
        self.evicted: dict[str, str] = state.evicted()
        self.brought: dict[str, float] = state.brought()
        """Images the mesh brought here -> when last used (wall clock): what a budget may evict."""
        self.mesh_layers = mesh_layers
        self._scanned_tags, self.tagsets = state.tags()
        """Tags this node set on purpose (rollbacks), or adopted from the mesh: mesh.protocol.tagsets."""
        self.winning_sets = winning_sets
        self._histories: dict[str, list[Step]] = {}
        self._chains: dict[str, tuple[str, ...]] = {}
        self._evicted_at: dict[str, float] = {}
        self._tagged: dict[str, tuple[str, float]] = {}  # tag -> (image, when this node set it)
        self._scan_lock = asyncio.Lock()
        self.scanned = False
        self.available = False
        self.last_error = ""
        self._on_change = on_change
        self._on_error = on_error

    def tags(self) -> dict[str, Tags]:
        return {i: img.tags for i, img in self.images.items()}

    def held_chains(self) -> set[str]:
        """The chain ID of every layer prefix of every image here: layers a pull can skip."""
        return {chain for image in self.images.values() for chain in self.chains(image.meta)}

    def chains(self, meta: ImageMeta) -> tuple[str, ...]:
        found = self._chains.get(meta.id)
        if found is None:
            found = self._chains[meta.id] = tuple(chain_ids(meta.layers))
        return found

    def metas(self) -> dict[str, ImageMeta]:
        return {i: img.meta for i, img in self.images.items()}

    async def rescan(self) -> None:
        # One at a time: a scan that began before an eviction must not be the last word after it.
        async with self._scan_lock:
            await self._rescan()

    async def _rescan(self) -> None:
        started = time.monotonic()
        images = await self.engine.images()
        self.images = {i.meta.id: i for i in images}
        # A listing that began before one of this node's own tags does not show it yet.
        self._tagged = {tag: set_at for tag, set_at in self._tagged.items() if set_at[1] >= started}
        for tag, (tagged, _) in self._tagged.items():
            self.images = _with_tag(self.images, tagged, tag)
        images = list(self.images.values())
        self._note_tag_moves()  # before any await: a plan must never see a rollback without its set
        if self.config.share == "deps":
            for image in images:
                if image.tags and image.meta.id not in self._histories:
                    try:
                        self._histories[image.meta.id] = await self.engine.history(image.meta.id)
                    except EngineError as exc:  # removed meanwhile, or the engine hiccuped: next scan
                        log.debug("no history for %s: %s", image.meta.id[:19], exc)
        for key in [i for i in self._histories if i not in self.images]:
            del self._histories[key]
        for key in [i for i in self._chains if i not in self.images]:
            del self._chains[key]
        # Rebuilt or pulled here again: no longer evicted. Only by a listing that began after the
        # eviction: a scan already under way when the node evicted still lists the image.
        back = [i for i in self.evicted if i in self.images and self._evicted_at.get(i, 0.0) < started]
        if back:
            for key in back:
                del self.evicted[key]
            self.state.save_evicted(self.evicted)
        gone_brought = [i for i in self.brought if i not in self.images]
        if gone_brought:
            for key in gone_brought:
                del self.brought[key]
            self.state.save_brought(self.brought)
        self.scanned = True
        self._decide()
        self._on_change()

    def _note_tag_moves(self) -> None:
        scanned = {tag: (i.meta.id, i.meta.created) for i in self.images.values() for tag in i.tags}
        if scanned == self._scanned_tags:
            return
        winning = self.winning_sets()
        sets = tagsets.update(
            previous=self._scanned_tags,
            current=scanned,
            known=self.tagsets,
            winning=winning,
            now_ms=int(time.time() * 1000),
        )
        for tag, tagset in sets.items():
            if self.tagsets.get(tag) != tagset:
                how = "the mesh's rollback" if winning.get(tag) == tagset else "an older image here"
                log.info("%s now names %s, %s: the mesh follows it", tag, tagset.image[:19], how)
        self._scanned_tags, self.tagsets = scanned, sets
        self.state.save_tags(scanned, sets)

    def redecide(self) -> None:
        """Decide again what to share, with what the mesh holds now (a peer's manifest changed)."""
        if not self.scanned:
            return
        before = self.shared
        self._decide()
        if self.shared != before:
            self._on_change()

    def _decide(self) -> None:
        candidates = [
            Candidate(
                image.meta,
                image.tags,
                self.chains(image.meta),
                image.labels,
                self._histories.get(image.meta.id),
                image.meta.id in self.brought,
            )
            for image in self.images.values()
        ]
        self.shared, self.shared_metas, self.decisions = share_manifest(
            candidates,
            mode=self.config.share,
            in_mesh=self.mesh_layers() if self.config.share == "deps" else set(),
            include=self.config.include,
            exclude=self.config.exclude,
            previous=self.decisions,
        )

    def note_tagged(self, image: str, tag: str) -> None:
        """This node tagged `image` so: the plans that follow see it at once. A scan waits for a
        quiet spell after a burst of engine events, and on a busy host the plans in between tagged
        the image again and again (the soak: 7 times in a second)."""
        self._tagged[tag] = (image, time.monotonic())
        self.images = _with_tag(self.images, image, tag)

    def note_brought(self, images: list[str], now: float) -> None:
        """The mesh brought these images here (a pull and its chain)."""
        for image in images:
            self.brought[image] = max(now, self.brought.get(image, 0.0))
        self.state.save_brought(self.brought)

    def note_evicted(self, image: str, tag: str) -> None:
        """The node removed this image for space: not pulled back until a newer image takes its tag."""
        self.evicted[image] = tag
        self._evicted_at[image] = time.monotonic()
        self.brought.pop(image, None)
        self.state.save_evicted(self.evicted)
        self.state.save_brought(self.brought)

    def _note(self, event: dict[str, object]) -> None:
        if event.get("Action") != "delete":
            return
        native = str(event.get("id") or "")
        image = next((k for k, i in self.images.items() if i.native == native), native)
        if self.shared.get(image):
            # The operator removed an image the mesh gave or shares: remember, so it is not pulled back.
            self.evicted[image] = self.shared[image][0]
            self._evicted_at[image] = time.monotonic()
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
        last_event = float("-inf")
        next_scan = time.monotonic() + self.config.rescan_interval
        try:
            while True:
                now = time.monotonic()
                if dirty:
                    timeout = max(0.0, last_event + self.config.event_debounce - now)
                else:
                    timeout = max(0.0, next_scan - now)
                done, _ = await asyncio.wait({pending}, timeout=timeout)
                if pending in done:
                    try:
                        event = pending.result()
                    except StopAsyncIteration:
                        raise EngineError("engine event stream ended") from None
                    self._note(event)
                    pending = asyncio.ensure_future(anext(events))
                    previous, last_event = last_event, time.monotonic()
                    if dirty or last_event - previous < self.config.event_debounce:
                        dirty = True  # in a burst: scan once it has been quiet for the debounce
                        continue
                await self.rescan()
                dirty = False
                next_scan = time.monotonic() + self.config.rescan_interval
        finally:
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
            await events.aclose()  # type: ignore[attr-defined]


def _with_tag(images: dict[str, LocalImage], image: str, tag: str) -> dict[str, LocalImage]:
    """`images` with `tag` on `image` (and on no other: a name is on one image)."""
    if image not in images or tag in images[image].tags:
        return images
    out = {
        key: replace(held, tags=tuple(t for t in held.tags if t != tag)) if tag in held.tags else held
        for key, held in images.items()
    }
    out[image] = replace(out[image], tags=tuple(sorted((*out[image].tags, tag))))
    return out

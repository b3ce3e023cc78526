"""Keeps what the mesh brought onto this host within bounds: the disk budget and the watermarks.

Every few seconds (and after each pull), it works out with mesh.protocol.budget what mesh-brought
content stays: images the mesh pulled here and, through the registry, blobs it fetched or stored.
It evicts the rest, least recently used first, and tells the puller what not to pull. Above the
high watermark of the filesystem holding the engine's data root or the node's data dir, the budget
shrinks until use would be below the low watermark.

Never evicted: images built here (they are not the mesh's), images any container was created
from, images a kept image or a local build stands on, images being sent to a peer, and the blobs
of a kept registry manifest. An evicted image is untagged and removed without force (the engine
refuses while a container uses it), remembered so the mesh does not pull it back, and dropped from
the manifest this node announces, so peers stop choosing it as a source.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from mesh.config import Config
from mesh.engine.base import Engine, EngineError
from mesh.node.local_images import LocalImages
from mesh.protocol import budget
from mesh.protocol.budget import Fit, Item
from mesh.protocol.planner import ancestors
from mesh.protocol.wire import ImageMeta
from mesh.ui.status_doc import DiskDoc, EvictionDoc

log = logging.getLogger("cachemesh.disk")

NO_BUDGET = 1 << 62


@dataclass(frozen=True, slots=True)
class FsUse:
    path: str
    used: int
    total: int

    @property
    def fraction(self) -> float:
        return self.used / self.total if self.total else 0.0


def fs_use(path: str) -> FsUse | None:
    """Use of the filesystem holding `path` (as `df` counts it: blocks in use of those a
    non-root user may have), or None if the path is not visible here."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    total = (st.f_blocks - st.f_bfree + st.f_bavail) * st.f_frsize
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    return FsUse(path, used, total)


class RegistryContent(Protocol):
    """What the keeper needs of the registry store (mesh.registry.service.Registry)."""

    def disk_items(self) -> list[Item]: ...

    async def evict_manifest(self, digest: str, keep_parts: set[str]) -> int: ...


class DiskKeeper:
    def __init__(
        self,
        config: Config,
        engine: Engine,
        local: LocalImages,
        serving: Callable[[], Iterable[str]],
        metas: Callable[[], Mapping[str, ImageMeta]],
        registry: RegistryContent,
        on_evict: Callable[[str, str, int], None],
    ) -> None:
        """`serving`: images being sent to peers now (never evicted mid-send); `metas`: the
        mesh's image metadata; `on_evict(kind, reason, bytes)`: something was evicted."""
        self.config = config
        self.engine = engine
        self.local = local
        self._serving = serving
        self._metas = metas
        self.registry = registry
        self.containers: set[str] = set()
        self.last: Fit | None = None
        self.evictions: Counter[str] = Counter()
        """Evictions by reason (budget, watermark), for the status page."""
        self.evicted_bytes: Counter[str] = Counter()
        self.filesystems: list[FsUse] = []
        self.on_evict = on_evict
        self.recent: list[EvictionDoc] = []
        self.checks = 0
        self.limit_reason = ""
        """What sets the limit now: "budget", "watermark" (a filesystem is above --disk-high) or ""."""
        self._wake = asyncio.Event()
        self._data_root = ""
        self._registry_items: list[Item] = []  # read at each check, in a thread (file stats)
        self._warned_root = False

    @property
    def active(self) -> bool:
        return bool(self.config.disk_budget or self.config.disk_high)

    def poke(self) -> None:
        self._wake.set()

    # --- decisions -------------------------------------------------------------------------

    def _pinned(self) -> dict[str, str]:
        metas = self.local.metas()
        pins = {image: "a container uses it" for image in self.containers}
        for image in self._serving():
            for held in [image, *ancestors(image, metas)]:
                pins.setdefault(held, "being sent to a peer")
        return pins

    def items(self, wanted: Iterable[str] = ()) -> list[Item]:
        local, mesh = self.local.metas(), self._metas()
        images = budget.image_items(
            brought={i: t for i, t in self.local.brought.items() if i in local},
            wanted=wanted,
            metas=mesh,
            local=local,
            tagged={i for i, image in self.local.images.items() if image.tags},
            pinned=self._pinned(),
            wanted_scale=budget.size_scale(local, mesh, self.local.brought),
        )
        return [*images, *self._registry_items]

    def budget_now(self, items: list[Item]) -> tuple[int, str]:
        """The budget in force and why: the configured one, or less while a filesystem is above the
        high watermark."""
        limit, reason = self.config.disk_budget or NO_BUDGET, "budget"
        if not self.config.disk_high:
            return limit, reason
        mesh_bytes = budget.fit(items, NO_BUDGET).held_bytes
        for fs in self.filesystems:
            if budget.over_watermark(fs.used, fs.total, self.config.disk_high):
                shrunk = budget.watermark_budget(fs.used, fs.total, self.config.disk_low, mesh_bytes)
                if shrunk < limit:
                    limit, reason = shrunk, "watermark"
        return limit, reason

    def skip(self, wanted: list[str]) -> dict[str, str]:
        """Of the images the planner wants pulled, those that do not fit: image -> "" (the
        planner's `evicted` form: not pulled, not waited for)."""
        if not self.active or not wanted:
            return {}
        items = self.items(wanted)
        limit, _ = self.budget_now(items)
        return dict.fromkeys(budget.fit(items, limit).skip, "")

    # --- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Without a budget or watermarks this only measures (bytes held, for the status page)."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.disk_check_interval):
                    await self._wake.wait()
            self._wake.clear()
            if not self.local.scanned or not self.local.available:
                continue
            try:
                await self.check()
            except EngineError as exc:
                log.warning("disk check: %s", exc)
            except Exception:  # a bug here must not end the keeper: log it, and check again later
                log.exception("disk check failed")

    async def check(self) -> Fit:
        """One round: measure, decide, evict."""
        self.containers = await self.engine.containers()
        self._registry_items = await asyncio.to_thread(self.registry.disk_items)
        await self._measure()
        items = self.items()
        limit, reason = self.budget_now(items)
        self.limit_reason = reason if limit < NO_BUDGET else ""
        result = budget.fit(items, limit)
        self.last = result
        self.checks += 1
        kinds = {i.id: i for i in items}
        keep_parts = {part for i in items if i.id in result.keep for part in i.parts}
        evicted_any = False

        # Children before the images they stand on: the engine refuses to remove a parent first.
        def depth(eviction: budget.Eviction) -> int:
            held = self.local.images.get(eviction.id)
            return -len(held.meta.layers) if held else 0

        order = sorted(result.evict, key=depth)
        for eviction in order:
            item = kinds[eviction.id]
            if eviction.kind in ("manifest", "blob"):
                freed = await self.registry.evict_manifest(eviction.id, keep_parts)
                self._count(reason, eviction.kind, eviction.id, freed)
                continue
            if item.only_as_need or eviction.id not in self.local.images:
                continue  # untagged parents go with the image above them (the engine prunes them)
            if eviction.id in set(self._serving()):
                continue  # a peer is pulling it: next round
            evicted_any |= await self._evict_image(eviction.id, reason, eviction.bytes)
        if evicted_any:
            await self.local.rescan()  # the manifest drops them: peers stop choosing this node
            self.poke()  # measure again: the status shows what is held now
        return result

    async def _evict_image(self, image: str, reason: str, size: int) -> bool:
        held = self.local.images[image]
        tag = held.tags[0] if held.tags else ""
        # Withdrawn first: from here on the peer API refuses new saves of it.
        self.local.shared.pop(image, None)
        try:
            await self.engine.evict(image)
        except EngineError as exc:
            log.warning("cannot evict %s (%s): %s", image[:19], tag or "untagged", exc)
            return False
        self.local.note_evicted(image, tag)
        self._count(reason, "image", image, size)
        log.info(
            "evicted %s %s (%.1f MB, %s): the mesh will not bring it back",
            image[:19],
            tag,
            size / 1e6,
            "over the disk budget" if reason == "budget" else "above the high watermark",
        )
        return True

    def _count(self, reason: str, kind: str, ident: str, size: int) -> None:
        self.evictions[reason] += 1
        self.evicted_bytes[reason] += size
        self.on_evict(kind, reason, size)
        self.recent.insert(0, {"id": ident, "kind": kind, "reason": reason, "bytes": size, "at": time.time()})
        del self.recent[20:]

    async def _measure(self) -> None:
        if not self.config.disk_high:
            return
        if not self._data_root:
            with contextlib.suppress(EngineError):
                self._data_root = (await self.engine.info()).data_root
        paths = [self.config.data_dir]
        if self._data_root:
            paths.append(self._data_root)
        found: dict[int, FsUse] = {}
        for path in paths:
            use = await asyncio.to_thread(fs_use, path)
            if use is None:
                if path == self._data_root and not self._warned_root:
                    log.warning(
                        "the engine's data root %s is not visible here (a container without it "
                        "mounted?): the watermarks watch the data dir only",
                        path,
                    )
                    self._warned_root = True
                continue
            found.setdefault(os.stat(path).st_dev, use)
        self.filesystems = list(found.values())

    def status(self) -> DiskDoc:
        last = self.last
        return {
            "budget": self.config.disk_budget,
            "high": self.config.disk_high,
            "low": self.config.disk_low,
            "held": last.held_bytes if last else None,
            "kept": last.kept_bytes if last else None,
            "pinned": last.pinned_bytes if last else None,
            "limit_reason": self.limit_reason,
            "checks": self.checks,
            "evictions": dict(self.evictions),
            "evicted_bytes": dict(self.evicted_bytes),
            "recent_evictions": list(self.recent),
            "filesystems": [
                {"path": f.path, "used": f.used, "total": f.total, "fraction": round(f.fraction, 4)}
                for f in self.filesystems
            ],
        }

"""The registry of one node: the store, the mesh fetch, tags as the mesh agrees on them, warm-up.

The node feeds it the mesh through `MeshView` and publishes what it announces; the router asks it
for content. It knows peers only as addresses handed over by the view, and what it needs of the
node only as the small shapes in ports.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import IO

from mesh.net.contract import ContentStream
from mesh.protocol import oci
from mesh.protocol.budget import Item
from mesh.protocol.oci import TagState
from mesh.protocol.sources import Downstream, relay_to
from mesh.protocol.wire import ImageMeta, Tags
from mesh.registry import upkeep
from mesh.registry.errors import RegistryError
from mesh.registry.fetch import Fetch, Fetcher, windows
from mesh.registry.manifest import MAX_MANIFEST, Parsed, closure, parse
from mesh.registry.names import MAX_NAME as MAX_NAME_LEN
from mesh.registry.names import NAME, valid_tag
from mesh.registry.ports import Counters, MeshView, NoCounters, PeerContent, RegistrySettings
from mesh.registry.status import registry_status
from mesh.registry.store import CHUNK, Store, Upload
from mesh.ui.status_doc import RegistryDoc

log = logging.getLogger("cachemesh.registry")

HANDOFF_MIN_BYTES = 256 * 1024
"""Blobs smaller than this are served, never handed on: on a LAN a hand-off's extra round trip
costs more than sending them (256 KiB take 10 ms at 200 Mbit/s)."""
CONTENT_STORE = "oci"
"""The `store` of registry content streams for the hand-off rule: any node can relay any blob."""


class Registry:
    def __init__(
        self,
        settings: RegistrySettings,
        client: PeerContent,
        view: MeshView,
        counters: Counters | None = None,
    ) -> None:
        self.settings = settings
        self.view = view
        self.counters: Counters = counters or NoCounters()
        self.store = Store(settings.root)
        self.fetcher = Fetcher(
            self.store,
            client,
            self._holder_addrs,
            addr_of=view.addr,
            idle_timeout=settings.idle_timeout,
            rank=self._fetch_rank,
            on_bytes=self.counters.fetched,
            on_stored=lambda digest: self.changed(),
            on_change=lambda: self.view.publish(),
        )
        # Content streams going out to peers now, oldest first, and the requests handed to each
        # (mesh.protocol.sources.relay_to's `sending` and `routed`).
        self._sending: list[Downstream] = []
        self._routed: dict[Downstream, int] = {}
        self._parsed: dict[str, Parsed] = {}
        self._served: deque[str] = deque(maxlen=64)  # manifests clients read lately, oldest first
        self._served_count = 0
        self._announcement: tuple[dict[str, Tags], list[ImageMeta]] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.warm_errors: dict[str, str] = {}
        self.evicted: set[str] = upkeep.load_evicted(self.store)
        """Manifests evicted for space: warm-up leaves them be (no churn)."""

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="registry")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.fetcher.close()

    def poke(self) -> None:
        """The mesh's manifests changed: merge tags, warm up."""
        self._wake.set()

    def changed(self) -> None:
        """Local content or tags changed: announce again."""
        self._announcement = None
        self.view.publish()
        self._wake.set()

    def count_request(self, method: str, outcome: str) -> None:
        """A client's request was answered: `outcome` is "ok", a spec error code, or a status."""
        self.counters.request(method, outcome)

    # --- manifests -------------------------------------------------------------------------

    def parsed(self, digest: str) -> Parsed | None:
        """A held manifest's references (manifests are immutable: parsed once)."""
        cached = self._parsed.get(digest)
        if cached is not None:
            return cached
        media_type = self.store.media_type(digest)
        if media_type is None:
            return None
        try:
            parsed = parse(self.store.read(digest, MAX_MANIFEST), media_type)
        except (RegistryError, OSError):
            return None
        self._parsed[digest] = parsed
        return parsed

    def complete(self, digest: str) -> tuple[list[str], int] | None:
        """(referenced digests, total bytes) if this node holds `digest` and everything it needs."""
        found = closure(digest, self.parsed)
        if found is None or found[1]:
            return None
        total = self.store.size(digest) or 0
        for needed in found[0]:
            size = self.store.size(needed)
            if size is None:
                return None
            total += size
        return found[0], total

    def announcement(self) -> tuple[dict[str, Tags], list[ImageMeta]]:
        """Entries and metas for the local manifest: every manifest held completely, with the
        tags that point at it here."""
        if self._announcement is None:
            refs: dict[str, dict[str, int]] = {}
            for ref, state in self.store.all_tags().items():
                refs.setdefault(state.digest, {})[ref] = state.pushed_ms
            entries: dict[str, Tags] = {}
            metas: list[ImageMeta] = []
            for digest in self.store.manifests():
                held = self.complete(digest)
                if held is None:
                    continue
                entries[oci.entry_key(digest)] = oci.announce(digest, refs.get(digest, {}))
                metas.append(oci.registry_meta(digest, held[0], held[1]))
            self._announcement = entries, metas
        return self._announcement

    # --- tags ---------------------------------------------------------------------------------

    def resolve(self) -> dict[str, TagState]:
        """repo:tag -> state: every live peer's announcements, and this node's table where it
        announces the tag too (the manifest is held whole here). A tag adopted from a publisher
        that has left, whose manifest no live node holds whole, is announced by nobody: a node
        that joins later never learns it, so no node shows it (the mesh cannot serve it either)."""
        merged = oci.resolve(self.view.live_manifests().values())
        announced = self.announcement()[0]
        for ref, state in self.store.all_tags().items():
            if (ref not in merged or state > merged[ref]) and oci.entry_key(state.digest) in announced:
                merged[ref] = state
        return merged

    def tag(self, name: str, tag: str) -> TagState | None:
        own = self.store.tag(name, tag)
        remote = oci.resolve(self.view.live_manifests().values()).get(f"{name}:{tag}")
        if remote is not None and (own is None or remote > own):
            return remote
        return own

    async def push_tag(self, name: str, tag: str, digest: str) -> None:
        """A client pushed `name:tag`: it points at `digest` from now on, here and everywhere."""
        current = self.tag(name, tag)
        now_ms = int(time.time() * 1000)
        # Newest push wins: never stamp a push older than the state it replaces (clock skew).
        pushed = max(now_ms, current.pushed_ms + 1) if current is not None else now_ms
        await self.store.set_tag(name, tag, TagState(pushed, digest))
        self.changed()

    def may_push(self, ref: str) -> bool:
        return self.view.may_push(ref)

    async def merge_tags(self) -> bool:
        """Adopt tags the mesh moved: a newer push elsewhere wins over this node's table."""
        own = self.store.all_tags()
        moved = False
        for ref, state in oci.resolve(self.view.live_manifests().values()).items():
            current = own.get(ref)
            if current is None or state > current:
                name, _, tag = ref.rpartition(":")
                if not (NAME.fullmatch(name) and len(name) <= MAX_NAME_LEN and valid_tag(tag)):
                    continue  # a peer's garbage never becomes a path
                with contextlib.suppress(OSError):
                    await self.store.set_tag(name, tag, state)
                    moved = True
        if moved:
            self.changed()
        return moved

    # --- content --------------------------------------------------------------------------

    def _holder_addrs(self, digest: str) -> list[str]:
        manifests = self.view.live_manifests()
        nodes = oci.holders(digest, manifests, self.view.metas()) or self._named_here(digest, manifests)
        # Peers still fetching it serve what they have (docs/protocol.md, Bursts).
        relays = [n for n in self.view.fetching(digest) if n not in nodes]
        return self.view.sources(digest, nodes, relays)

    def _named_here(self, digest: str, manifests: Mapping[str, Mapping[str, Tags]]) -> list[str]:
        """Peers announcing a manifest that this node has parsed and that needs `digest`. A peer
        announces a manifest only once it holds all of it, so it holds the blob. This needs none
        of the gossiped metadata, which can arrive after the tag: a pull right after a push
        elsewhere reads the manifest, then its config, before the pusher's metadata is here."""
        keys = set()
        for manifest in dict.fromkeys([*reversed(self._served), *self._parsed]):  # read lately first
            found = closure(manifest, self.parsed)
            if found is not None and digest in found[0]:
                keys.add(oci.entry_key(manifest))
        if not keys:
            return []
        return [node for node, entries in manifests.items() if not keys.isdisjoint(entries)]

    def holds(self, digest: str) -> bool:
        """Whether this node holds `digest` (a blob or a manifest) whole."""
        return self.store.has(digest)

    def locate(self, digest: str) -> tuple[int, Fetch | None]:
        """(size, running fetch) for a blob: held here (no fetch), or being fetched from the mesh.
        Raises BLOB_UNKNOWN at once when no live peer holds it."""
        size = self.store.size(digest)
        if size is not None:
            return size, None
        fetch = self.fetcher.start(digest)
        return -1, fetch

    async def sized(self, digest: str) -> tuple[int, Fetch | None]:
        size, fetch = self.locate(digest)
        if fetch is None:
            return size, None
        await fetch.sized.wait()
        if fetch.size == 0:
            # Nothing to stream, so the answer would be whole with its headers: check it first.
            await fetch.wait_progress(0)
        if fetch.error is not None or fetch.size is None or fetch.done:
            if self.store.has(digest):  # finished between the two looks
                return self.store.size(digest) or 0, None
            raise fetch.error or RegistryError("BLOB_UNKNOWN", f"{digest} could not be fetched")
        return fetch.size, fetch

    async def windows(
        self, digest: str, fetch: Fetch | None, start: int, end: int
    ) -> AsyncIterator[tuple[IO[bytes], int, int]]:
        """(file, offset, count) windows of bytes [start, end): one for a held blob, several as a
        fetch from the mesh arrives."""
        if fetch is None:
            with open(self.store.path(digest), "rb") as fh:
                self.counters.served(end - start)
                yield fh, start, end - start
            return
        async for window in windows(fetch, self.store, start, end):
            yield window

    async def manifest(self, digest: str) -> tuple[bytes, str]:
        """A manifest by digest: held, or fetched from the mesh (whole: manifests are small)."""
        if digest in self.evicted:  # asked for again: it is wanted here after all
            self.evicted.discard(digest)
            upkeep.save_evicted(self.store, self.evicted)
        media_type = self.store.media_type(digest)
        if media_type is None:
            try:
                fetch = await self.fetcher.fetch(digest)
            except RegistryError as exc:
                raise RegistryError("MANIFEST_UNKNOWN", str(exc)) from None
            media_type = self.store.media_type(digest) or fetch.media_type
            if not media_type:
                raise RegistryError("MANIFEST_UNKNOWN", f"{digest} is a blob, not a manifest")
        data = self.store.read(digest, MAX_MANIFEST)
        upkeep.touch(self.store, digest)
        if digest in self._served:
            self._served.remove(digest)
        self._served.append(digest)
        self._served_count += 1
        return data, media_type

    def _fetch_rank(self, digest: str) -> tuple[float, ...]:
        """How soon a client will need a blob: the blobs of manifests read earlier come first, each
        manifest's in its own order (a client unpacks layers in that order). A blob no recent
        manifest names comes after those read so far."""
        first = self._served_count - len(self._served)
        for i, manifest in enumerate(self._served):
            parsed = self.parsed(manifest)
            if parsed is not None and digest in parsed.blobs:
                return (first + i, parsed.blobs.index(digest))
        return (self._served_count, 0)

    # --- uploads (a client's push, chunk by chunk; the store keeps them) ------------------------

    def start_upload(self, name: str) -> Upload:
        return self.store.start_upload(name)

    def upload(self, upload_id: str, name: str) -> Upload:
        """An upload in progress in repository `name`; BLOB_UPLOAD_UNKNOWN if there is none."""
        return self.store.upload(upload_id, name)

    async def append_upload(self, upload: Upload, chunks: AsyncIterator[bytes]) -> None:
        await self.store.append(upload, chunks)

    async def finish_upload(self, upload: Upload, digest: str) -> None:
        """Verify the upload against `digest` and store it, then announce again: a manifest may be
        whole here now."""
        await self.store.finish_upload(upload, digest)
        self.changed()

    def cancel_upload(self, upload: Upload) -> None:
        self.store.cancel_upload(upload)

    # --- the disk budget (mesh.node.disk) -----------------------------------------------------

    def disk_items(self) -> list[Item]:
        return upkeep.disk_items(self.store, self.parsed)

    async def evict_manifest(self, digest: str, keep_parts: set[str]) -> int:
        """Evict a held manifest and its blobs that no kept manifest needs; warm-up does not fetch
        it again (a client asking for it does)."""
        freed = await asyncio.to_thread(upkeep.evict, self.store, digest, self.parsed, keep_parts)
        self._parsed.pop(digest, None)
        self.evicted.add(digest)
        await asyncio.to_thread(upkeep.save_evicted, self.store, self.evicted)
        self.changed()  # announced without it: peers stop choosing this node for it
        return freed

    async def put_manifest(self, digest: str, data: bytes, parsed: Parsed) -> None:
        """Store a pushed manifest. Everything it references must be here, or on its way from a
        live peer: a client that pushes from a host whose cache came from the mesh HEADs blobs this
        node is still fetching, skips their upload, and then pushes the manifest."""
        missing = []
        for needed in (*parsed.blobs, *parsed.children):
            if self.store.has(needed) or needed in self.fetcher.active:
                continue
            try:
                self.fetcher.start(needed)  # held by a live peer: fetch it, so this node holds it all
            except RegistryError:
                missing.append(needed)
        if missing:
            raise RegistryError(
                "MANIFEST_BLOB_UNKNOWN",
                f"the manifest references {missing[0]}, which neither this node nor a live peer holds",
                detail={"digest": missing[0]},
            )
        await self.store.put_bytes(digest, data, parsed.media_type)
        self._parsed[digest] = parsed
        self.changed()

    def handoff_content(self, digest: str, requester: str, hops: int) -> str:
        """The peer to send a requester of `digest` to instead of serving it here, or "": one
        this node streams it to now, by the hand-off rule of saves (mesh.protocol.sources.relay_to),
        which makes a burst of fetches a chain, then a tree. Every fetch relays what it has
        received (its file grows as bytes arrive), so every downstream can serve. A small blob is
        served here: a hand-off costs a round trip, more than sending it."""
        size = self.store.size(digest)
        if size is None:
            fetch = self.fetcher.active.get(digest)
            size = fetch.size if fetch is not None else None
        if size is None or size < HANDOFF_MIN_BYTES:
            return ""
        chosen = relay_to(digest, CONTENT_STORE, requester, self._sending, hops=hops, routed=self._routed)
        if chosen is None:
            return ""
        self._routed[chosen] = self._routed.get(chosen, 0) + 1
        return chosen.peer

    @contextlib.contextmanager
    def streaming(self, digest: str, requester: str) -> Iterator[None]:
        downstream = Downstream(requester, digest, CONTENT_STORE, relays=True)
        self._sending.append(downstream)
        try:
            yield
        finally:
            self._sending.remove(downstream)
            if downstream not in self._sending:
                self._routed.pop(downstream, None)

    def open_content(self, digest: str, offset: int) -> ContentStream | None:
        """For peers: content held here, from `offset` on (sent with sendfile from `path`); or
        content this node is still fetching, relayed as it arrives once its size is known."""
        size = self.store.size(digest)
        if size is None:
            return self._relay_content(digest, offset)

        async def chunks() -> AsyncIterator[bytes]:
            for chunk in self.store.chunks(digest, offset):
                yield chunk

        path = str(self.store.path(digest))
        return ContentStream(size, self.store.media_type(digest) or "", chunks(), path)

    def _relay_content(self, digest: str, offset: int) -> ContentStream | None:
        """A fetch under way, from `offset` on, following its temp file. Its last byte waits for
        the digest check (fetch.windows); if the fetch fails, the stream is cut (ConnectionError:
        the peer server aborts it) and the reader resumes from another holder at its offset."""
        fetch = self.fetcher.active.get(digest)
        if fetch is None or fetch.size is None or fetch.error is not None or offset > fetch.size:
            return None
        size = fetch.size

        async def chunks() -> AsyncIterator[bytes]:
            try:
                # aclosing: a reader that stops early (a limited answer) closes the file now.
                async with contextlib.aclosing(windows(fetch, self.store, offset, size)) as arriving:
                    async for fh, start, count in arriving:
                        fh.seek(start)
                        while count > 0:
                            data = fh.read(min(CHUNK, count))
                            if not data:
                                raise ConnectionError(f"{digest[:19]}: the relayed fetch's file ended early")
                            count -= len(data)
                            yield data
            except RegistryError as exc:
                raise ConnectionError(f"the relayed fetch of {digest[:19]} failed: {exc}") from None

        return ContentStream(size, fetch.media_type, chunks())

    def relaying(self) -> list[str]:
        """Digests being fetched whose size is known: what this node can relay to peers now."""
        return [d for d, f in self.fetcher.active.items() if f.size is not None and f.error is None]

    def status(self, listen: str) -> RegistryDoc:
        """The `registry` section of /api/status."""
        return registry_status(self, listen)

    # --- warm-up ------------------------------------------------------------------------------

    def warm_targets(self) -> dict[str, str]:
        """repo:tag -> digest for every tag matching --registry-warm."""
        globs = self.settings.warm
        if not globs:
            return {}
        return {
            ref: state.digest
            for ref, state in self.resolve().items()
            if any(fnmatch.fnmatchcase(ref, g) for g in globs) and state.digest not in self.evicted
        }

    def warm_progress(self) -> tuple[int, int]:
        """(tags held completely, tags to warm)."""
        targets = self.warm_targets()
        held = sum(1 for digest in set(targets.values()) if self.complete(digest) is not None)
        return held, len(set(targets.values()))

    def warm_reason(self) -> str:
        """Why the registry is not warm yet, or "" when it is."""
        held, wanted = self.warm_progress()
        if held >= wanted:
            return ""
        return f"fetching registry cache: {held} of {wanted} manifests held"

    async def _warm(self) -> None:
        for ref, digest in sorted(self.warm_targets().items()):
            if self.complete(digest) is not None:
                continue
            try:
                await self.manifest(digest)
                found = closure(digest, self.parsed)
                while found is not None and found[1]:  # an index: fetch the children, then look again
                    for child in found[1]:
                        await self.manifest(child)
                    found = closure(digest, self.parsed)
                for needed in found[0] if found else []:
                    if not self.store.has(needed):
                        await self.fetcher.fetch(needed)
                self.warm_errors.pop(ref, None)
            except RegistryError as exc:
                self.warm_errors[ref] = str(exc)
                log.warning("warming %s: %s", ref, exc)

    async def _loop(self) -> None:
        while True:
            # Woken by gossip; every few seconds anyway while warm-up is unfinished (retries).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0 if self.warm_errors else None):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.merge_tags()
                await self._warm()
            except Exception:
                log.exception("registry upkeep failed")
            await asyncio.sleep(0.05)  # a burst of gossip events is one pass

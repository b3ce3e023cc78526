"""The step between the router and the store: content this node lacks comes from the mesh.

- One fetch per digest, however many clients ask: later readers join the running fetch.
- Bytes go to a temp file, hashed as they arrive; readers stream from that file as it grows, so a
  client gets the first bytes while the rest is still on the wire.
- From each source, one large blob's body is read at a time, the blobs of the manifest a
  client read first going first, in its order; a body gives way to a more wanted one that
  came after it (mesh.registry.lane). Small blobs never wait, and neither do a large one's
  size and first part. A body waiting for its turn holds no connection to the source.
- Sources are the live holders, and peers still fetching it (relays), best first: load, RTT
  and zone (mesh.protocol.sources.rank). A source already streaming a large blob to a peer
  may hand the fetch on to that peer (the saves' rule, mesh.protocol.sources.relay_to), so a
  burst of nodes fetching one blob at once becomes a chain, then a tree, not a star. If one
  fails mid-blob, the fetch asks the next holder for the rest from the offset reached (what it
  has is never fetched again); the hash runs on over the whole.
- Peers that ask for it meanwhile get what has arrived, as it arrives (Registry.open_content);
  `on_change` tells the node when a fetch can be relayed (its size is known) and when it ends.
- At the end the digest is checked, and only then is the file renamed into the store. A mismatch
  stores nothing, and readers that already got bytes see their connection cut (they had a
  Content-Length, so a cut is never mistaken for a whole blob).
- No holder at all is an immediate "unknown", never a wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

import aiohttp

from mesh.net.client import HandedOff, PeerError
from mesh.net.contract import ContentStream
from mesh.registry.errors import RegistryError
from mesh.registry.lane import Lane, Turn
from mesh.registry.ports import PeerContent
from mesh.registry.store import CHUNK, Store, write_all

log = logging.getLogger("cachemesh.registry")

# Bodies up to this size skip the lane: a config or a manifest never waits behind a layer.
LANE_FREE_BYTES = 1024 * 1024
# Hand-offs one fetch follows before it asks to be served (the puller's cap for saves, too).
MAX_HANDOFFS = 32
# How long a source that sent content not matching its digest is not asked for that digest again.
SUSPECT_SECONDS = 600.0


class Fetch:
    """One digest coming in from peers."""

    def __init__(self, digest: str, temp: Path, rank: tuple[float, ...] = ()) -> None:
        self.digest = digest
        self.temp = temp
        self.rank = rank  # its place in its source's lane: lowest first
        self.size: int | None = None
        self.media_type = ""
        self.written = 0
        self.source = ""
        self.started_at = time.time()
        self.verified = False  # every byte is here and matches the digest (the fsync may still run)
        self.done = False
        self.error: RegistryError | None = None
        self.sized = asyncio.Event()  # size known, or failed
        self._progress = asyncio.Event()

    def _notify(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    async def wait_progress(self, beyond: int) -> None:
        while self.written <= beyond and not self.done and self.error is None:
            await self._progress.wait()

    async def wait_change(self) -> None:
        await self._progress.wait()


class Fetcher:
    def __init__(
        self,
        store: Store,
        client: PeerContent,
        holders: Callable[[str], list[str]],
        *,
        addr_of: Callable[[str], str | None] = lambda node: None,
        idle_timeout: float,
        rank: Callable[[str], tuple[float, ...]] = lambda digest: (),
        on_bytes: Callable[[int], None] = lambda n: None,
        on_stored: Callable[[str], None] = lambda digest: None,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.client = client
        self.holders = holders  # digest -> addresses of live holders and relays, best first
        self.addr_of = addr_of  # node ID -> its address, for a relay a source hands a fetch on to
        self.idle_timeout = idle_timeout
        self.rank = rank  # digest -> how soon a client needs it (mesh.registry.lane)
        self.on_bytes = on_bytes
        self.on_stored = on_stored
        self.on_change = on_change
        self.active: dict[str, Fetch] = {}
        # (digest, source) -> monotonic time until which that source is not asked for it: it sent
        # bytes that did not match the digest (a corrupt store, or a relay fed by one).
        self._suspects: dict[tuple[str, str], float] = {}
        self._lanes: dict[str, Lane] = {}  # source address -> its lane
        self._tasks: set[asyncio.Task[None]] = set()
        # Bodies read on blocking sockets (ContentStream.read_into) are stored in these threads,
        # not asyncio's default pool: a read may block for the idle timeout.
        self._pool = ThreadPoolExecutor(16, thread_name_prefix="fetch")

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._pool.shutdown(wait=False)

    def start(self, digest: str) -> Fetch:
        """The running fetch of `digest`, or a new one. Raises BLOB_UNKNOWN at once if no live peer
        holds it."""
        fetch = self.active.get(digest)
        if fetch is not None:
            return fetch
        if not self._sources(digest):
            why = (
                "every live holder sent it wrong lately" if self.holders(digest) else "no live peer holds it"
            )
            raise RegistryError("BLOB_UNKNOWN", f"{digest} is not held here, and {why}")
        fetch = self.active[digest] = Fetch(digest, self.store.temp_path(), self.rank(digest))
        fetch.temp.touch()  # readers open it at once, before the task first runs
        task = asyncio.create_task(self._run(fetch), name=f"fetch {digest[:19]}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return fetch

    async def fetch(self, digest: str) -> Fetch:
        """Fetch `digest` whole (warm-up, manifests); raises the fetch's error."""
        fetch = self.start(digest)
        await fetch.wait_progress(1 << 62)
        if fetch.error is not None:
            raise fetch.error
        return fetch

    async def _run(self, fetch: Fetch) -> None:
        hasher = hashlib.sha256()
        failed: list[str] = []
        sent: list[str] = []  # the sources bytes came from, in order
        try:
            # Unbuffered: readers read the file, so each piece must be in it, not in a buffer; and
            # after a failed write no buffer is left to flush (and fail again) on close.
            with open(fetch.temp, "wb", buffering=0) as fh:
                target = ""  # the relay the last source handed this fetch on to
                hops = 0  # hand-offs followed; at MAX_HANDOFFS, sources are asked to serve
                while fetch.size is None or fetch.written < fetch.size:
                    sources = [a for a in self._sources(fetch.digest) if a not in failed]
                    addr, target = target or (sources[0] if sources else ""), ""
                    if not addr:
                        raise RegistryError(
                            "BLOB_UNKNOWN",
                            f"{fetch.digest}: no live holder could send it"
                            + (f" (stopped at byte {fetch.written} of {fetch.size})" if fetch.size else ""),
                        )
                    before = fetch.written
                    try:
                        await self._from(addr, fetch, fh, hasher, hops)
                    except HandedOff as handed:
                        relay = self.addr_of(handed.relay)
                        if relay is None or relay in failed or relay == addr:
                            hops = MAX_HANDOFFS  # ask again, and be served this time
                        else:
                            target, hops = relay, hops + 1
                            log.debug("%s handed %s on to %s", addr, fetch.digest[:19], relay)
                    except (PeerError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                        failed.append(addr)
                        hops = MAX_HANDOFFS  # after a failure, the next source serves: no more detours
                        log.warning(
                            "fetch of %s from %s failed at byte %d: %s; %s",
                            fetch.digest[:19],
                            addr,
                            fetch.written,
                            exc,
                            "trying the next holder" if len(sources) > 1 else "no other holder",
                        )
                    finally:
                        if fetch.written > before:  # only who sent bytes can have sent wrong ones
                            sent.append(addr)
                if "sha256:" + hasher.hexdigest() != fetch.digest:
                    # Which of them sent the wrong bytes cannot be told: none is asked for this
                    # digest again for a while, so the next request goes to another holder.
                    until = time.monotonic() + SUSPECT_SECONDS
                    sent = sent or [fetch.source]  # no bytes at all: who claimed the size was wrong
                    for addr in sent:
                        self._suspects[(fetch.digest, addr)] = until
                    log.warning(
                        "content from %s is not %s; not asking them for it for %.0f s",
                        ", ".join(dict.fromkeys(sent)),
                        fetch.digest[:19],
                        SUSPECT_SECONDS,
                    )
                    raise RegistryError("DIGEST_INVALID", f"peers sent content that is not {fetch.digest}")
                # Readers may finish now; the fsync and rename into the store follow, in a thread.
                fetch.verified = True
                fetch._notify()
                await self.store.commit_file(fetch.temp, fetch.digest, hasher, open(fetch.temp, "ab"))
            if fetch.media_type:
                await self.store.set_media_type(fetch.digest, fetch.media_type)
            fetch.done = True
            self.on_stored(fetch.digest)
        except RegistryError as exc:
            fetch.error = exc
            fetch.temp.unlink(missing_ok=True)
        except Exception as exc:  # never leave readers waiting on a fetch that died
            log.exception("fetch of %s failed", fetch.digest[:19])
            fetch.error = RegistryError("BLOB_UNKNOWN", f"fetch failed: {exc}", status=502)
            fetch.temp.unlink(missing_ok=True)
        except asyncio.CancelledError:  # the node is stopping: its readers must not wait on
            if not fetch.done:
                fetch.error = RegistryError("BLOB_UNKNOWN", "fetch stopped: the node is stopping", status=503)
                fetch.temp.unlink(missing_ok=True)
            raise
        finally:
            self.active.pop(fetch.digest, None)
            fetch.sized.set()
            fetch._notify()
            self.on_change()

    def _sources(self, digest: str) -> list[str]:
        """The holders of `digest` to ask, best first, but for those that sent it wrong lately."""
        now = time.monotonic()
        for key, until in list(self._suspects.items()):
            if until <= now:
                del self._suspects[key]
        return [a for a in self.holders(digest) if (digest, a) not in self._suspects]

    async def _from(self, addr: str, fetch: Fetch, fh: IO[bytes], hasher: hashlib._Hash, hops: int) -> None:
        """The rest of `fetch` from `addr`. A large body is read only while it holds the source's
        turn (mesh.registry.lane), and waits for it holding no connection: the peer keeps no
        sender parked for it (a thread, on a plain socket) and sees a dead source at once when the
        turn comes. While another body holds the turn, the first LANE_FREE_BYTES come at once:
        the size with them (clients wait for their headers), and a small blob whole."""
        lane = self._lanes.setdefault(addr, Lane())
        async with contextlib.AsyncExitStack() as turns:
            turn: Turn | None = None
            while fetch.size is None or fetch.written < fetch.size:
                if turn is not None:
                    await turn.give_way()  # to a more wanted body, if one waits
                elif lane.busy and fetch.size is not None and fetch.size - fetch.written > LANE_FREE_BYTES:
                    turn = await turns.enter_async_context(lane.turn(fetch.rank))
                    if addr not in self._sources(fetch.digest):  # it died (or erred) meanwhile
                        raise PeerError(f"{addr} is no longer a live holder")
                limit = LANE_FREE_BYTES if turn is None and lane.busy else None
                async with self._open(addr, fetch, limit, hops) as stream:
                    assert fetch.size is not None  # set by _open
                    if turn is None and limit is None and fetch.size - fetch.written > LANE_FREE_BYTES:
                        if lane.busy:
                            continue  # taken while this answer came: wait for the turn without it
                        turn = await turns.enter_async_context(lane.turn(fetch.rank))  # idle: at once
                    end = fetch.size if limit is None else min(fetch.size, fetch.written + limit)
                    await self._read(addr, fetch, fh, hasher, stream, turn)
                    if fetch.written < end and not (turn is not None and turn.wanted_elsewhere()):
                        raise PeerError(f"{addr} ended at byte {fetch.written} of {fetch.size}")

    @contextlib.asynccontextmanager
    async def _open(
        self, addr: str, fetch: Fetch, limit: int | None, hops: int
    ) -> AsyncIterator[ContentStream]:
        """An answer for `fetch` from its offset; the first one tells the size, later ones must
        agree. The source may hand the fetch on to a relay instead (HandedOff)."""
        async with self.client.content(
            addr,
            fetch.digest,
            offset=fetch.written,
            chunk_bytes=CHUNK,
            idle_timeout=self.idle_timeout,
            limit=limit,
            handoff=hops < MAX_HANDOFFS,
            hops=hops,
        ) as stream:
            if stream.size < 0:
                raise PeerError(f"{addr} claims a size of {stream.size} bytes")
            if fetch.size is None:
                fetch.size, fetch.media_type = stream.size, stream.media_type
                fetch.sized.set()
                self.on_change()
            elif stream.size != fetch.size:
                raise PeerError(f"{addr} has {stream.size} bytes, another holder had {fetch.size}")
            fetch.source = addr
            yield stream

    async def _read(
        self,
        addr: str,
        fetch: Fetch,
        fh: IO[bytes],
        hasher: hashlib._Hash,
        stream: ContentStream,
        turn: Turn | None,
    ) -> None:
        """Store and hash what `stream` brings, until it ends or a more wanted body waits for the turn."""
        assert fetch.size is not None
        if stream.read_into is not None:
            await self._read_in_thread(addr, fetch, fh, hasher, stream, turn)
            return
        async for chunk in stream.chunks:
            _store_piece(addr, fetch.digest, fetch.size, fetch.written, fh, hasher, chunk)
            self._stored(fetch, len(chunk))
            if turn is not None and turn.wanted_elsewhere():
                return

    def _stored(self, fetch: Fetch, n: int) -> None:
        """`n` more bytes of `fetch` are in its file: readers may have them."""
        fetch.written += n
        self.on_bytes(n)
        fetch._notify()

    async def _read_in_thread(
        self,
        addr: str,
        fetch: Fetch,
        fh: IO[bytes],
        hasher: hashlib._Hash,
        stream: ContentStream,
        turn: Turn | None,
    ) -> None:
        """As _read, for a body read on a blocking socket: read, store and hash one piece after
        another in a worker thread (each releases the GIL), so the loop goes on serving what has
        arrived. The loop learns of each piece as it is stored, and asks the thread to stop at the
        next piece when a more wanted body waits for the turn."""
        assert fetch.size is not None and stream.read_into is not None
        read_into, size, start = stream.read_into, fetch.size, fetch.written
        loop = asyncio.get_running_loop()
        stop = threading.Event()

        def stored(n: int) -> None:  # on the loop, in the order the thread stored them
            self._stored(fetch, n)
            if turn is not None and turn.wanted_elsewhere():
                stop.set()

        def pump() -> None:  # in the thread
            buffer = memoryview(bytearray(CHUNK))
            written = start
            while not stop.is_set():
                n = read_into(buffer)
                if not n:
                    return
                _store_piece(addr, fetch.digest, size, written, fh, hasher, buffer[:n])
                written += n
                loop.call_soon_threadsafe(stored, n)

        work = loop.run_in_executor(self._pool, pump)
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            # The file and the hash are the thread's until it returns: cut the answer, wait for it.
            stop.set()
            stream.abort()
            with contextlib.suppress(Exception):
                await work
            raise
        # Every `stored` the thread queued ran before this: the future's result came after them.


def _store_piece(
    addr: str,
    digest: str,
    size: int,
    written: int,
    fh: IO[bytes],
    hasher: hashlib._Hash,
    piece: bytes | memoryview,
) -> None:
    """One piece from `addr` written after the `written` bytes already in `fh`, and hashed."""
    if written + len(piece) > size:
        raise PeerError(f"{addr} sent more than {size} bytes")
    try:
        write_all(fh, piece)
    except OSError as exc:
        # This node's disk, not the peer: resuming from another holder would append after bytes
        # the hash never saw. The fetch fails; nothing is stored.
        message = f"this node could not store {digest}: {exc}"
        raise RegistryError("BLOB_UNKNOWN", message, status=500) from None
    hasher.update(piece)


async def windows(
    fetch: Fetch, store: Store, start: int, end: int
) -> AsyncGenerator[tuple[IO[bytes], int, int], None]:
    """(file, offset, count) windows covering bytes [start, end) of a fetch, as they arrive, for
    the caller to send (with sendfile). The last byte of the blob waits for the digest check: a
    client that reads to the end never completes a response whose content turned out wrong.
    Raises the fetch's error if it fails."""
    fh: IO[bytes] | None = None
    try:
        # Open before the fetch can rename the file away; once renamed, the blob is in the store.
        try:
            fh = open(fetch.temp, "rb")
        except FileNotFoundError:
            await fetch.wait_progress(1 << 62)
            if fetch.error is not None:
                raise fetch.error from None
            fh = open(store.path(fetch.digest), "rb")
        pos = start
        # To the end of the blob, the answer completes only once the digest matched: also
        # when there is nothing left to send (a peer may have claimed a size of 0).
        while pos < end or (end == fetch.size and not fetch.verified):
            limit = min(fetch.written, end)
            if end == fetch.size and not fetch.verified:
                limit = min(limit, end - 1)
            if pos < limit:
                yield fh, pos, limit - pos
                pos = limit
                continue
            if fetch.error is not None:
                raise fetch.error
            await fetch.wait_change()
    finally:
        if fh is not None:
            with contextlib.suppress(OSError):
                fh.close()

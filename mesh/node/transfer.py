"""Pulling one image from a peer into the local engine, safely.

peer save stream -> tag-stripping filter -> `docker load`, chunk by chunk, then:
1. the engine has verified each layer against the config's diff IDs (it refuses a tampered tar
   and loads nothing from a truncated one);
2. we check the image we asked for is now present under the mesh key announced, which is derived
   from that config (mesh.engine.base.image_key), on either image store;
3. only then do we apply its tags.
If anything fails, images this transfer created that are not the verified image or its chain are
removed again; nothing that existed before is touched, and no tag moves.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from mesh.engine.base import Engine, EngineError, EngineUnavailable
from mesh.engine.tarstream import TarReport, TarStreamError, untagged
from mesh.net.client import HandedOff, PeerBusy, PeerClient, PeerError
from mesh.node.relay import Spool
from mesh.protocol.planner import Pull, chain_of

log = logging.getLogger("cachemesh.transfer")


class TransferFailed(Exception):
    pass


class DeltaRefused(Exception):
    """The engine refused a stream with held layers left out (the containerd store refuses a
    legacy-format delta): the image must come in full, from a source that can send a full stream
    (a holder, or a relay of a full stream; a relay of a delta cannot). Not the source's fault."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Transfer:
    """A transfer in flight or finished, as the status page shows it."""

    image: str
    tags: tuple[str, ...]
    peer: str
    peer_name: str
    direction: str
    total: int
    started: float = field(default_factory=time.time)
    done: int = 0
    finished: float | None = None
    outcome: str = "running"
    error: str = ""
    relay: bool = False
    """Out: served from a relay spool while still arriving. In: the source was a relay."""

    @property
    def rate(self) -> float:
        elapsed = (self.finished or time.time()) - self.started
        return self.done / elapsed if elapsed > 0 else 0.0


async def _counted(
    chunks: AsyncIterator[bytes],
    record: Transfer,
    on_bytes: Callable[[int], None],
    broke: list[str],
    spool: Spool | None,
) -> AsyncIterator[bytes]:
    """The peer's chunks, counted, and teed into the relay spool (if any) before the engine sees
    them. The spool ends cleanly only when the peer's stream did; anything else fails it."""
    ended = False
    try:
        async for chunk in chunks:
            record.done += len(chunk)
            on_bytes(len(chunk))
            if spool is not None:
                spool.append(chunk)
            yield chunk
        ended = True
    except Exception as exc:
        # Remember what broke on the peer's side: the engine only sees its upload cut short.
        broke.append(f"the peer's stream broke after {record.done} bytes ({type(exc).__name__}: {exc})")
        raise
    finally:
        if spool is not None:
            spool.finish("" if ended else (broke[0] if broke else "the receiver stopped reading"))


async def pull_image(
    engine: Engine,
    client: PeerClient,
    pull: Pull,
    addr: str,
    record: Transfer,
    *,
    have: int = 0,
    chunk_bytes: int,
    idle_timeout: float,
    on_bytes: Callable[[int], None],
    open_spool: Callable[[str, int], Spool | None] = lambda store, have: None,
    handoff: bool = True,
    hops: int = 0,
    queue_wait: float = 300.0,
) -> list[str]:
    """Run one pull; return the mesh keys of the verified chain. Raises TransferFailed, or
    HandedOff (ask the relay it names) or PeerBusy (the peer's upload queue is full).

    `have` is how many leading layers of the image this engine holds already (by chain ID): the
    peer leaves them out of the stream. If the engine refuses that delta, DeltaRefused: the
    caller pulls once more in full, from a source that can send a full stream (mesh/node/puller.py).
    The stream is teed into the spool that `open_spool(store, have)` gives (None: no relaying),
    which peers read as it grows (relay.py), those holding at least what it leaves out."""
    info = await engine.info()
    before = {i.meta.id for i in await engine.images()}
    stream = _StreamOptions(info.store, chunk_bytes, idle_timeout, handoff, hops, queue_wait, open_spool)
    try:
        report = await _load_from_peer(engine, client, pull, addr, record, have, stream, on_bytes, before)
    except _EngineRefused as refused:
        if have == 0:
            raise TransferFailed(refused.reason) from None
        raise DeltaRefused(refused.reason) from None
    images = {i.meta.id: i for i in await engine.images()}
    if pull.image not in images:
        # The engine verified every layer against its config, so a present key means the stream
        # carried the image asked for; an absent one means it carried something else.
        await _clean_up(engine, before, report.keys)
        raise TransferFailed(
            f"after load, image {pull.image[:19]} is not present: the stream carried something else"
        )
    chain = chain_of(pull.image, {k: i.meta for k, i in images.items()})
    # Keep the whole chain the peer sent, even where this store records no parent links.
    await _clean_up(engine, before, report.keys - set(chain) - set(report.chain))
    for tag in pull.tags:
        await engine.tag(pull.image, tag)
    return chain


class _EngineRefused(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


@dataclass(frozen=True)
class _StreamOptions:
    store: str
    chunk_bytes: int
    idle_timeout: float
    handoff: bool
    hops: int
    queue_wait: float
    open_spool: Callable[[str, int], Spool | None]


async def _load_from_peer(
    engine: Engine,
    client: PeerClient,
    pull: Pull,
    addr: str,
    record: Transfer,
    have: int,
    options: _StreamOptions,
    on_bytes: Callable[[int], None],
    before: set[str],
) -> TarReport:
    report = TarReport()
    broke: list[str] = []
    store = options.store
    # The spool is tagged with `have` until the peer says what its stream leaves out (HAVE_HEADER):
    # it serves receivers of this store that hold at least that (mesh.protocol.sources.covers).
    spool = options.open_spool(store, have)
    try:
        async with client.save(
            addr,
            pull.image,
            have=have,
            store=store,
            relay=spool is not None,
            handoff=options.handoff,
            hops=options.hops,
            chunk_bytes=options.chunk_bytes,
            idle_timeout=options.idle_timeout,
            queue_wait=options.queue_wait,
        ) as stream:
            if pull.image not in stream.chain[:1]:
                raise TransferFailed(f"peer offered {stream.chain[:1]} instead of {pull.image[:19]}")
            report.chain = list(stream.chain)
            if spool is not None:
                spool.start(report.chain, stream.have if stream.have is not None else have)
            chunks = _counted(stream.chunks, record, on_bytes, broke, spool)
            await engine.load(untagged(chunks, report, verify_blobs=store == "containerd"))
    except Exception as exc:
        if spool is not None:
            spool.finish(broke[0] if broke else str(exc) or type(exc).__name__)
        await _clean_up(engine, before, report.keys)
        if isinstance(exc, HandedOff | PeerBusy):
            raise
        if broke:
            raise TransferFailed(broke[0]) from None
        if isinstance(exc, EngineError) and not isinstance(exc, EngineUnavailable):
            raise _EngineRefused(str(exc)) from None
        raise TransferFailed(_reason(exc, addr)) from None
    return report


def _reason(exc: Exception, addr: str) -> str:
    if isinstance(exc, PeerError | EngineError | TarStreamError | TransferFailed):
        return str(exc)  # these say what went wrong themselves
    if isinstance(exc, OSError | TimeoutError):
        return f"connection to {addr} failed: {exc or type(exc).__name__}"
    # aiohttp payload errors when the peer dies mid-stream, and similar
    return f"transfer from {addr} broke: {type(exc).__name__}: {exc}"


async def _clean_up(engine: Engine, before: set[str], carried: set[str]) -> None:
    """Remove images a failed transfer created. Only images whose configs the stream carried are
    candidates: never anything that was here before, nothing tagged, and never what a concurrent
    local build is creating."""
    candidates = carried - before
    if not candidates:
        return
    with contextlib.suppress(EngineError):
        current = await engine.images()
        created = [i for i in current if i.meta.id in candidates and not i.tags]
        parents = {i.meta.parent for i in current}
        # Children before parents: the engine refuses to remove an image that has children.
        for image in sorted(created, key=lambda i: i.meta.id in parents):
            with contextlib.suppress(EngineError):
                await engine.remove(image.meta.id)
                log.warning("removed %s left behind by a failed transfer", image.meta.id[:19])

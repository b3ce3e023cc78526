"""The registry's fetcher against scripted peers: what it does when the peer, this node's disk or
the node itself lets a fetch down. Readers must hear of it at once, and the store must hold
nothing but whole, verified blobs."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any

import pytest

from mesh.lab.poll import async_wait_until
from mesh.net.client import HandedOff
from mesh.net.contract import ContentStream
from mesh.registry import fetch as fetch_module
from mesh.registry import store as store_module
from mesh.registry.errors import RegistryError
from mesh.registry.fetch import LANE_FREE_BYTES, Fetcher, windows
from mesh.registry.store import Store

DATA = bytes(range(256)) * 4096  # 1 MiB
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()
PIECE = 64 << 10


class ScriptedPeers:
    """A PeerClient's `content` for each address: the blob's claimed size, then the pieces from
    the offset asked for, then `after`: "end", "stall" (wait for ever) or an exception."""

    def __init__(
        self, script: dict[str, tuple[int, int, Any]], handoffs: dict[str, str] | None = None
    ) -> None:
        self.script = script  # addr -> (claimed size, pieces to send, after)
        self.handoffs = handoffs or {}  # addr -> the node ID it hands a request on to, if allowed
        self.asked: list[tuple[str, int]] = []
        self.hops: list[int | None] = []  # each request's hops, None where it allowed no hand-off

    blocking = False  # answers offer read_into, as the real client's do (the `reading` fixture)

    @asynccontextmanager
    async def content(
        self,
        addr: str,
        digest: str,
        *,
        offset: int,
        limit: int | None = None,
        handoff: bool = False,
        hops: int = 0,
        **_: Any,
    ) -> AsyncIterator[ContentStream]:
        self.asked.append((addr, offset))
        self.hops.append(hops if handoff else None)
        if handoff and addr in self.handoffs:
            raise HandedOff(f"{addr}: handed on", self.handoffs[addr])
        size, pieces, after = self.script[addr]
        end = len(DATA) if limit is None else min(len(DATA), offset + limit)

        async def chunks() -> AsyncIterator[bytes]:
            pos = offset
            for _ in range(pieces):
                if pos >= end:
                    break
                yield DATA[pos : min(pos + PIECE, end)]
                pos += PIECE
            if after == "stall":
                await asyncio.Event().wait()
            elif isinstance(after, BaseException):
                raise after

        if not self.blocking:
            yield ContentStream(size, "", chunks())
            return
        # As the real client's answer: a blocking read for a worker thread (mesh.net.bulk).
        cut = threading.Event()
        at, left = offset, pieces

        def read_into(buffer: memoryview) -> int:
            nonlocal at, left
            if left and at < end:
                piece = DATA[at : min(at + PIECE, end)]
                buffer[: len(piece)] = piece
                at, left = at + PIECE, left - 1
                return len(piece)
            if after == "stall":
                cut.wait()
                raise ConnectionResetError("the answer was cut")
            if isinstance(after, BaseException):
                raise after
            return 0

        yield ContentStream(size, "", chunks(), read_into=read_into, abort=cut.set)


@pytest.fixture(autouse=True, params=["on the loop", "in a thread"])
def reading(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test twice: bodies read as chunks on the loop, and read in a worker thread."""
    ScriptedPeers.blocking = request.param == "in a thread"
    yield
    ScriptedPeers.blocking = False


def fetcher(tmp_path: Path, peers: ScriptedPeers, addrs: dict[str, str] | None = None) -> Fetcher:
    """`addrs`: node ID -> address of the peers a hand-off may name."""
    store = Store(tmp_path / "registry")
    holders = [a for a in peers.script if a not in (addrs or {}).values()]  # relays are not holders
    return Fetcher(
        store,
        peers,  # type: ignore[arg-type]
        lambda digest: holders,
        addr_of=(addrs or {}).get,
        idle_timeout=5,
    )


async def read_all(fetcher: Fetcher, start: int = 0, end: int | None = None) -> bytes:
    fetch = fetcher.start(DIGEST)
    await fetch.sized.wait()
    if fetch.error is not None:
        raise fetch.error
    assert fetch.size is not None
    got = bytearray()
    async for fh, offset, count in windows(fetch, fetcher.store, start, fetch.size if end is None else end):
        fh.seek(offset)
        got += fh.read(count)
    return bytes(got)


async def test_a_whole_blob_from_two_holders_when_the_first_dies(tmp_path: Path) -> None:
    """The baseline the other tests break: resumed at the offset reached, verified, stored."""
    peers = ScriptedPeers({"a": (len(DATA), 5, ConnectionResetError("gone")), "b": (len(DATA), 99, "end")})
    f = fetcher(tmp_path, peers)
    assert await read_all(f) == DATA
    await async_wait_until(lambda: f.store.has(DIGEST), 5, what="stored")
    assert peers.asked == [("a", 0), ("b", 5 * PIECE)]
    assert f.store.path(DIGEST).read_bytes() == DATA


async def test_a_stopping_fetcher_wakes_its_readers_and_leaves_no_temp_file(tmp_path: Path) -> None:
    peers = ScriptedPeers({"a": (len(DATA), 3, "stall")})
    f = fetcher(tmp_path, peers)
    fetch = f.start(DIGEST)
    reader = asyncio.create_task(read_all(f))
    await async_wait_until(lambda: fetch.written == 3 * PIECE, 5, what="three pieces in")
    await f.close()
    with pytest.raises(RegistryError, match="stopping"):
        await asyncio.wait_for(reader, 2)
    assert not fetch.temp.exists()
    assert not f.store.has(DIGEST)


async def test_a_write_error_here_fails_the_fetch_rather_than_resume_after_a_torn_piece(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full or failing disk is this node's fault, not the peer's: resuming from the next holder
    would append after half a piece that the hash never saw, and store that under the digest."""
    peers = ScriptedPeers({"a": (len(DATA), 99, "end"), "b": (len(DATA), 99, "end")})
    f = fetcher(tmp_path, peers)
    real_open = open

    class TornWrites:
        """The fetch's temp file, whose third write puts half a piece in, then fails."""

        def __init__(self, fh: IO[bytes]) -> None:
            self.fh, self.writes = fh, 0

        def write(self, data: bytes) -> int:
            self.writes += 1
            if self.writes == 3:
                self.fh.write(data[: len(data) // 2])
                self.fh.flush()
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.fh.write(data)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.fh, name)

        def __enter__(self) -> TornWrites:
            return self

        def __exit__(self, *exc: object) -> None:
            self.fh.close()

    def torn_open(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        fh = real_open(path, mode, *args, **kwargs)
        return TornWrites(fh) if mode == "wb" else fh

    monkeypatch.setattr(fetch_module, "open", torn_open, raising=False)
    with pytest.raises(RegistryError, match=r"could not store .*No space left"):
        await read_all(f)
    assert peers.asked == [("a", 0)]  # not resumed elsewhere
    assert not f.store.has(DIGEST)
    assert not any((tmp_path / "registry" / "tmp").iterdir())


async def test_a_claimed_size_of_zero_never_completes_an_answer_before_the_digest_check(
    tmp_path: Path,
) -> None:
    """A peer claims the blob is empty, then sends nothing more. A client reading to the end must
    not get a complete empty answer: the last byte (here, none) waits for the digest check, which
    this fetch never passes."""
    f = fetcher(tmp_path, ScriptedPeers({"a": (0, 0, "stall")}))
    reader = asyncio.create_task(read_all(f))
    await async_wait_until(lambda: f.start(DIGEST).size == 0, 5, what="the size is claimed")
    assert not reader.done()
    await f.close()
    with pytest.raises(RegistryError):
        await asyncio.wait_for(reader, 2)
    assert not f.store.has(DIGEST)


async def test_a_negative_size_is_a_failed_source(tmp_path: Path) -> None:
    peers = ScriptedPeers({"a": (-5, 0, "end"), "b": (len(DATA), 99, "end")})
    f = fetcher(tmp_path, peers)
    assert await read_all(f) == DATA
    assert [addr for addr, _ in peers.asked] == ["a", "b"]


async def test_an_upload_write_error_cuts_the_file_back_to_what_the_hash_saw(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PATCH that fails on this node's disk leaves the upload where its hash stands, so the
    client's retry from the reported offset makes a blob whose bytes match its digest."""
    store = Store(tmp_path / "registry")
    upload = store.start_upload("r")
    real_write_all = store_module.write_all
    fail = [True]

    def torn(fh: IO[bytes], data: bytes) -> None:
        if fail[0] and upload.size >= PIECE:
            fail[0] = False
            fh.write(data[: len(data) // 3])
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write_all(fh, data)

    monkeypatch.setattr(store_module, "write_all", torn)

    async def body(start: int, end: int) -> AsyncIterator[bytes]:
        for pos in range(start, end, PIECE):
            yield DATA[pos : min(pos + PIECE, end)]

    with pytest.raises(RegistryError, match="could not store the upload"):
        await store.append(upload, body(0, len(DATA)))
    assert upload.size == PIECE and upload.path.stat().st_size == PIECE
    await store.append(upload, body(upload.size, len(DATA)))  # the client resumes
    await store.finish_upload(upload, DIGEST)
    assert store.path(DIGEST).read_bytes() == DATA


class TwoLargeBlobs:
    """A PeerClient's `content` for two 3 MiB blobs, from any address. The first stalls after
    its first piece until `gate` is set (it holds its source's turn meanwhile). Records each
    answer as (addr, digest, offset, limit), and how many are open."""

    def __init__(self) -> None:
        self.first, self.second = os.urandom(3 << 20), os.urandom(3 << 20)
        self.blobs = {"sha256:" + hashlib.sha256(d).hexdigest(): d for d in (self.first, self.second)}
        self.d1, self.d2 = self.blobs
        self.gate = asyncio.Event()
        self.open_now = 0
        self.asked: list[tuple[str, str, int, int | None]] = []

    @asynccontextmanager
    async def content(
        self, addr: str, digest: str, *, offset: int, limit: int | None = None, **_: Any
    ) -> AsyncIterator[ContentStream]:
        data = self.blobs[digest]
        end = len(data) if limit is None else min(len(data), offset + limit)
        self.asked.append((addr, digest, offset, limit))

        async def chunks() -> AsyncIterator[bytes]:
            for pos in range(offset, end, PIECE):
                if digest == self.d1 and pos >= PIECE:
                    await self.gate.wait()
                yield data[pos : min(pos + PIECE, end)]

        self.open_now += 1
        try:
            yield ContentStream(len(data), "", chunks())
        finally:
            self.open_now -= 1


async def test_a_body_waiting_for_its_turn_holds_no_connection(tmp_path: Path) -> None:
    """Two large blobs from one source: the second gets its size and first part at once (its
    client's headers wait on the size), then waits for the turn with no answer open, so the peer
    parks no sender for it, and resumes from where the first part ended."""
    peer = TwoLargeBlobs()
    d1, d2 = peer.d1, peer.d2
    f = Fetcher(Store(tmp_path / "registry"), peer, lambda digest: ["a"], idle_timeout=5)  # type: ignore[arg-type]
    one = f.start(d1)
    await async_wait_until(lambda: one.written == PIECE, 5, what="the first body holds the turn")
    two = f.start(d2)
    await async_wait_until(lambda: two.written == LANE_FREE_BYTES, 5, what="the second's first part")
    assert two.size == len(peer.second)
    assert peer.open_now == 1  # only the first body's answer
    peer.gate.set()
    await async_wait_until(lambda: f.store.has(d1) and f.store.has(d2), 5, what="both stored")
    assert f.store.path(d1).read_bytes() == peer.first and f.store.path(d2).read_bytes() == peer.second
    assert [(offset, limit) for _, digest, offset, limit in peer.asked if digest == d2] == [
        (0, LANE_FREE_BYTES),
        (LANE_FREE_BYTES, None),
    ]


async def test_a_holder_that_sent_wrong_bytes_is_not_asked_for_them_again(tmp_path: Path) -> None:
    """A corrupt holder (its store, or a relay fed by one) fails the fetch; the next request for
    that digest goes to another holder instead of failing on the same one for ever."""
    bad = bytearray(DATA)
    bad[1000] ^= 0xFF

    class CorruptFirst(ScriptedPeers):
        @asynccontextmanager
        async def content(
            self, addr: str, digest: str, *, offset: int, **_: Any
        ) -> AsyncIterator[ContentStream]:
            self.asked.append((addr, offset))
            data = bytes(bad) if addr == "a" else DATA

            async def chunks() -> AsyncIterator[bytes]:
                for pos in range(offset, len(data), PIECE):
                    yield data[pos : pos + PIECE]

            yield ContentStream(len(data), "", chunks())

    peers = CorruptFirst({"a": (len(DATA), 0, "end"), "b": (len(DATA), 0, "end")})
    f = fetcher(tmp_path, peers)
    with pytest.raises(RegistryError) as raised:
        await f.fetch(DIGEST)
    assert raised.value.code == "DIGEST_INVALID" and not f.store.has(DIGEST)
    await f.fetch(DIGEST)
    assert f.store.path(DIGEST).read_bytes() == DATA
    assert peers.asked == [("a", 0), ("b", 0)]


async def test_abandoned_uploads_expire_when_the_next_one_starts(tmp_path: Path) -> None:
    """An upload no request has used for a day (its client gone, its final PUT never sent) goes,
    file and all, when the next upload starts; one in use or recently used stays."""
    store = Store(tmp_path / "registry")
    abandoned, in_use, recent = (store.start_upload("r") for _ in range(3))
    abandoned.path.write_bytes(b"half a layer")
    for upload in (abandoned, in_use):
        upload.touched -= store_module.UPLOAD_IDLE_SECONDS + 1
    async with in_use.lock:  # a PATCH under way
        later = store.start_upload("r")
        assert set(store.uploads) == {in_use.id, recent.id, later.id}
    assert not abandoned.path.exists() and in_use.path.exists() and recent.path.exists()
    with pytest.raises(RegistryError) as raised:
        store.upload(abandoned.id, "r")
    assert raised.value.code == "BLOB_UPLOAD_UNKNOWN"
    store.upload(in_use.id, "r")  # used again: its clock starts over
    assert store.expire_uploads(in_use.touched + 60) == []
    assert store.expire_uploads(in_use.touched + store_module.UPLOAD_IDLE_SECONDS + 1) == [
        in_use.id,
        recent.id,
        later.id,
    ]


async def test_a_body_whose_source_died_while_it_waited_goes_to_another_holder(tmp_path: Path) -> None:
    """A body waits for its source's turn with no connection open; if the source is no longer a
    live holder when the turn comes, the body goes to the next holder at the offset reached
    instead of spending a connect timeout on the dead one."""
    peer = TwoLargeBlobs()
    d1, d2 = peer.d1, peer.d2
    live = ["a", "b"]
    f = Fetcher(Store(tmp_path / "registry"), peer, lambda digest: list(live), idle_timeout=5)  # type: ignore[arg-type]
    one = f.start(d1)
    await async_wait_until(lambda: one.written == PIECE, 5, what="the first body holds a's turn")
    two = f.start(d2)
    await async_wait_until(lambda: two.written == LANE_FREE_BYTES, 5, what="the second waits for a's turn")
    live.remove("a")  # gossip: a is dead
    peer.gate.set()
    await async_wait_until(lambda: f.store.has(d1) and f.store.has(d2), 5, what="both stored")
    assert f.store.path(d2).read_bytes() == peer.second
    assert [(addr, offset) for addr, digest, offset, _ in peer.asked if digest == d2] == [
        ("a", 0),
        ("b", LANE_FREE_BYTES),
    ]


# --- hand-offs: a burst of fetches is a chain, not a star -------------------------------------


async def test_a_fetch_handed_on_is_read_from_the_relay_it_names(tmp_path: Path) -> None:
    peers = ScriptedPeers({"a": (len(DATA), 99, "end"), "b": (len(DATA), 99, "end")}, {"a": "node-b"})
    f = fetcher(tmp_path, peers, {"node-b": "b"})
    assert await read_all(f) == DATA
    await async_wait_until(lambda: f.store.has(DIGEST), 5, what="stored")
    assert peers.asked == [("a", 0), ("b", 0)] and peers.hops == [0, 1]


async def test_a_hand_off_to_a_peer_not_known_alive_is_asked_again_without_one(tmp_path: Path) -> None:
    """Gossip may not know the relay yet (or it died): the holder is asked to serve instead."""
    peers = ScriptedPeers({"a": (len(DATA), 99, "end")}, {"a": "node-gone"})
    f = fetcher(tmp_path, peers, {})
    assert await read_all(f) == DATA
    assert peers.asked == [("a", 0), ("a", 0)] and peers.hops == [0, None]


async def test_a_relay_that_fails_sends_the_fetch_back_to_a_holder_that_serves_it(tmp_path: Path) -> None:
    """No detour after a failure: the holder is asked with no hand-off, from the offset reached."""
    peers = ScriptedPeers(
        {"a": (len(DATA), 99, "end"), "b": (len(DATA), 4, ConnectionResetError("gone"))}, {"a": "node-b"}
    )
    f = fetcher(tmp_path, peers, {"node-b": "b"})
    assert await read_all(f) == DATA
    assert peers.asked == [("a", 0), ("b", 0), ("a", 4 * PIECE)] and peers.hops == [0, 1, None]


# --- the fake against the real client: one contract ---------------------------------------------

CONTRACT_CASES = [(0, None), (PIECE * 3 + 7, None), (1000, 5000), (len(DATA) - 10, None), (0, 0)]


async def content_contract(peers: Any, addr: str) -> None:
    """What the fetcher relies on of `content`: the whole blob's size whatever the offset, then
    the bytes from the offset on, at most `limit` of them (0: the size alone)."""
    for offset, limit in CONTRACT_CASES:
        async with peers.content(
            addr, DIGEST, offset=offset, limit=limit, chunk_bytes=PIECE, idle_timeout=5.0
        ) as stream:
            assert stream.size == len(DATA)
            got = b"".join([c async for c in stream.chunks])
        end = len(DATA) if limit is None else offset + limit
        assert got == DATA[offset:end], (offset, limit, len(got))


async def handoff_contract(peers: Any, addr: str, relay: str) -> None:
    """A holder streaming the digest to `relay` hands a request that allows it on (HandedOff
    naming that relay's node ID), and serves one that does not."""
    with pytest.raises(HandedOff) as handed:
        async with peers.content(addr, DIGEST, offset=0, chunk_bytes=PIECE, idle_timeout=5.0, handoff=True):
            pass
    assert handed.value.relay == relay
    async with peers.content(addr, DIGEST, offset=0, chunk_bytes=PIECE, idle_timeout=5.0) as stream:
        assert b"".join([c async for c in stream.chunks]) == DATA


async def test_the_scripted_peers_keep_the_real_clients_content_contract():
    await content_contract(ScriptedPeers({"a": (len(DATA), len(DATA) // PIECE + 1, "end")}), "a")
    peers = ScriptedPeers({"a": (len(DATA), len(DATA) // PIECE + 1, "end")}, {"a": "node-x"})
    await handoff_contract(peers, "a", "node-x")


async def test_the_real_client_keeps_the_content_contract(workdir):
    from tests.inproc import start_node

    a = await start_node(workdir, "a")
    b = await start_node(workdir, "b", seeds=(a.peer_addr,))
    try:
        # put_bytes writes and fsyncs in place (fine for a manifest): off the loop for 1 MiB
        await asyncio.to_thread(asyncio.run, a.registry.store.put_bytes(DIGEST, DATA))
        await content_contract(b.parts.client, a.advertise)
        # a streams the blob to another node now: b, asking with a hand-off allowed, is sent there.
        with a.registry.streaming(DIGEST, "node-x"):
            await handoff_contract(b.parts.client, a.advertise, "node-x")
        assert a.registry.handoff_content(DIGEST, b.node_id, 0) == ""  # that stream ended
    finally:
        await b.stop()
        await a.stop()

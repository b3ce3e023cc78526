"""Relay spools, the upload queue and hand-offs, at the node's I/O edges (real HTTP on loopback)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from mesh.lab.poll import async_wait_until
from mesh.net.auth import Signer, derive_key
from mesh.net.client import HandedOff, PeerBusy, PeerClient, StreamStalled
from mesh.net.contract import SaveRequest, SaveStream
from mesh.net.server import PeerServer, SaveRefused
from mesh.node.relay import RelayBroken, Relays
from mesh.protocol import wire

IMAGE = "sha256:" + "ab" * 32


async def collect(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([c async for c in chunks])


async def test_a_reader_follows_the_spool_as_it_grows_and_gets_every_byte(workdir):
    relays = Relays(workdir / "relay")
    spool = relays.open(IMAGE, "graph")
    assert relays.receiving() == {}  # not announced before the upstream answered
    spool.start([IMAGE])
    assert relays.receiving() == {IMAGE: "graph"}
    spool.append(b"first ")
    reader = asyncio.create_task(collect(spool.read(4)))
    await async_wait_until(lambda: spool.readers == 1, 2)
    spool.append(b"second ")
    spool.append(b"third")
    assert not reader.done()  # waits for more until the stream ends
    spool.finish()
    assert await reader == b"first second third"
    assert relays.receiving() == {}
    relays.close(spool)
    assert not spool.path.exists() and relays.spools == {}


async def test_when_the_upstream_breaks_every_reader_gets_an_error_not_a_short_stream(workdir):
    relays = Relays(workdir / "relay")
    spool = relays.open(IMAGE, "graph")
    spool.start([IMAGE])
    spool.append(b"x" * 10)
    got: list[bytes] = []

    async def read() -> None:
        async for chunk in spool.read(1 << 20):
            got.append(chunk)

    reader = asyncio.create_task(read())
    await async_wait_until(lambda: got, 2)
    spool.finish("connection reset by the source")
    with pytest.raises(RelayBroken, match="connection reset"):
        await reader
    assert b"".join(got) == b"x" * 10


async def test_leftover_spools_of_a_killed_node_are_cleared(workdir):
    (workdir / "relay").mkdir()
    (workdir / "relay" / "relay-abc-1-2.tar").write_bytes(b"old")
    Relays(workdir / "relay")
    assert list((workdir / "relay").iterdir()) == []


class Handler:
    """Serves saves whose bytes the test releases; hands requests for HANDED on to a relay."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.loads: list[int] = []
        self.started: list[str] = []
        self.handoff_to = ""

    def on_envelope(self, envelope: wire.Envelope) -> wire.Envelope | None:
        return None

    def handoff(self, request: SaveRequest) -> str:
        return self.handoff_to

    async def open_save(self, request: SaveRequest) -> SaveStream:
        if request.image != IMAGE:
            raise SaveRefused(404, "not here")
        self.started.append(request.requester)

        async def chunks() -> AsyncIterator[bytes]:
            await self.release.wait()
            yield b"payload"

        return SaveStream([IMAGE], chunks())

    def uploads_changed(self, uploads: int) -> None:
        self.loads.append(uploads)

    def count_request(self, endpoint: str, status: int) -> None:
        pass

    def count_bytes_out(self, n: int) -> None:
        pass

    def save_finished(self, image: str, ok: bool) -> None:
        pass


@pytest.fixture
async def server():
    key = derive_key(b"relay-test-secret-0123456789", "default")
    handler = Handler()
    peer = PeerServer(
        handler,
        Signer(key, "default", "server"),
        max_body=1 << 20,
        request_timeout=5,
        auth_window=120,
        max_saves=1,
        upload_queue=1,
    )
    runner = web.AppRunner(peer.app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    clients = [
        PeerClient(Signer(key, "default", f"c{i}"), max_message_bytes=1 << 20, timeout=5) for i in range(3)
    ]
    yield handler, peer, clients, f"127.0.0.1:{sock.getsockname()[1]}"
    for client in clients:
        await client.close()
    await runner.cleanup()


async def fetch(client: PeerClient, addr: str, *, idle_timeout: float = 5.0) -> bytes:
    async with client.save(addr, IMAGE, chunk_bytes=1024, idle_timeout=idle_timeout) as stream:
        return await collect(stream.chunks)


async def test_excess_requests_wait_in_a_bounded_queue_and_the_rest_get_503_with_retry_after(server):
    handler, peer, (c0, c1, c2), addr = server
    first = asyncio.create_task(fetch(c0, addr))
    await async_wait_until(lambda: handler.started == ["c0"], 5)
    second = asyncio.create_task(fetch(c1, addr))
    await async_wait_until(lambda: peer.queued == 1, 5)
    with pytest.raises(PeerBusy) as busy:
        await fetch(c2, addr)
    assert busy.value.retry_after > 0 and "1 queued" in str(busy.value)
    assert max(handler.loads) == 2  # one upload and one queued: the load figure gossiped
    handler.release.set()
    assert await first == b"payload" and await second == b"payload"
    assert handler.started == ["c0", "c1"]  # the queued one was served, in order
    await async_wait_until(lambda: handler.loads[-1] == 0, 5)


async def test_a_source_hands_a_requester_on_to_its_relay(server):
    handler, _, (c0, _, _), addr = server
    handler.handoff_to = "relay-node"
    with pytest.raises(HandedOff) as handed:
        await fetch(c0, addr)
    assert handed.value.relay == "relay-node" and handler.started == []


async def test_a_stream_that_stops_sending_is_cut_by_the_idle_timeout(server):
    handler, _, (c0, _, _), addr = server

    async def stalled() -> None:
        async with c0.save(addr, IMAGE, chunk_bytes=1024, idle_timeout=0.3) as stream:
            await collect(stream.chunks)

    with pytest.raises(StreamStalled, match="no bytes for"):
        await stalled()
    handler.release.set()

"""Content bodies on blocking sockets (mesh.net.bulk): over the nodes' real TLS, kept alive between
blobs, checked for identity like every other request, and cut at once when the fetch stops."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
import time
from pathlib import Path

import pytest
from aiohttp import web

from mesh.lab.poll import async_wait_until
from mesh.net.auth import Signer
from mesh.net.bulk import BulkClient
from mesh.net.client import PeerClient, PeerError
from mesh.net.contract import CONTENT_PATH, SIZE_HEADER
from mesh.net.tls_peers import PeerIdentityError, TLSClient
from mesh.registry.fetch import Fetcher
from mesh.registry.store import Store
from tests.inproc import start_node

DATA = bytes(range(256)) * 4096 * 3  # 3 MiB: several pieces
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()


async def read_body(client: PeerClient, addr: str) -> bytes:
    async with client.content(addr, DIGEST, offset=0, chunk_bytes=1 << 20, idle_timeout=5) as stream:
        assert stream.read_into is not None and stream.size == len(DATA)
        return b"".join([piece async for piece in stream.chunks])


@pytest.fixture
async def pair(workdir: Path):  # type: ignore[no-untyped-def]
    a = await start_node(workdir, "a")
    b = await start_node(workdir, "b", seeds=(a.peer_addr,))
    await asyncio.to_thread(asyncio.run, a.registry.store.put_bytes(DIGEST, DATA))
    try:
        yield a, b
    finally:
        await b.stop()
        await a.stop()


async def test_bodies_come_over_tls_and_the_connection_is_kept_for_the_next(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    bulk: BulkClient = b.parts.client._bulk
    assert await read_body(b.parts.client, a.advertise) == DATA
    [(first, _)] = bulk._idle[a.advertise]
    assert isinstance(first.sock, ssl.SSLSocket) and first.sock.version() == "TLSv1.3"
    assert await read_body(b.parts.client, a.advertise) == DATA
    assert [conn for conn, _ in bulk._idle[a.advertise]] == [first]  # the same one, no new handshake


async def test_a_kept_connection_the_peer_closed_is_replaced_unseen(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    bulk: BulkClient = b.parts.client._bulk
    assert await read_body(b.parts.client, a.advertise) == DATA
    [(kept, _)] = bulk._idle[a.advertise]
    kept.sock.shutdown(socket.SHUT_RDWR)  # as a peer's keep-alive timeout ends it
    assert await read_body(b.parts.client, a.advertise) == DATA
    [(fresh, _)] = bulk._idle[a.advertise]
    assert fresh is not kept


async def test_a_body_not_read_to_its_end_closes_its_connection(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    async with b.parts.client.content(
        a.advertise, DIGEST, offset=0, chunk_bytes=1 << 20, idle_timeout=5
    ) as s:
        assert s.read_into is not None
        assert await asyncio.to_thread(s.read_into, memoryview(bytearray(1 << 16))) > 0
    assert not b.parts.client._bulk._idle[a.advertise]  # the rest of that body is not the next answer


async def test_a_certificate_naming_another_node_is_refused(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    tls: TLSClient = b.parts.client._tls
    wrong = BulkClient(TLSClient(tls.context, tls.observer, lambda addr: {"someone-else"}), connect_timeout=5)
    try:
        with pytest.raises(PeerIdentityError, match="expected someone-else"):
            await wrong.open(a.advertise, CONTENT_PATH, b"", {}, read_timeout=5)
    finally:
        wrong.close()


async def test_a_peer_that_is_not_tls_is_named_as_such(pair, workdir: Path) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    plain = await start_node(workdir, "plain", tls="off", insecure=True)
    try:
        with pytest.raises(PeerError, match="plain HTTP"):
            await read_body(b.parts.client, plain.advertise)
        assert "plain HTTP" in b.parts.client._tls.observer.refused()[plain.advertise]  # status page
    finally:
        await plain.stop()


async def stalling_peer(sent: int, until: asyncio.Event) -> tuple[web.AppRunner, str]:
    """A peer that answers a content request with its size and `sent` bytes, then nothing until
    `until` is set."""

    async def content(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={SIZE_HEADER: str(len(DATA))})
        response.content_length = len(DATA)
        await response.prepare(request)
        await response.write(DATA[:sent])
        await until.wait()
        return response

    app = web.Application()
    app.router.add_post(CONTENT_PATH, content)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"127.0.0.1:{port}"


async def test_a_stopping_fetch_cuts_a_read_blocked_in_its_thread(tmp_path: Path) -> None:
    """The idle timeout is a minute; stopping the fetcher must not wait for it."""
    done = asyncio.Event()
    runner, addr = await stalling_peer(1 << 20, done)
    client = PeerClient(Signer(b"s" * 32, "c", "node-b"), max_message_bytes=1 << 20, timeout=5)
    fetcher = Fetcher(Store(tmp_path / "registry"), client, lambda digest: [addr], idle_timeout=60)
    try:
        fetch = fetcher.start(DIGEST)
        await async_wait_until(lambda: fetch.written == 1 << 20, 10, what="the first MiB stored")
        started = time.monotonic()
        await fetcher.close()
        assert time.monotonic() - started < 5
        assert fetch.error is not None and "stopping" in str(fetch.error)
        assert not fetch.temp.exists() and not fetcher.store.has(DIGEST)
    finally:
        await client.close()
        done.set()
        await runner.cleanup()

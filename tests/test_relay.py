"""Relay spools, the upload queue and hand-offs, at the node's I/O edges (real HTTP on loopback)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import aiohttp
import msgpack
import pytest
from aiohttp import web

from mesh.engine.fake import FakeEngine
from mesh.lab.poll import async_wait_until
from mesh.net.auth import Signer, derive_key
from mesh.net.client import HandedOff, PeerBusy, PeerClient, StreamStalled
from mesh.net.contract import RELAY_HEADER, SAVE_PATH, SaveRequest, SaveStream
from mesh.net.server import PeerServer, SaveRefused
from mesh.node.peer_api import PeerApi
from mesh.node.relay import RelayBroken, Relays
from mesh.protocol import wire
from mesh.protocol.sources import CHAIN_DEPTH, Downstream
from tests.inproc import has_image, start_node, wait_pulled

IMAGE = "sha256:" + "ab" * 32


async def collect(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([c async for c in chunks])


async def test_a_reader_follows_the_spool_as_it_grows_and_gets_every_byte(workdir):
    relays = Relays(workdir / "relay", on_change=lambda: None)
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
    relays = Relays(workdir / "relay", on_change=lambda: None)
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


async def test_a_spool_whose_upstream_never_answered_refuses_readers(workdir):
    relays = Relays(workdir / "relay", on_change=lambda: None)
    spool = relays.open(IMAGE, "graph")
    with pytest.raises(RelayBroken, match="did not answer"):
        await spool.wait_started(0.05)
    spool.finish("handed off elsewhere")
    with pytest.raises(RelayBroken, match="handed off elsewhere"):
        await spool.wait_started(1)


async def test_leftover_spools_of_a_killed_node_are_cleared(workdir):
    (workdir / "relay").mkdir()
    (workdir / "relay" / "relay-abc-1-2.tar").write_bytes(b"old")
    Relays(workdir / "relay", on_change=lambda: None)
    assert list((workdir / "relay").iterdir()) == []


class Handler:
    """Serves saves whose bytes the test releases; hands requests for HANDED on to a relay."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.loads: list[int] = []
        self.started: list[str] = []
        self.handoff_to = ""
        self.hops: list[int] = []  # what each request the server asked about said it had followed

    def on_envelope(self, envelope: wire.Envelope) -> wire.Envelope | None:
        return None

    def handoff(self, request: SaveRequest) -> str:
        self.hops.append(request.hops)
        return self.handoff_to

    async def open_save(self, request: SaveRequest) -> SaveStream:
        if request.image != IMAGE:
            raise SaveRefused(404, "not here")
        self.started.append(request.requester)

        async def chunks() -> AsyncIterator[bytes]:
            yield b"pay"
            await self.release.wait()
            yield b"load"

        return SaveStream([IMAGE], chunks())

    def uploads_changed(self, uploads: int) -> None:
        self.loads.append(uploads)

    def count_request(self, endpoint: str, status: int) -> None:
        pass

    def count_bytes_out(self, n: int) -> None:
        pass

    def save_finished(self, image: str, ok: bool) -> None:
        pass


KEY = derive_key(b"relay-test-secret-0123456789", "default")


@pytest.fixture
async def server():
    key = KEY
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
    # A receiver that may not be handed on (after a failure, or one that predates hand-offs and
    # so sends no such field) is served here.
    handler.release.set()
    async with c0.save(addr, IMAGE, handoff=False, chunk_bytes=1024, idle_timeout=5) as stream:
        assert await collect(stream.chunks) == b"payload"


async def test_a_save_request_tells_the_source_how_many_hand_offs_it_followed(server):
    handler, _, (c0, _, _), addr = server
    handler.handoff_to = "relay-node"
    with pytest.raises(HandedOff):
        async with c0.save(addr, IMAGE, hops=5, chunk_bytes=1024, idle_timeout=5):
            pass

    async def raw(doc: dict) -> tuple[int, aiohttp.typedefs.LooseHeaders]:
        body = msgpack.packb(doc)
        headers = Signer(KEY, "default", "old").sign_request("POST", SAVE_PATH, body, time.time())
        headers["Content-Type"] = "application/msgpack"
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"http://{addr}{SAVE_PATH}", data=body, headers=headers) as r,
        ):
            return r.status, r.headers

    # a node from before hops sends none: its request counts as a first one
    status, headers = await raw({"image": IMAGE, "handoff": True})
    assert status == 503 and headers[RELAY_HEADER] == "relay-node"
    assert handler.hops == [5, 0]
    for bad in (-1, 1001, True, "3"):
        status, _ = await raw({"image": IMAGE, "handoff": True, "hops": bad})
        assert status == 400, bad
    assert handler.hops == [5, 0]


def test_the_peer_api_hands_on_by_the_rule_and_counts_requests_per_stream_while_it_lasts():
    api = PeerApi(  # handoff needs none of these
        lambda envelope: None,
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        FakeEngine(),
        None,  # type: ignore[arg-type]
        spool=None,
        relays=None,
        on_load=lambda: None,
        chunk_bytes=1 << 20,
        relay_start_timeout=30.0,
    )
    first, second = (Downstream(peer, IMAGE, "graph", relays=True) for peer in ("a", "b"))
    api.sending += [first, second]
    deep = SaveRequest(IMAGE, "r", handoff=True, hops=CHAIN_DEPTH)
    assert [api.handoff(deep) for _ in range(3)] == ["a", "b", "a"]  # the fewest handed so far
    assert api.routed == {first: 2, second: 1}
    assert api.handoff(SaveRequest(IMAGE, "r", handoff=True)) == "b"  # a chain: the newest
    api._stop_sending(first)
    assert api.routed == {second: 2}  # a stream's count goes with it
    assert api.handoff(deep) == ""  # one relay left: a second branch is served here


async def test_a_stream_that_stops_sending_midway_is_cut_by_the_idle_timeout(server):
    handler, _, (c0, _, _), addr = server

    async def stalled() -> None:
        async with c0.save(addr, IMAGE, chunk_bytes=1024, idle_timeout=0.3) as stream:
            await collect(stream.chunks)

    with pytest.raises(StreamStalled, match="no bytes for"):
        await stalled()
    handler.release.set()


# --- relays between in-process nodes ------------------------------------------------------------


class SlowEngine(FakeEngine):
    """A source whose save streams trickle: a pull lasts long enough to be relayed."""

    async def save(self, image_ids, chunk_size=4096):  # type: ignore[override]
        async for chunk in super().save(image_ids, chunk_size=4096):
            await asyncio.sleep(0.01)
            yield chunk


@pytest.fixture
async def relay_mesh(workdir):
    source_engine = SlowEngine()
    image = source_engine.build("app:1", [bytes(range(256)) * 2048, b"top layer" * 1000])
    nodes = [await start_node(workdir, "src", engine=source_engine)]
    # A member that shares nothing and lacks the image: r1 spools its pull only because some
    # live peer besides its source lacks the image (sources.worth_relaying).
    bystander = await start_node(workdir, "bystander", seeds=(nodes[0].peer_addr,), include=("none:*",))
    await async_wait_until(lambda: len(bystander.core.view.live_peers()) == 1, 10, what="bystander joined")
    first = FakeEngine()
    nodes.append(await start_node(workdir, "r1", engine=first, seeds=(nodes[0].peer_addr,)))
    yield nodes, image, workdir
    await bystander.stop()
    for node in reversed(nodes):
        await node.stop()


def receiving(node, image) -> int:  # type: ignore[no-untyped-def]
    record = node.puller.active.get(image)
    return record.done if record is not None else 0


async def test_a_node_still_receiving_an_image_relays_it_and_the_receiver_verifies_it(relay_mesh):
    nodes, image, workdir = relay_mesh
    src, r1 = nodes
    await async_wait_until(lambda: receiving(r1, image) > 0, 10, what="r1 receiving from src")
    nodes.append(await start_node(workdir, "r2", engine=FakeEngine(), seeds=(src.peer_addr,)))
    r2 = nodes[2]
    pulled = await wait_pulled(r2, image, "app:1", 30, what="app:1 on r2")
    assert (pulled.peer_name, pulled.relay) == ("r1", True)
    assert r1.metrics.relays_served._value.get() == 1
    await async_wait_until(lambda: has_image(r1, image, "app:1"), 20, what="app:1 on r1")
    assert not r1.parts.relays.spools and not list((workdir / "r1" / "relay").iterdir())  # spool removed


async def test_when_a_relay_leaves_mid_relay_its_receiver_fails_over_to_a_holder(relay_mesh):
    nodes, image, workdir = relay_mesh
    src, r1 = nodes
    await async_wait_until(lambda: receiving(r1, image) > 0, 10, what="r1 receiving from src")
    r2_engine = FakeEngine()
    nodes.append(await start_node(workdir, "r2", engine=r2_engine, seeds=(src.peer_addr,)))
    r2 = nodes[2]
    await async_wait_until(
        lambda: (t := r2.puller.active.get(image)) is not None and t.peer_name == "r1" and t.done > 0,
        10,
        what="r2 receiving from r1's relay",
    )
    await r1.stop()
    await wait_pulled(r2, image, "app:1", 40, what="app:1 on r2 from src")
    outcomes = [(t.peer_name, t.outcome) for t in reversed(r2.puller.recent)]
    assert outcomes == [("r1", "failed"), ("src", "ok")], outcomes
    assert r2.metrics.failovers._value.get() == 1
    assert [i.tags for i in await r2_engine.images()] == [("app:1",)]  # nothing partial left


async def test_a_pull_nobody_else_lacks_is_not_spooled(workdir):
    """Two hosts: the receiver's only peer is its source, so it writes no relay spool (a spool
    would write the image to disk a second time while the engine loads it)."""
    source_engine = FakeEngine()
    image = source_engine.build("app:1", [b"layer" * 1000])
    src = await start_node(workdir, "src", engine=source_engine)
    r1 = await start_node(workdir, "r1", seeds=(src.peer_addr,))
    opened: list[str] = []
    original = r1.parts.relays.open
    r1.parts.relays.open = lambda image, store: opened.append(image) or original(image, store)  # type: ignore[method-assign]
    try:
        await async_wait_until(lambda: has_image(r1, image, "app:1"), 20, what="app:1 on r1")
        assert opened == []
    finally:
        await r1.stop()
        await src.stop()

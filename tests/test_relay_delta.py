"""Relays for deltas between in-process nodes (real HTTP on loopback, the in-memory engine).

Receivers that hold the base image pull only the layers on top, and relay that delta to
requesters whose missing layers it covers (mesh/protocol/sources.py, rule 3); a receiver that
holds less is never served from such a spool, and an engine that refuses a delta gets the image
in full from a source that can send a full stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest

from mesh.engine.fake import FakeEngine
from mesh.lab.poll import async_wait_until
from mesh.net.contract import SaveRequest, SaveStream
from mesh.net.server import SaveRefused
from mesh.node.node import Node
from mesh.node.relay import Spool
from mesh.protocol.sources import Downstream
from tests.inproc import has_image, start_node, wait_pulled
from tests.test_relay import IMAGE, collect, server
from tests.test_transfer import CountingEngine

__all__ = ["server"]  # the fixture, shared with tests/test_relay.py

# Over 1 MiB each: a legacy-format layer file that big is recognised by its hash and left out
# (mesh/engine/delta.py; smaller files are sent).
BASE_LAYER = bytes(range(256)) * 5000  # 1.28 MB
DEPS_LAYER = b"dependencies " * 100_000  # 1.3 MB
CODE_NEW = b"the new build's code " * 70_000  # 1.47 MB
CODE_OLD = b"the old build's code " * 60_000
FULL = len(BASE_LAYER) + len(DEPS_LAYER) + len(CODE_NEW)  # the new build's layers: a full stream


class TrickleEngine(FakeEngine):
    """A source whose save streams trickle (about 800 kB/s): a pull lasts long enough for the
    receivers that arrive after it to be relayed."""

    async def save(self, image_ids, chunk_size=16384):  # type: ignore[override]
        async for chunk in super().save(image_ids, chunk_size=16384):
            await asyncio.sleep(0.02)
            yield chunk


def build(engine: FakeEngine, *, new: bool = False, old: bool = False) -> dict[str, str]:
    """base:1 (one layer); with `new` or `old` also app:latest = base + deps + code (the new
    build, created later, or an older one that shares the base and the deps)."""
    keys = {"base": engine.build("base:1", [BASE_LAYER], created=100)}
    if new or old:
        keys["deps"] = engine.build(None, [DEPS_LAYER], parent=keys["base"], created=110)
    if new:
        keys["new"] = engine.build("app:latest", [CODE_NEW], parent=keys["deps"], created=300)
    if old:
        keys["old"] = engine.build("app:latest", [CODE_OLD], parent=keys["deps"], created=200)
    return keys


Served = list[tuple[str, str, int, int, str]]


def watch_relays(node: Node, served: Served) -> None:
    """Record every request `node` answers from a relay spool: (relay, requester, the requester's
    have, the spool's have once started, "served" or the refusal)."""
    api = node.parts.peer_api
    original = api._open_relay

    async def open_relay(spool: Spool, request: SaveRequest) -> Any:
        try:
            stream = await original(spool, request)
        except SaveRefused as exc:
            served.append((node.config.node_name, request.requester, request.have, spool.have, str(exc)))
            raise
        served.append((node.config.node_name, request.requester, request.have, spool.have, "served"))
        return stream

    api._open_relay = open_relay  # type: ignore[method-assign]


def pulling(node: Node, image: str) -> Callable[[], bool]:
    def check() -> bool:
        record = node.puller.active.get(image)
        return record is not None and record.done > 0

    return check


@pytest.fixture
async def mesh(workdir):
    """A slow source holding the new build, and a member that shares nothing and lacks it (so
    the first receiver's pull is worth relaying, sources.worth_relaying)."""
    engine = TrickleEngine()
    keys = build(engine, new=True)
    nodes: list[Node] = [await start_node(workdir, "src", engine=engine)]
    bystander = await start_node(workdir, "bystander", seeds=(nodes[0].peer_addr,), include=("none:*",))
    await async_wait_until(lambda: len(bystander.core.view.live_peers()) == 1, 10, what="bystander joined")
    served: Served = []

    async def join(name: str, engine: FakeEngine) -> Node:
        node = await start_node(workdir, name, engine=engine, seeds=(nodes[0].peer_addr,))
        watch_relays(node, served)
        nodes.append(node)
        return node

    yield join, keys, served
    await bystander.stop()
    for node in reversed(nodes):
        await node.stop()


async def test_a_heterogeneous_burst_relays_deltas_only_to_receivers_they_cover(mesh):
    join, keys, served = mesh
    app = keys["new"]
    ids = {}

    def name_of(node_id: str) -> str:
        return next((name for name, i in ids.items() if i == node_id), node_id)

    # b1 holds the base: it pulls the delta from the source, and relays it, tagged have 1.
    b1_engine = FakeEngine()
    build(b1_engine)
    b1 = await join("b1", b1_engine)
    ids["b1"] = b1.core.node_id
    await async_wait_until(pulling(b1, app), 10, what="b1 receiving the delta from src")
    assert b1.puller.active[app].peer_name == "src"
    await async_wait_until(lambda: b1.parts.relays.relay_have().get(app) == 1, 5, what="b1's spool has 1")

    # e1 holds nothing: b1's delta lacks the base layer it lacks, so e1 goes to the source, and
    # relays its full stream (have 0).
    e1 = await join("e1", FakeEngine())
    ids["e1"] = e1.core.node_id
    await async_wait_until(pulling(e1, app), 10, what="e1 receiving")
    assert (e1.puller.active[app].peer_name, e1.puller.active[app].relay) == ("src", False)
    # Asked anyway (as a stale plan might), b1 refuses rather than send e1 a stream without the
    # base layer.
    with pytest.raises(SaveRefused, match="holding its first 1 layers"):
        await b1.parts.peer_api.open_save(SaveRequest(app, "someone", have=0, store="graph"))
    assert served.pop() == ("b1", "someone", 0, 1, served_refusal(app))

    # b2 holds the base too: a relay serves it, b1's delta or e1's full stream.
    b2_engine = FakeEngine()
    build(b2_engine)
    b2 = await join("b2", b2_engine)
    ids["b2"] = b2.core.node_id
    # o1 holds an older build (base and deps: have 2): any of the three relays covers it.
    o1_engine = FakeEngine()
    build(o1_engine, old=True)
    o1 = await join("o1", o1_engine)
    ids["o1"] = o1.core.node_id

    records = {}
    for node in (b1, e1, b2, o1):
        records[node.config.node_name] = await wait_pulled(node, app, "app:latest", 60, what=f"app on {node}")
    for name, engine in (("b1", b1_engine), ("b2", b2_engine), ("o1", o1_engine)):
        assert has_image(await _node(name, b1, e1, b2, o1), app, "app:latest"), name
        assert app in {i.meta.id for i in await engine.images()}  # loaded: every layer verified
    assert records["b2"].relay and records["b2"].peer_name in ("b1", "e1"), records["b2"]
    # No spool ever served, or was even asked by, a requester holding fewer layers than it left
    # out: the plans and the hand-offs chose only covering relays.
    asked = [(relay, name_of(who), have, spool_have, what) for relay, who, have, spool_have, what in served]
    assert all(have >= spool_have and what == "served" for _, _, have, spool_have, what in asked), asked
    assert ("b1", "e1") not in {(relay, who) for relay, who, *_ in asked}
    assert records["b1"].done < FULL - len(BASE_LAYER) / 2  # a delta
    assert records["e1"].done > FULL  # in full
    assert any(relay in ("b1", "e1") and who == "b2" for relay, who, *_ in asked), asked
    for node in (b1, e1, b2, o1):
        assert node.metrics.transfers.labels("in", "failed")._value.get() == 0, node.config.node_name
        assert node.metrics.delta_fallbacks._value.get() == 0


def served_refusal(image: str) -> str:
    return f"{image[:19]} is relayed here only to receivers holding its first 1 layers (this one holds 0)"


async def _node(name: str, *nodes: Node) -> Node:
    return next(n for n in nodes if n.config.node_name == name)


async def test_a_delta_the_engine_refuses_from_a_relay_is_pulled_in_full_from_the_holder(mesh):
    join, keys, served = mesh
    app = keys["new"]
    b1_engine = FakeEngine()
    build(b1_engine)
    b1 = await join("b1", b1_engine)
    await async_wait_until(pulling(b1, app), 10, what="b1 receiving the delta from src")
    await async_wait_until(lambda: b1.parts.relays.relay_have().get(app) == 1, 5, what="b1 relays have 1")
    # b2 holds the base but its engine refuses a tar with layers left out (the containerd store
    # with a legacy-format delta): b1's delta is refused, and b1 cannot send it the full image.
    refusing = CountingEngine(refuse_deltas=True)
    build(refusing)
    b2 = await join("b2", refusing)
    pulled = await wait_pulled(b2, app, "app:latest", 60, what="app on b2")
    # From a holder: the source, or b1 once it holds the image (then it sends a full stream).
    assert not pulled.relay and pulled.peer_name in ("src", "b1"), pulled
    assert refusing.loads[-2] < FULL - len(BASE_LAYER) / 2  # the delta, refused
    assert refusing.loads[-1] > FULL  # the full tar, loaded
    outcomes = [(t.peer_name, t.outcome) for t in reversed(b2.puller.recent)]
    # Planned onto b1's relay, the attempt ends and the next plan (have 0) takes a holder; handed
    # on to b1 by the source, the pull goes back to the source.
    assert outcomes in (
        [("b1", "replanned"), (pulled.peer_name, "ok")],
        [(pulled.peer_name, "ok")],
    ), outcomes
    assert b2.metrics.delta_fallbacks._value.get() == 1
    assert b2.metrics.transfers.labels("in", "failed")._value.get() == 0
    assert b2.metrics.failovers._value.get() == 0
    # The full retry never went to b1's relay: it served b2 the delta and refused nobody.
    assert [(relay, what) for relay, _, _, _, what in served] == [("b1", "served")]
    await wait_pulled(b1, app, "app:latest", 60, what="app on b1")


# --- what a stream says it leaves out (X-Cachemesh-Have) ------------------------------------------


@pytest.mark.parametrize("have", [None, 0, 3])
async def test_a_save_stream_says_what_it_leaves_out_and_a_sender_that_does_not_says_none(server, have):
    handler, _, (c0, _, _), addr = server
    opened = handler.open_save

    async def open_save(request: SaveRequest) -> SaveStream:
        stream = await opened(request)
        return SaveStream(stream.chain, stream.chunks, have)  # None: as a sender from before it

    handler.open_save = open_save  # type: ignore[method-assign]
    handler.release.set()
    async with c0.save(addr, IMAGE, handoff=False, chunk_bytes=1024, idle_timeout=5) as stream:
        assert stream.have == have
        assert await collect(stream.chunks) == b"payload"


@pytest.mark.parametrize(
    ("store", "layers", "have", "left"),
    [
        ("graph", "base+deps+code", 1, 1),
        ("graph", "base+deps+code", 2, 2),
        ("graph", "base+deps+code", 0, 0),
        # the fake engine writes only the legacy format, which the containerd store refuses with
        # a layer missing: the stream is full, and says so
        ("containerd", "base+deps+code", 2, 0),
        # a held layer that recurs above `have` stays in the stream
        ("graph", "base+deps+base", 1, 0),
        ("graph", "base+deps+base", 2, 2),
    ],
)
async def test_a_holder_says_its_stream_leaves_out_only_what_it_can(workdir, store, layers, have, left):
    engine = FakeEngine()
    keys = build(engine, new=True)
    image = keys["new"]
    if layers == "base+deps+base":
        image = engine.build("again:1", [BASE_LAYER], parent=keys["deps"], created=400)
    node = await start_node(workdir, "src", engine=engine)
    try:
        await async_wait_until(lambda: image in node.local.shared, 10, what="the image shared")
        stream = await node.parts.peer_api.open_save(SaveRequest(image, "someone", have=have, store=store))
        await stream.chunks.aclose()  # type: ignore[attr-defined]
        assert stream.have == left
    finally:
        await node.stop()


@pytest.mark.parametrize(("relay", "left"), [(True, 0), (False, 1)])
async def test_a_holder_sends_in_full_a_relaying_requester_its_relays_cannot_serve(workdir, relay, left):
    # Streaming the image already to a relay of an older build's delta (have 2), which cannot
    # serve a receiver holding only the base: that receiver, if it relays, gets the image in full,
    # so that later receivers holding anything can take it from its spool (sources.cut_for).
    async with holder_of_new(workdir) as (_, node, image):
        api = node.parts.peer_api
        api.sending.append(Downstream("older", image, "graph", True, 2))
        stream = await api.open_save(SaveRequest(image, "base", have=1, store="graph", relay=relay))
        body = await collect(stream.chunks)
        assert stream.have == left
        assert len(body) > FULL if relay else len(body) < FULL


@contextlib.asynccontextmanager
async def holder_of_new(workdir):  # type: ignore[no-untyped-def]
    """A node on a fake engine sharing build()'s "new" image: (engine, node, image)."""
    engine = FakeEngine()
    image = build(engine, new=True)["new"]
    node = await start_node(workdir, "src", engine=engine)
    try:
        await async_wait_until(lambda: image in node.local.shared, 10, what="the image shared")
        yield engine, node, image
    finally:
        await node.stop()


async def test_a_stream_counts_as_sending_from_the_moment_it_is_promised(workdir, monkeypatch):
    """Two relaying requests a moment apart: the second must be handed on to the first, even
    while the first waits for the engine before its first byte (else the source sends twice)."""
    from mesh.node import peer_api as peer_api_module

    async with holder_of_new(workdir) as (engine, node, image):
        api = node.parts.peer_api
        gate, info = asyncio.Event(), engine.info

        async def slow_info():  # type: ignore[no-untyped-def]
            await gate.wait()
            return await info()

        monkeypatch.setattr(engine, "info", slow_info)
        first = SaveRequest(image, "r1", have=1, store="graph", relay=True, handoff=True)
        assert api.handoff(first) == ""
        opening = asyncio.create_task(api.open_save(first))
        await asyncio.sleep(0)  # the first request now waits for the engine, promised
        assert api.handoff(SaveRequest(image, "r2", have=1, store="graph", relay=True, handoff=True)) == "r1"
        gate.set()
        stream = await opening
        chunks = stream.chunks
        await anext(chunks)  # streaming: the stream takes its promise's place, and its count
        [sending] = api.sending
        assert sending.peer == "r1" and api.routed == {sending: 1}
        await chunks.aclose()  # type: ignore[attr-defined]
        assert api.sending == [] and api.routed == {}

        # A promise whose open failed is dropped at once; one whose response never started, in time.
        gate.clear()
        failing = asyncio.create_task(api.open_save(SaveRequest(image, "r3", store="graph", relay=True)))
        await asyncio.sleep(0)
        assert [s.peer for s in api.sending] == ["r3"]
        failing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await failing
        assert api.sending == []
        gate.set()
        never = await api.open_save(SaveRequest(image, "r4", store="graph", relay=True))
        assert [s.peer for s in api.sending] == ["r4"]
        for promise in api._promised:  # as if it were made longer ago than a promise lasts
            api._promised[promise] -= peer_api_module.PROMISE_SECONDS + 1
        assert api.handoff(SaveRequest(image, "r5", store="graph", relay=True, handoff=True)) == ""
        assert api.sending == []
        await never.chunks.aclose()  # type: ignore[attr-defined]

"""Registry content across in-process nodes on loopback: a push on one is a pull on another."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import time
from pathlib import Path

import aiohttp
import pytest
from rich.console import Console

from mesh.lab.poll import async_wait_until
from mesh.net.client import ContentStream
from mesh.node.node import Node
from mesh.protocol import wire
from mesh.registry.manifest import BUILDKIT_CACHE_CONFIG, OCI_MANIFEST
from mesh.ui.status_cli import print_status
from tests.inproc import start_node


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def push(session: aiohttp.ClientSession, node: Node, ref: str, blobs: list[bytes]) -> str:
    """Push blobs and a manifest naming them to `node`'s registry as `ref` (repo:tag)."""
    name, _, tag = ref.rpartition(":")
    base = f"http://{node.registry_addr}"
    descriptors = []
    for data in blobs:
        digest = digest_of(data)
        async with session.post(f"{base}/v2/{name}/blobs/uploads/") as r:
            location = r.headers["Location"]
        async with session.put(f"{base}{location}?digest={digest}", data=data) as r:
            assert r.status == 201, await r.text()
        descriptors.append({"mediaType": "application/octet-stream", "digest": digest, "size": len(data)})
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {**descriptors[0], "mediaType": BUILDKIT_CACHE_CONFIG},
            "layers": descriptors[1:],
        }
    ).encode()
    async with session.put(
        f"{base}/v2/{name}/manifests/{tag}", data=manifest, headers={"Content-Type": OCI_MANIFEST}
    ) as r:
        assert r.status == 201, await r.text()
        return r.headers["Docker-Content-Digest"]


async def resolves(session: aiohttp.ClientSession, node: Node, ref: str) -> str | None:
    name, _, tag = ref.rpartition(":")
    async with session.head(f"http://{node.registry_addr}/v2/{name}/manifests/{tag}") as r:
        return r.headers.get("Docker-Content-Digest") if r.status == 200 else None


async def get_blob(session: aiohttp.ClientSession, node: Node, digest: str) -> bytes:
    async with session.get(f"http://{node.registry_addr}/v2/any/blobs/{digest}") as r:
        assert r.status == 200, await r.text()
        return await r.read()


def content_requests(node: Node, status: str | None = None) -> float:
    return sum(
        sample.value
        for metric in node.metrics.registry.collect()
        if metric.name == "cachemesh_peer_requests"
        for sample in metric.samples
        if sample.labels.get("endpoint") == "content"
        and sample.name.endswith("_total")
        and status in (None, sample.labels.get("status"))
    )


@pytest.fixture
async def pair(workdir: Path):  # type: ignore[no-untyped-def]
    a = await start_node(workdir, "a")
    b = await start_node(workdir, "b", seeds=(a.advertise,))
    session = aiohttp.ClientSession()
    try:
        await async_wait_until(lambda: a.node_id in b.core.membership.live_ids(), 10, what="b sees a")
        yield a, b, session
    finally:
        await session.close()
        await b.stop()
        await a.stop()


async def test_pushed_on_a_pulled_from_b(pair) -> None:  # type: ignore[no-untyped-def]
    a, b, session = pair
    layer = bytes(range(256)) * 20_000  # 5 MB
    config = b'{"layers": []}'
    digest = await push(session, a, "cache/app:ms", [config, layer])
    pushed = time.monotonic()
    await async_wait_until(
        lambda: resolves(session, b, "cache/app:ms"), 5, what="b resolves the tag a pushed"
    )
    served_after = time.monotonic() - pushed
    assert await resolves(session, b, "cache/app:ms") == digest
    async with session.get(f"http://{b.registry_addr}/v2/cache/app/manifests/ms") as r:
        assert digest_of(await r.read()) == digest
    # Three clients at once: one fetch from a.
    before = content_requests(a)
    results = await asyncio.gather(*(get_blob(session, b, digest_of(layer)) for _ in range(3)))
    assert all(r == layer for r in results)
    assert content_requests(a) - before == 1
    await async_wait_until(lambda: b.registry.store.has(digest_of(layer)), 5, what="b stores the layer")
    assert await get_blob(session, b, digest_of(config)) == config
    # b holds it all now, and says so: a's view of the mesh lists b as a holder.
    await async_wait_until(
        lambda: any(
            t_holder == "b"
            for repo in a.registry.status("")["repositories"]  # type: ignore[index, attr-defined]
            for t in repo["tags"]  # type: ignore[index]
            for t_holder in t["holders"]
        ),
        5,
        what="a sees b hold the cache",
    )
    assert served_after < 2.0


async def test_newest_push_wins_everywhere(pair) -> None:  # type: ignore[no-untyped-def]
    a, b, session = pair
    first = await push(session, a, "img:1", [b"{}", b"one"])
    await async_wait_until(lambda: resolves(session, b, "img:1"), 5, what="b learns img:1")
    second = await push(session, b, "img:1", [b"{}", b"two"])
    assert first != second
    await async_wait_until(
        lambda: _equals(resolves(session, a, "img:1"), second), 5, what="a follows b's newer push"
    )
    assert await resolves(session, b, "img:1") == second


async def _equals(value, expected) -> bool:  # type: ignore[no-untyped-def]
    return await value == expected


async def test_unknown_content_is_404_at_once(pair) -> None:  # type: ignore[no-untyped-def]
    a, b, session = pair
    started = time.monotonic()
    async with session.get(f"http://{b.registry_addr}/v2/x/blobs/{digest_of(b'nobody')}") as r:
        assert r.status == 404
    async with session.get(f"http://{b.registry_addr}/v2/x/manifests/{digest_of(b'nobody')}") as r:
        assert r.status == 404
    assert time.monotonic() - started < 1.0


async def test_a_source_dying_mid_blob_resumes_from_another(workdir: Path) -> None:
    a = await start_node(workdir, "a")
    c = await start_node(workdir, "c", seeds=(a.advertise,))
    b = await start_node(workdir, "b", seeds=(a.advertise,))
    session = aiohttp.ClientSession()
    try:
        await async_wait_until(lambda: len(b.core.membership.live_ids()) == 2, 10, what="b sees a and c")
        layer = bytes(range(256)) * 40_000  # 10 MB
        digest = await push(session, a, "big:1", [b"{}", layer])
        await push(session, c, "big:2", [b"{}", layer])
        blob = digest_of(layer)
        await async_wait_until(
            lambda: len(b.registry._holder_addrs(blob)) == 2, 5, what="b knows two holders"
        )
        # a breaks off after 3 MB, as a peer killed mid-stream does; b must be asked to use a first.
        real_open = a.registry.open_content

        def dying(digest_: str, offset: int) -> ContentStream | None:
            stream = real_open(digest_, offset)
            if stream is None or digest_ != blob:
                return stream

            async def chunks():  # type: ignore[no-untyped-def]
                sent = 0
                async for chunk in stream.chunks:
                    if sent >= 3_000_000:
                        raise ConnectionResetError("killed")
                    sent += len(chunk)
                    yield chunk

            return ContentStream(stream.size, stream.media_type, chunks())

        a.registry.open_content = dying  # type: ignore[method-assign]
        b.parts.peer_server  # noqa: B018 (started)
        order = [a.advertise, c.advertise]
        b.registry.fetcher.holders = lambda d: [x for x in order if x in b.registry._holder_addrs(d)]
        before_c = content_requests(c)
        assert await get_blob(session, b, blob) == layer
        assert content_requests(c) - before_c == 1  # the rest came from c
        await async_wait_until(lambda: b.registry.store.has(blob), 5, what="b stores the blob")
        assert digest
    finally:
        await session.close()
        for node in (b, c, a):
            await node.stop()


async def test_warm_up_gates_readiness(workdir: Path) -> None:
    a = await start_node(workdir, "a")
    session = aiohttp.ClientSession()
    b = None
    try:
        layer = bytes(range(256)) * 8_000
        digest = await push(session, a, "cache/app:ms", [b"{}", layer])
        await push(session, a, "other/app:1", [b"{}", b"not warmed"])
        b = await start_node(workdir, "b", seeds=(a.advertise,), registry_warm=("cache/*",))
        seen: list[str] = []

        def ready() -> bool:
            ok, reason = b.readiness.check()  # type: ignore[union-attr]
            seen.append(reason)
            return ok

        await async_wait_until(ready, 15, what="b warm")
        # Ready only once the matching tag's manifest and every blob are here; the rest is not.
        assert b.registry.complete(digest) is not None
        assert b.registry.tag("other/app", "1") is not None
        assert not b.registry.store.has(digest_of(b"not warmed"))
        async with session.get(f"http://{b.status_addr}/api/status") as r:
            status = await r.json()
        section = status["registry"]
        out = io.StringIO()
        print_status(status, Console(file=out, width=200))
        assert "cache/app" in out.getvalue() and "Registry at" in out.getvalue()
        assert section["warm"] == {"globs": ["cache/*"], "held": 1, "wanted": 1, "errors": {}}
        rows = {f"{repo['name']}:{t['tag']}": t for repo in section["repositories"] for t in repo["tags"]}
        assert rows["cache/app:ms"]["here"] and rows["cache/app:ms"]["digest"] == digest
        assert not rows["other/app:1"]["here"] and rows["other/app:1"]["holders"] == ["a"]
        async with session.get(f"http://{b.status_addr}/metrics") as r:
            metrics = await r.text()
        assert 'cachemesh_registry_bytes_total{source="peers"}' in metrics
        assert "cachemesh_registry_fetches_in_flight 0.0" in metrics
        async with session.get(f"http://{b.status_addr}/") as r:
            assert "Registry" in await r.text()
    finally:
        await session.close()
        if b is not None:
            await b.stop()
        await a.stop()


async def test_a_manifest_may_reference_what_a_peer_holds(pair) -> None:  # type: ignore[no-untyped-def]
    """A build on B that took its cache from A pushes a manifest naming blobs only A holds."""
    a, b, session = pair
    layer = b"layer held by a" * 1000
    await push(session, a, "cache/app:1", [b"{}", layer])
    await async_wait_until(lambda: b.registry._holder_addrs(digest_of(layer)), 5, what="b learns a's blobs")
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": BUILDKIT_CACHE_CONFIG, "digest": digest_of(b"{}"), "size": 2},
            "layers": [{"mediaType": "x", "digest": digest_of(layer), "size": len(layer)}],
            "annotations": {"pushed": "from b"},
        }
    ).encode()
    async with session.put(
        f"http://{b.registry_addr}/v2/cache/app/manifests/2",
        data=manifest,
        headers={"Content-Type": OCI_MANIFEST},
    ) as r:
        assert r.status == 201, await r.text()
    await async_wait_until(lambda: b.registry.complete(digest_of(manifest)), 5, what="b holds all it named")


async def test_layers_are_fetched_in_the_order_of_the_manifest_a_client_read(pair) -> None:  # type: ignore[no-untyped-def]
    """A client unpacks layers in its manifest's order, so b's fetch lane ranks them so: the
    blobs of the manifest read first, in its order, then those of the next; unnamed ones last."""
    a, b, session = pair
    first = [b'{"first": 1}', b"L1" * 1000, b"L2" * 1000, b"L3" * 1000]
    second = [b'{"second": 2}', b"M1" * 1000]
    await push(session, a, "app/one:1", first)
    await push(session, a, "app/two:1", second)
    await async_wait_until(lambda: resolves(session, b, "app/two:1"), 5, what="b resolves both tags")
    for name in ("app/one", "app/two"):
        async with session.get(f"http://{b.registry_addr}/v2/{name}/manifests/1") as r:
            assert r.status == 200
    rank = b.registry.fetcher.rank
    ranks = [rank(digest_of(blob)) for blob in first + second] + [rank(digest_of(b"named nowhere"))]
    assert ranks == sorted(ranks)
    assert len(set(ranks)) == len(ranks)


async def test_streams_waiting_for_their_turn_hold_no_slot_gossip_or_a_fetch_needs(pair) -> None:  # type: ignore[no-untyped-def]
    """Streams from a peer can be many and long (saves, relayed content, old peers that send
    bodies in full). With more of them open than a pool allows per peer, neither the next fetch
    nor gossip may wait for a free slot: a live holder would be taken for dead, and its content
    answered 404 (a slot is waited for up to the 5 s peer timeout)."""
    a, b, session = pair
    # Larger than what the socket buffers and the client's read buffer take in: the held
    # streams cannot finish (a finished body frees its slot however little was read).
    blobs = [bytes([i]) * (12 << 20) for i in range(10)]
    await push(session, a, "many:1", [b"{}", *blobs])
    await async_wait_until(lambda: resolves(session, b, "many:1"), 5, what="b learns many:1")
    async with contextlib.AsyncExitStack() as held:
        for data in blobs[:9]:  # opened, not read, like bodies waiting in the lane
            await asyncio.wait_for(
                held.enter_async_context(
                    b.parts.client.content(
                        a.advertise, digest_of(data), offset=0, chunk_bytes=1 << 20, idle_timeout=5
                    )
                ),
                timeout=4,
            )
        stream: ContentStream = await asyncio.wait_for(
            held.enter_async_context(
                b.parts.client.content(
                    a.advertise, digest_of(blobs[9]), offset=0, chunk_bytes=1 << 20, idle_timeout=5
                )
            ),
            timeout=4,
        )
        assert b"".join([piece async for piece in stream.chunks]) == blobs[9]
        # Gossip to the same peer still gets its answers.
        hello = wire.Envelope(b.node_id, b.advertise, (), b.core.view.incarnation)
        await asyncio.wait_for(b.parts.client.exchange(a.advertise, hello), timeout=4)


async def test_content_answers_honour_a_limit(pair) -> None:  # type: ignore[no-untyped-def]
    """`limit` caps a content answer: 0 brings the size alone (a fetch waiting for its turn asks
    that), a few bytes bring those bytes; the size header is the whole blob's either way."""
    a, b, session = pair
    data = bytes(range(256)) * 8192  # 2 MiB
    await push(session, a, "lim:1", [b"{}", data])
    for offset, limit, expected in [(0, 0, b""), (10, 5, data[10:15]), (len(data) - 3, 100, data[-3:])]:
        async with b.parts.client.content(
            a.advertise, digest_of(data), offset=offset, chunk_bytes=1 << 20, idle_timeout=5, limit=limit
        ) as stream:
            assert stream.size == len(data)
            assert b"".join([piece async for piece in stream.chunks]) == expected, (offset, limit)


async def test_an_answer_its_asker_closes_counts_499_not_a_failure(pair) -> None:  # type: ignore[no-untyped-def]
    """A fetch giving way to a more wanted body closes its answer mid-body: at the source that is
    the asker's choice (499), not a failed request (500)."""
    a, b, session = pair
    data = bytes(range(256)) * (48 << 12)  # 48 MiB: more than the socket buffers hold
    await push(session, a, "closed:1", [b"{}", data])
    async with b.parts.client.content(
        a.advertise, digest_of(data), offset=0, chunk_bytes=1 << 20, idle_timeout=5
    ) as stream:
        await anext(stream.chunks)  # one piece, then the answer is closed
    await async_wait_until(lambda: content_requests(a, "499") == 1, 5, what="a counts the closed answer")
    assert content_requests(a, "500") == 0


async def test_a_tag_whose_publisher_left_is_kept_only_where_its_content_is(workdir: Path) -> None:
    """Every node adopts the mesh's tags into its own table, but announces only manifests it holds
    whole. After the publisher leaves, a tag nobody holds the content of must go from every view
    (a node joining later could never learn it); one a survivor pulled whole stays, and a node
    joining later learns it from that survivor."""
    a = await start_node(workdir, "a")
    b = await start_node(workdir, "b", seeds=(a.advertise,))
    c = None
    session = aiohttp.ClientSession()
    try:
        await async_wait_until(lambda: a.node_id in b.core.membership.live_ids(), 10, what="b sees a")
        kept = await push(session, a, "kept/app:1", [b"{}", b"pulled whole by b"])
        await push(session, a, "lost/app:1", [b"{}", b"held by a alone"])
        await async_wait_until(lambda: b.registry.store.tag("lost/app", "1") is not None, 10, what="b adopts")
        async with session.get(f"http://{b.registry_addr}/v2/kept/app/manifests/1") as r:
            assert digest_of(await r.read()) == kept
        await get_blob(session, b, digest_of(b"pulled whole by b"))
        await get_blob(session, b, digest_of(b"{}"))
        await async_wait_until(lambda: b.registry.complete(kept) is not None, 10, what="b holds kept whole")
        await a.stop()
        await async_wait_until(lambda: "lost/app:1" not in b.registry.resolve(), 20, what="b drops lost")
        assert b.registry.store.tag("lost/app", "1") is not None  # still in its table, just not shown
        assert b.registry.resolve()["kept/app:1"].digest == kept
        c = await start_node(workdir, "c", seeds=(b.advertise,))
        await async_wait_until(lambda: "kept/app:1" in c.registry.resolve(), 10, what="c learns kept")
        assert "lost/app:1" not in c.registry.resolve()
    finally:
        await session.close()
        for node in (c, b):
            if node is not None:
                await node.stop()
        with contextlib.suppress(Exception):
            await a.stop()

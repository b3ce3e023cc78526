"""One suite, two engines: the in-memory FakeEngine and a real private dockerd must agree."""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import tarfile
from collections.abc import AsyncIterator

import pytest

from mesh.engine.base import EngineError
from mesh.engine.docker_api import DockerEngine
from mesh.engine.fake import FakeEngine
from mesh.engine.tarstream import TarReport, TarStreamError, untagged
from mesh.lab.dockerd import import_base
from mesh.lab.engines import KINDS, EngineKind
from mesh.protocol.planner import chain_of
from mesh.protocol.share import instruction, step_layers


class FakeKind:
    def __init__(self) -> None:
        self.a, self.b = FakeEngine(), FakeEngine()
        self._base = self.a.build("base:1", [b"base layer"], created=1000)

    async def build(self, tag: str, steps: int) -> str:
        parent = self._base
        for i in range(steps):
            parent = self.a.build(
                tag if i == steps - 1 else None,
                [f"{tag} step {i}".encode()],
                parent=parent,
                created=1001 + i,
                steps=[f"/bin/sh -c echo '{tag} step {i}' > /step{i}"],
            )
        return parent

    async def use(self, image: str) -> None:
        """A stopped container made from the image."""
        self.a.containers_of.add(image)

    def close(self) -> None:
        pass


class RealKind:
    def __init__(self, engines, kind: EngineKind) -> None:  # type: ignore[no-untyped-def]
        self.da, self.db = engines("a", kind=kind), engines("b", kind=kind)
        self.containerd_store = kind.containerd_store
        import_base(self.da)
        self.a, self.b = DockerEngine(self.da.host), DockerEngine(self.db.host)

    async def build(self, tag: str, steps: int) -> str:
        lines = ["FROM base:1"] + [f"RUN echo '{tag} step {i}' > /step{i}" for i in range(steps)]
        dockerfile = "\n".join(lines).encode()
        await asyncio.to_thread(
            self.da.cli, "build", "--network", "none", "-t", tag, "-", input=dockerfile,
            env={"DOCKER_BUILDKIT": "0"},
        )  # fmt: skip
        return next(i.meta.id for i in await self.a.images() if tag in i.tags)

    async def use(self, image: str) -> None:
        ref = next(i.tags[0] for i in await self.a.images() if i.meta.id == image)
        await asyncio.to_thread(self.da.cli, "create", "--network", "none", ref, "true")


@pytest.fixture(params=["fake", *(pytest.param(k, marks=pytest.mark.docker) for k in KINDS)])
async def kind(request):  # type: ignore[no-untyped-def]
    if request.param == "fake":
        k = FakeKind()
    else:
        engines = request.getfixturevalue("engines")
        # starting dockerds blocks; keep it off the loop
        k = await asyncio.to_thread(RealKind, engines, KINDS[request.param])
    yield k
    await k.a.close()
    await k.b.close()


async def collect(chunks: AsyncIterator[bytes]) -> bytes:
    out = bytearray()
    async for chunk in chunks:
        out += chunk
    return bytes(out)


async def replay(data: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def test_listing_shows_tags_parent_chain_and_layers(kind):
    image = await kind.build("app:1", 2)
    images = {i.meta.id: i for i in await kind.a.images()}
    assert images[image].tags == ("app:1",)
    chain = chain_of(image, {i: x.meta for i, x in images.items()})
    assert len(chain) == 3  # the image, one intermediate step, the base
    assert images[chain[-1]].tags == ("base:1",)
    assert (
        len(images[image].meta.layers) >= 1 and images[image].meta.size > 0 and images[image].meta.created > 0
    )


async def test_save_by_id_then_load_restores_the_chain_without_tags(kind):
    image = await kind.build("app:2", 2)
    metas = {i.meta.id: i.meta for i in await kind.a.images()}
    chain = chain_of(image, metas)
    result = await kind.b.load(untagged(kind.a.save(chain), TarReport()))
    assert set(chain) <= set(result.loaded)
    loaded = {i.meta.id: i for i in await kind.b.images()}
    assert set(chain) <= set(loaded)
    assert all(not loaded[i].tags for i in chain)
    assert loaded[image].meta.layers == metas[image].layers
    relinked = chain_of(image, {i: x.meta for i, x in loaded.items()})
    if getattr(kind, "containerd_store", False):
        assert relinked == [image]  # that store records no parents for loaded images
    else:
        assert relinked == chain  # parent links survive
    await kind.b.tag(image, "app:2")
    assert {i.meta.id: i.tags for i in await kind.b.images()}[image] == ("app:2",)


async def test_save_comes_in_whole_pieces(kind):
    """Every piece but the last is as long as asked, however the engine writes its stream (the
    containerd store writes about 25 kB at a time): each piece costs a pass through the filters,
    TLS and the receiving load, so 20 times the pieces cost the nodes a CPU-second per 500 MB."""
    image = await kind.build("app:5", 1)
    sizes = [len(chunk) async for chunk in kind.a.save([image], chunk_size=10_000)]
    assert len(sizes) >= 2
    assert set(sizes[:-1]) == {10_000} and 0 < sizes[-1] <= 10_000


async def test_a_truncated_stream_loads_nothing(kind):
    image = await kind.build("app:3", 1)
    data = await collect(kind.a.save(chain_of(image, {i.meta.id: i.meta for i in await kind.a.images()})))
    before = {i.meta.id for i in await kind.b.images()}
    with pytest.raises(EngineError):
        await kind.b.load(replay(data[: len(data) // 2]))
    assert {i.meta.id for i in await kind.b.images()} == before


async def test_a_tampered_layer_is_refused_and_loads_nothing(kind):
    image = await kind.build("app:4", 1)
    data = bytearray(await collect(kind.a.save([image])))
    # Flip a byte inside the biggest file, a layer (legacy `<id>/layer.tar` or an OCI blob).
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tar:
        layer = max(
            (m for m in tar.getmembers() if m.name.endswith("layer.tar") or m.name.startswith("blobs/")),
            key=lambda m: m.size,
        )
    data[layer.offset_data + layer.size // 2] ^= 0xFF
    before = {i.meta.id for i in await kind.b.images()}
    # Through the filter every pull uses: the containerd store does not check an OCI blob against
    # its name as it loads (it would unpack the layer only when a container needs it), so the
    # filter does, and cuts the stream short before a bad blob ends.
    with pytest.raises((EngineError, TarStreamError)):
        await kind.b.load(untagged(replay(bytes(data)), TarReport()))
    assert {i.meta.id for i in await kind.b.images()} == before


async def test_tag_events_are_reported(kind):
    image = await kind.build("app:5", 1)
    events = kind.a.events()
    waiter = asyncio.ensure_future(anext(events))
    # The subscription reaches the engine at some point: tag until a tag event comes, with a deadline.
    deadline = asyncio.get_running_loop().time() + 10
    for n in itertools.count():
        await kind.a.tag(image, f"app:5-again{n}")
        if (await asyncio.wait({waiter}, timeout=0.2))[0]:
            break
        assert asyncio.get_running_loop().time() < deadline, "no tag event within 10s"
    event = waiter.result()
    assert event["Action"] == "tag"
    await events.aclose()


async def test_remove_only_takes_untagged_images_without_children(kind):
    image = await kind.build("app:6", 2)
    metas = {i.meta.id: i.meta for i in await kind.a.images()}
    intermediate = metas[image].parent
    await kind.b.load(kind.a.save([intermediate]))
    await kind.b.remove(intermediate)
    assert intermediate not in {i.meta.id for i in await kind.b.images()}
    if getattr(kind, "containerd_store", False):
        # The containerd store keeps parents as labels only: a parent goes, its child stays whole.
        await kind.a.remove(intermediate)
        assert image in {i.meta.id for i in await kind.a.images()}
    else:
        with pytest.raises(EngineError):
            await kind.a.remove(intermediate)  # has a child


async def test_save_of_an_unknown_image_is_an_engine_error(kind):
    with pytest.raises(EngineError):
        await collect(kind.a.save(["sha256:" + "0" * 64]))
    with contextlib.suppress(Exception):
        pass


async def test_history_names_each_layers_step_and_evict_spares_images_in_use(kind):
    """One test for both (each engine pair costs seconds to start): what the share rule reads,
    and what the disk budget does."""
    image = await kind.build("app:7", 2)
    images = {i.meta.id: i for i in await kind.a.images()}
    steps = await kind.a.history(image)
    assert [instruction(s) for s in steps] == ["", "RUN", "RUN"]  # the import, then two RUNs
    base = chain_of(image, {i: x.meta for i, x in images.items()})[-1]
    assert steps[0].size > 0 and steps[0].image == base
    assert steps[-1].image == image  # a classic build's steps name their intermediate images
    layers_of = {i: len(x.meta.layers) for i, x in images.items()}
    mapping = step_layers(steps, len(images[image].meta.layers), layers_of)
    assert mapping == [0, 1, 2]
    assert "app:7 step 1" in steps[-1].created_by

    image = await kind.build("app:8", 2)
    metas = {i.meta.id: i.meta for i in await kind.a.images()}
    chain = chain_of(image, metas)
    await kind.a.tag(image, "app:8-again")
    await kind.use(image)
    assert image in await kind.a.containers()
    with pytest.raises(EngineError):
        await kind.a.evict(image)
    assert image in {i.meta.id for i in await kind.a.images()}

    other = await kind.build("app:9", 2)
    other_chain = chain_of(other, {i.meta.id: i.meta for i in await kind.a.images()})
    assert other not in await kind.a.containers()
    await kind.a.evict(other)
    left = {i.meta.id for i in await kind.a.images()}
    assert other not in left and other_chain[1] not in left  # its untagged parent went with it
    assert other_chain[-1] in left and set(chain) <= left  # the tagged base and app:8 stay

"""A failed or refused transfer leaves no tag behind and touches no other image."""

import asyncio

import aiohttp
import pytest

from mesh.engine.base import EngineError, EngineUnavailable
from mesh.engine.fake import FakeEngine
from mesh.lab.poll import async_wait_until
from tests.inproc import has_image, start_node, wait_pulled


class EvilEngine(FakeEngine):
    """A source whose save streams misbehave in one chosen way."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.decoy = ""

    async def save(self, image_ids, chunk_size=4096):  # type: ignore[override]
        ids = list(image_ids)
        if self.mode == "swap":
            ids = [self.decoy]  # serve another image under the requested ID
        data = bytearray()
        async for chunk in super().save(ids, chunk_size=4096):
            data += chunk
        if self.mode == "flip":
            data[1536 + 3] ^= 0xFF  # inside the first layer's body
        if self.mode == "truncate":
            data = data[: len(data) // 2]
        for offset in range(0, len(data), 4096):
            if self.mode == "die" and offset >= len(data) // 2:
                raise EngineUnavailable("source engine went away")
            await asyncio.sleep(0)
            yield bytes(data[offset : offset + 4096])


@pytest.mark.parametrize("mode", ["die", "flip", "swap", "truncate"])
async def test_bad_sources_never_tag_or_remove_anything(workdir, mode):
    evil = EvilEngine(mode)
    image = evil.build("app:1", [b"layer one " * 500, b"layer two " * 500])
    evil.decoy = evil.build(None, [b"something else entirely " * 100])
    receiver = FakeEngine()
    keep = receiver.build("app:1", [b"the receiver's own older app:1"], created=1)  # same tag, older image
    mine = receiver.build("mine:1", [b"unrelated local image"])
    source = await start_node(workdir, "evil", engine=evil)
    node = await start_node(workdir, "victim", engine=receiver, seeds=(source.peer_addr,), max_attempts=2)
    try:
        await async_wait_until(
            lambda: node.puller.failures.get(image) and node.puller.failures[image].attempts >= 2,
            20,
            what="two failed attempts",
        )
        tags = {i.meta.id: i.tags for i in await receiver.images()}
        assert image not in tags
        assert tags[keep] == ("app:1",) and tags[mine] == ("mine:1",)  # untouched, tag not moved
        assert evil.decoy not in tags  # whatever a bad stream loaded was cleaned up again
        assert all(t.outcome == "failed" for t in node.puller.recent)
        assert node.metrics.transfers.labels("in", "failed")._value.get() >= 2
        await async_wait_until(lambda: node.readiness.ready, 10, what="ready once given up")  # stops blocking
    finally:
        await node.stop()
        await source.stop()


async def test_a_failed_source_is_avoided_and_an_honest_one_is_used(workdir):
    evil = EvilEngine("die")
    honest = FakeEngine()
    image = evil.build("app:1", [b"shared layer " * 400], created=5)
    assert honest.build("app:1", [b"shared layer " * 400], created=5) == image
    source_bad = await start_node(workdir, "bad", engine=evil)
    source_good = await start_node(workdir, "good", engine=honest, seeds=(source_bad.peer_addr,))
    receiver = FakeEngine()
    node = await start_node(workdir, "r", engine=receiver, seeds=(source_bad.peer_addr,))
    try:
        await wait_pulled(node, image, "app:1", 30, what="pulled from the honest peer")
        good = [t for t in node.puller.recent if t.outcome == "ok"]
        assert good and good[0].peer_name == "good"
    finally:
        for n in (node, source_good, source_bad):
            await n.stop()


async def test_the_engine_going_away_mid_load_fails_cleanly_and_is_retried(workdir):
    source_engine = FakeEngine()
    image = source_engine.build("app:1", [b"x" * 20000])
    flaky = FakeEngine()
    real_load = flaky.load
    calls = 0

    async def load(chunks):
        nonlocal calls
        calls += 1
        if calls == 1:
            async for _ in chunks:
                raise EngineUnavailable("dockerd restarting")
        return await real_load(chunks)

    flaky.load = load  # type: ignore[method-assign]
    source = await start_node(workdir, "s", engine=source_engine)
    node = await start_node(workdir, "r", engine=flaky, seeds=(source.peer_addr,))
    try:
        await async_wait_until(lambda: has_image(node, image, "app:1"), 20, what="retried and pulled")
        assert calls >= 2 and node.puller.recent[-1].outcome == "failed"
    finally:
        await node.stop()
        await source.stop()


class CountingEngine(FakeEngine):
    """A receiver that records what each load carried and can refuse any tar with a layer left
    out, as the containerd store refuses a legacy-format delta."""

    def __init__(self, refuse_deltas: bool = False) -> None:
        super().__init__()
        self.refuse_deltas = refuse_deltas
        self.loads: list[int] = []

    async def load(self, chunks):  # type: ignore[override]
        data = bytearray()
        async for chunk in chunks:
            data += chunk
        self.loads.append(len(data))

        async def replay():
            yield bytes(data)

        if self.refuse_deltas:
            import io
            import json
            import tarfile

            with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tar:
                names = set(tar.getnames())
                manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
            missing = [n for entry in manifest for n in entry["Layers"] if n not in names]
            if missing:
                raise EngineError(f'failed to resolve layers: layer "{missing[0]}" not found')
        return await super().load(replay())


@pytest.mark.parametrize("refuse", [False, True], ids=["delta", "refused-delta-falls-back"])
async def test_only_missing_layers_cross_and_a_refused_delta_is_pulled_once_in_full(workdir, refuse):
    big = b"base layer " * 100_000  # 1.1 MB
    source_engine = FakeEngine()
    base = source_engine.build("base:1", [big], created=100)
    receiver = CountingEngine(refuse_deltas=refuse)
    source = await start_node(workdir, "src", engine=source_engine)
    node = await start_node(workdir, "dst", engine=receiver, seeds=(source.peer_addr,))
    try:
        await async_wait_until(lambda: has_image(node, base, "base:1"), 20, what="base on the receiver")
        app = source_engine.build("app:1", [b"the app's own small layer"], parent=base, created=200)
        await async_wait_until(lambda: has_image(node, app, "app:1"), 20, what="app on the receiver")
        fallbacks = node.metrics.delta_fallbacks._value.get()
        if refuse:
            assert receiver.loads[-2] < 100_000 < receiver.loads[-1]  # the delta, then the full tar
            assert fallbacks == 1
        else:
            assert receiver.loads[-1] < 100_000  # the base layer stayed on the source
            assert fallbacks == 0
            assert source.metrics.layers_left_out._value.get() >= 1
        assert node.metrics.transfers.labels("in", "failed")._value.get() == 0
    finally:
        await node.stop()
        await source.stop()


async def test_failing_pulls_show_their_attempts_in_the_status(workdir):
    """A pull that keeps failing is counted where an operator (and the soak) can see it: the image,
    its failed attempts, the sources that failed it, and whether readiness gave up on it."""
    evil = EvilEngine("truncate")
    image = evil.build("app:1", [b"layer one " * 500])
    source = await start_node(workdir, "evil", engine=evil)
    node = await start_node(workdir, "victim", engine=FakeEngine(), seeds=(source.peer_addr,), max_attempts=2)
    try:

        async def failing() -> list:
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://{node.status_addr}/api/status") as r,
            ):
                doc = await r.json()
            return [f for f in doc["pull_failures"] if f["image"] == image and f["attempts"] >= 2]

        found = await async_wait_until(failing, 20, what="two failed attempts in /api/status")
        assert found[0]["sources"] == ["evil"] and found[0]["given_up"] is True
        assert found[0]["retry_in"] >= 0
    finally:
        await node.stop()
        await source.stop()

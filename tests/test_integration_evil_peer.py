"""A real engine receiving from a peer that sends a tampered or wrong stream: nothing is tagged,
nothing pre-existing is touched."""

import asyncio
import time

import pytest

from mesh.engine.docker_api import DockerEngine
from mesh.lab.dockerd import import_base
from mesh.lab.poll import async_wait_until
from tests.inproc import start_node
from tests.test_transfer import EvilEngine

pytestmark = [pytest.mark.docker]


@pytest.mark.parametrize("mode", ["flip", "swap", "die"])
async def test_a_real_engine_never_tags_a_bad_stream(workdir, engines, mode):
    real = await asyncio.to_thread(engines, "victim")
    await asyncio.to_thread(import_base, real, "app:1")  # the receiver's own app:1, which must stay
    own = real.image_id("app:1")
    before = await asyncio.to_thread(real.image_ids)
    evil = EvilEngine(mode)
    wanted = evil.build(
        "app:1", [b"layer " * 300], created=int(time.time()) + 3600
    )  # newer: the mesh wants it
    evil.decoy = evil.build(None, [b"decoy " * 300])
    source = await start_node(workdir, "evil", engine=evil)
    node = await start_node(
        workdir, "victim", engine=DockerEngine(real.host), seeds=(source.peer_addr,), max_attempts=2
    )
    try:
        await async_wait_until(
            lambda: node.puller.failures.get(wanted) and node.puller.failures[wanted].attempts >= 2,
            30,
            what="two refused transfers",
        )
        assert await asyncio.to_thread(real.image_id, "app:1") == own
        assert await asyncio.to_thread(real.image_ids) == before
        errors = " ".join(t.error for t in node.puller.recent)
        assert errors
    finally:
        await node.stop()
        await source.stop()

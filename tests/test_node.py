"""Two or three in-process nodes over real HTTP on loopback, with the in-memory engine."""

import asyncio
import json

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mesh.engine.fake import FakeEngine
from mesh.lab.poll import async_wait_until
from mesh.protocol.liveness import State
from tests.inproc import has_image, start_node


@pytest.fixture
async def pair(workdir):
    ea, eb = FakeEngine(), FakeEngine()
    a = await start_node(workdir, "a", engine=ea)
    b = await start_node(workdir, "b", engine=eb, seeds=(a.peer_addr,))
    yield a, b, ea, eb
    await b.stop()
    await a.stop()


async def test_an_image_built_on_one_node_reaches_the_other_with_its_chain_and_tags(pair):
    a, b, ea, eb = pair
    base = ea.build("base:1", [b"rootfs"])
    mid = ea.build(None, [b"step 1"], parent=base)
    app = ea.build("app:1", [b"step 2"], parent=mid)
    await async_wait_until(
        lambda: has_image(b, app, "app:1") and has_image(b, base, "base:1"), 10, what="app on b"
    )
    assert has_image(b, mid)  # the untagged intermediate came with the chain
    await async_wait_until(lambda: b.readiness.ready, 10, what="b ready")
    assert app in a.local.images  # nothing was taken away from the source


async def test_status_page_json_and_metrics(pair):
    a, b, ea, eb = pair
    ea.build("tool:1", [b"tool"])
    await async_wait_until(lambda: b.readiness.ready and len(b.local.images) == 1, 10, what="b warm")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://{b.status_addr}/api/status") as r:
            status = await r.json()
        async with http.get(f"http://{b.status_addr}/") as r:
            html = await r.text()
        async with http.get(f"http://{b.status_addr}/metrics") as r:
            metrics = await r.text()
            content_type = r.headers["Content-Type"]
        async with http.get(f"http://{b.status_addr}/readyz") as r:
            assert r.status == 200
        async with http.get(f"http://{b.status_addr}/healthz") as r:
            assert r.status == 200
    assert status["ready"] is True and status["node"]["name"] == "b"
    assert [(p["name"], p["state"]) for p in status["peers"]] == [("a", "alive")]
    assert {"id", "name", "address", "state"} <= set(status["peers"][0])
    tool = next(i for i in status["images"] if "tool:1" in i["tags"])
    assert sorted(tool["holders"]) == ["a", "b"] and tool["local"] is True
    assert "tool:1" in html and "<table>" in html and ">a<" in html
    assert content_type.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(metrics)}  # parses: valid exposition format
    assert {
        "cachemesh_transfer_bytes",
        "cachemesh_transfers",
        "cachemesh_peers",
        "cachemesh_gossip_rounds",
        "cachemesh_ready",
        "cachemesh_images",
    } <= set(families)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples
    }
    assert samples[("cachemesh_transfers_total", (("direction", "in"), ("outcome", "ok")))] == 1.0
    assert samples[("cachemesh_transfer_bytes_total", (("direction", "in"),))] > 0
    assert samples[("cachemesh_peers", (("state", "alive"),))] == 1.0
    assert samples[("cachemesh_ready", ())] == 1.0
    assert json.dumps(status)  # serialisable as is


async def test_readiness_waits_until_warm(workdir):
    ea = FakeEngine()
    for i in range(5):
        ea.build(f"img{i}:1", [f"layer {i}".encode() * 1000])
    a = await start_node(workdir, "a", engine=ea)
    slow = FakeEngine()
    original = slow.load

    gate = asyncio.Event()

    async def gated_load(chunks):
        await gate.wait()
        return await original(chunks)

    slow.load = gated_load  # type: ignore[method-assign]
    b = await start_node(workdir, "b", engine=slow, seeds=(a.peer_addr,))
    try:
        await async_wait_until(lambda: b.puller.active, 10, what="pulls started")
        assert not b.readiness.check()[0]
        # a's status entry (its upload count) may change meanwhile: the reason can name a's
        # manifest for a moment before it names the pulls.
        await async_wait_until(lambda: "pulling" in b.readiness.check()[1], 10, what="reason: pulling")
        assert not b.readiness.check()[0]
        gate.set()
        await async_wait_until(lambda: b.readiness.ready, 15, what="b ready")
        assert len(b.local.images) == 5
        # Readiness latches: a new image elsewhere does not take a warm node out of rotation.
        gate.clear()
        ea.build("late:1", [b"late"])
        await async_wait_until(lambda: b.puller.active, 10, what="late pull started")
        assert b.readiness.ready
        gate.set()
    finally:
        gate.set()
        await b.stop()
        await a.stop()


async def test_a_first_host_whose_seeds_nobody_answers_is_ready_after_the_join_window(workdir):
    """A fleet scaling from zero: the seeds name a port nobody listens on. The node reports ready
    once the join window has passed (not at --ready-timeout), says why, and stays ready when a
    peer with images it lacks appears."""
    from mesh.node.readiness import ALONE
    from mesh.node.sockets import bind_socket

    silent = bind_socket("127.0.0.1:0")  # bound, never accepting: a seed that does not answer
    seed = f"127.0.0.1:{silent.getsockname()[1]}"
    silent.close()
    b = await start_node(workdir, "b", seeds=(seed,), join_grace=3.0, ready_timeout=1800.0)
    ea = FakeEngine()
    late = ea.build("late:1", [b"late layer" * 100])
    a = None
    try:
        await async_wait_until(
            lambda: b.readiness.check() == (False, "joining the mesh"), 3, what="b waits for its seed"
        )
        await async_wait_until(lambda: b.readiness.check() == (True, ALONE), 10, what="b ready alone")
        async with aiohttp.ClientSession() as http, http.get(f"http://{b.status_addr}/readyz") as r:
            assert r.status == 200 and (await r.json())["reason"] == ALONE
        a = await start_node(workdir, "a", engine=ea, seeds=(b.peer_addr,))
        await async_wait_until(lambda: b.core.view.live_peers(), 10, what="a joins b")
        assert b.readiness.ready  # latched: a newcomer with images never takes it out of rotation
        await async_wait_until(lambda: has_image(b, late, "late:1"), 15, what="late:1 on b")
    finally:
        if a is not None:
            await a.stop()
        await b.stop()


async def test_graceful_leave_is_seen_at_once(pair):
    a, b, ea, eb = pair
    await async_wait_until(lambda: a.core.membership.live_ids(), 5)
    await b.stop()
    member = a.core.membership.members[b.node_id]
    assert member.state is State.LEFT


async def test_operator_removal_is_not_undone_by_the_mesh(pair):
    a, b, ea, eb = pair
    image = ea.build("old:1", [b"old"])
    await async_wait_until(lambda: has_image(b, image), 10, what="old on b")
    await eb.delete("old:1")
    await asyncio.sleep(0)  # the delete event reaches the watcher
    await async_wait_until(lambda: image in b.local.evicted, 5, what="eviction noted")
    for _ in range(3):  # three planner rounds after the eviction: none wants the image back
        before = b.puller.plan
        b.puller.poke()
        await async_wait_until(lambda p=before: b.puller.plan is not p, 5, what="a planner round")
        assert image not in b.puller.plan.missing and image not in b.puller.active
    assert not has_image(b, image)
    newer = ea.build("old:1", [b"newer"])  # a newer image for that tag is wanted again
    await async_wait_until(lambda: has_image(b, newer, "old:1"), 10, what="newer on b")


async def test_start_refuses_without_secret(tmp_path):
    from mesh.cli import main

    assert main(["run", "--data-dir", str(tmp_path)]) == 2


async def test_wait_ready_and_healthcheck_exit_codes(workdir):
    import subprocess
    import sys

    a = await start_node(workdir, "a", engine=FakeEngine())

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "mesh", *args], capture_output=True, text=True, timeout=30
        )

    try:
        await async_wait_until(lambda: a.readiness.ready, 10, what="a ready")
        ok = await asyncio.to_thread(cli, "wait-ready", "--timeout", "5", "--status-addr", a.status_addr)
        assert ok.returncode == 0 and "ready" in ok.stdout
        health = await asyncio.to_thread(cli, "healthcheck", "--status-addr", a.status_addr)
        assert health.returncode == 0
        status = await asyncio.to_thread(cli, "status", "--status-addr", a.status_addr)
        assert status.returncode == 0 and "Peers (0)" in status.stdout
    finally:
        await a.stop()
    gone = await asyncio.to_thread(cli, "wait-ready", "--timeout", "1", "--status-addr", a.status_addr)
    assert gone.returncode == 1 and "not ready after 1s" in gone.stderr
    assert (await asyncio.to_thread(cli, "healthcheck", "--status-addr", a.status_addr)).returncode == 1

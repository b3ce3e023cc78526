"""`--engine off`: a node with no Docker Engine that shares registry content through its endpoint.

In process (the in-memory engine on the other nodes): the settings it refuses, that it turns ready
without an engine, pulls no images however many the mesh holds, and serves what another node's
registry holds. tests/test_engine_off_docker.py does the same between real engines' hosts.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from mesh.config import ConfigError
from mesh.doctor.checks import ENGINE_OFF, EngineFacts, Facts, diagnose
from mesh.engine.base import EngineError
from mesh.engine.fake import FakeEngine
from mesh.engine.none import NoEngine
from mesh.lab.poll import async_wait_until
from mesh.options import resolve
from tests.inproc import SECRET, start_node
from tests.test_registry_skopeo import oci_layout, skopeo


def _resolve(**env: str) -> object:
    return resolve({}, {"CACHEMESH_SECRET": SECRET.decode(), **env})


def test_engine_setting_is_docker_or_off() -> None:
    assert _resolve().engine == "docker"  # type: ignore[attr-defined]
    assert _resolve(CACHEMESH_ENGINE="OFF").engine == "off"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="CACHEMESH_ENGINE='podman': expected docker or off"):
        _resolve(CACHEMESH_ENGINE="podman")


def test_engine_off_without_the_registry_is_refused() -> None:
    with pytest.raises(ConfigError, match="--engine off with --registry-listen off"):
        _resolve(CACHEMESH_ENGINE="off", CACHEMESH_REGISTRY_LISTEN="off")


async def test_no_engine_holds_nothing_and_refuses_writes() -> None:
    engine = NoEngine()
    assert await engine.images() == [] and await engine.containers() == set()
    assert (await engine.info()).version == "off"
    with pytest.raises(EngineError, match="--engine off"):
        await engine.tag("sha256:" + "0" * 64, "app:1")
    with pytest.raises(EngineError, match="--engine off"):
        async for _ in engine.save(["sha256:" + "0" * 64]):
            pass
    events = engine.events()
    await engine.close()
    assert [e async for e in events] == []  # closing ends the watch; nothing happened before


async def test_alone_an_engine_off_node_is_ready_without_a_socket(workdir: Path) -> None:
    # No engine given: the node makes its own, and with --engine off that dials nothing (the
    # Docker host below does not exist).
    from mesh.config import Config
    from mesh.node.node import Node

    config = Config.local(
        listen="127.0.0.1:0",
        status_listen="127.0.0.1:0",
        registry_listen="127.0.0.1:0",
        data_dir=str(workdir / "off"),
        node_name="off",
        mdns=False,
        secret=SECRET,
        engine="off",
        docker_host="unix:///nonexistent/docker.sock",
    )
    node = Node(config)
    await node.start()
    try:
        assert isinstance(node.engine, NoEngine)

        def ready() -> str:
            ok, reason = node.readiness.check()
            return reason if ok else ""

        reason = await async_wait_until(ready, 15, what="the engine-less node turns ready")
        assert reason.startswith("no peer answered")
        status = node.parts.status_facts
        assert status.engine == "off"
    finally:
        await node.stop()


async def test_engine_off_node_pulls_no_images_and_is_ready_once_synced(workdir: Path) -> None:
    engine = FakeEngine()
    image = engine.build("app:1", [os.urandom(64 * 1024)])
    a = await start_node(workdir, "a", engine=engine)
    b = await start_node(workdir, "b", seeds=(a.advertise,), engine_off=True)
    try:

        def synced_and_ready() -> bool:
            return b.core.synced_with_peer and b.readiness.check() == (True, "warm")

        await async_wait_until(synced_and_ready, 15, what="b syncs with a and turns ready")
        assert image in b.core.view.holdings(a.node_id)  # b knows what a holds
        assert b.local.images == {} and not b.puller.active and not b.puller.recent
        assert not a.serving and all(t.peer != b.node_id for t in a.peer_api.serving.values())
    finally:
        await b.stop()
        await a.stop()


@pytest.mark.skipif(not shutil.which("skopeo"), reason="skopeo not installed (scripts/test)")
async def test_engine_off_node_serves_and_shares_registry_content(workdir: Path) -> None:
    a = await start_node(workdir, "a")
    b = await start_node(workdir, "b", seeds=(a.advertise,), engine_off=True)
    try:
        source = workdir / "source"
        digest = oci_layout(source, "v1", os.urandom(2 * 1024 * 1024))
        # Pushed to the engine-less node, pulled through the other: it shares what it is given.
        await skopeo(
            "copy", "--dest-tls-verify=false", f"oci:{source}:v1", f"docker://{b.registry_addr}/ci/img:v1"
        )

        async def a_has_tag() -> bool:
            return a.registry.tag("ci/img", "v1") is not None

        await async_wait_until(a_has_tag, 10, what="a learns ci/img:v1 from b")
        back = workdir / "back"
        await skopeo(
            "copy", "--src-tls-verify=false", f"docker://{a.registry_addr}/ci/img:v1", f"oci:{back}:v1"
        )
        index = (back / "index.json").read_text()
        assert digest in index
        blobs = sorted(p.name for p in (source / "blobs" / "sha256").iterdir())
        assert sorted(p.name for p in (back / "blobs" / "sha256").iterdir()) == blobs
    finally:
        await b.stop()
        await a.stop()


def test_doctor_on_an_engine_off_node_asks_no_engine_and_points_at_the_registry() -> None:
    status = {
        "node": {"name": "r1", "version": "0.2.0", "cluster": "ci", "engine": "off"},
        "ready": True,
        "ready_reason": "warm",
    }
    findings = diagnose(
        Facts(engine=EngineFacts(ENGINE_OFF, False), status=status, status_error="", status_addr="x")
    )
    engine = next(f for f in findings if f.check == "engine")
    builds = next(f for f in findings if f.check == "builds")
    assert engine.level == "ok" and "--engine off" in engine.says
    assert "type=registry" in builds.says

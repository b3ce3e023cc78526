"""`cachemesh doctor`: each check's verdict and fix from facts (pure), and the probe against an
in-process node (the engine, the status page, a peer's TCP port, the registry endpoint)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from mesh.doctor.checks import (
    FAIL,
    OK,
    WARN,
    EngineFacts,
    Facts,
    classic_needs_cache_from,
    diagnose,
    exit_code,
)
from mesh.doctor.probe import probe
from mesh.lab.poll import async_wait_until
from tests.inproc import start_node

ENGINE = EngineFacts("28.5.2", containerd_store=True)


def status(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "node": {
            "name": "a",
            "version": "0.1.0",
            "cluster": "ci",
            "tls": {"mode": "derived", "secrets": ["3f2a"], "refused": {}},
        },
        "ready": True,
        "ready_reason": "warm",
        "discovery": {"seeds": ["10.0.0.2:7611"], "mdns": False, "mdns_found": []},
        "peers": [
            {
                "name": "b",
                "address": "10.0.0.2:7611",
                "state": "alive",
                "since": 300.0,
                "gossip": {"datagrams": "sealed", "secret": "current"},
                "clock_offset": 0.4,
            },
        ],
        "disk": {"budget": 0, "held": 0, "high": 0.9, "filesystems": []},
        "registry": {"listen": "127.0.0.1:7613"},
    }
    doc.update(changes)
    return doc


FACTS = Facts(ENGINE, status(), "", "127.0.0.1:7612", {"10.0.0.2:7611": ""}, (200, ""))


def verdicts(facts: Facts) -> dict[str, tuple[str, str]]:
    return {f.check: (f.level, f.fix) for f in diagnose(facts)}


def test_a_healthy_host_passes_every_check():
    found = verdicts(FACTS)
    assert {check: level for check, (level, _) in found.items()} == {
        "engine": OK,
        "builds": OK,
        "node": OK,
        "discovery": OK,
        "peers": OK,
        "secret": OK,
        "clock": OK,
        "disk": OK,
        "registry": OK,
    }
    assert exit_code(diagnose(FACTS)) == 0


@pytest.mark.parametrize(
    ("facts", "check", "level", "fix_says"),
    [
        (replace(FACTS, engine=EngineFacts("", False, "connection refused")), "engine", FAIL, "docker.sock"),
        (replace(FACTS, status=None, status_error="refused"), "node", FAIL, "--status-addr"),
        (replace(FACTS, status=status(discovery={"seeds": [], "mdns": False})), "discovery", FAIL, "--seeds"),
        (replace(FACTS, status=status(peers=[])), "peers", FAIL, "7611"),
        (
            replace(FACTS, status=status(peers=[], discovery={"seeds": [], "mdns": True})),
            "peers",
            WARN,
            "multicast",
        ),
        (replace(FACTS, tcp={"10.0.0.2:7611": "timed out"}), "tcp", FAIL, "open TCP 7611"),
        (
            replace(
                FACTS, status=status(peers=[{**status()["peers"][0], "gossip": {"datagrams": "none yet"}}])
            ),
            "udp",
            WARN,
            "UDP 7611",
        ),
        (
            replace(
                FACTS,
                status=status(
                    node={
                        **status()["node"],
                        "tls": {
                            "mode": "derived",
                            "secrets": ["3f2a"],
                            "refused": {"10.0.0.2:7611": "the peer's certificate does not verify"},
                        },
                    }
                ),
            ),
            "secret",
            FAIL,
            "same cluster secret",
        ),
        (
            replace(FACTS, status=status(peers=[{**status()["peers"][0], "clock_offset": -95.0}])),
            "clock",
            FAIL,
            "NTP",
        ),
        (
            replace(
                FACTS,
                status=status(disk={"budget": 10**9, "held": 3 * 10**9, "high": 0.9, "filesystems": []}),
            ),
            "disk",
            WARN,
            "--disk-budget",
        ),
        (replace(FACTS, registry=(0, "connection refused")), "registry", FAIL, "--registry-listen"),
        (  # beyond the auth window: refused before it is read, so known by address only
            replace(FACTS, status=status(node={**status()["node"], "clock_refused": {"10.0.0.3": 400.0}})),
            "clock",
            FAIL,
            "NTP",
        ),
    ],
)
def test_each_problem_is_named_with_its_fix(facts: Facts, check: str, level: str, fix_says: str):
    found_level, fix = verdicts(facts)[check]
    assert found_level == level and fix_says in fix
    assert exit_code(diagnose(facts)) == (1 if level == FAIL else 0)


@pytest.mark.parametrize(
    ("version", "needs"),
    [
        ("20.10.24", False),
        ("23.0.9", False),
        ("23.0.10", True),
        ("24.0.8", False),
        ("24.0.9", True),
        ("25.0.1", False),
        ("25.0.2", True),
        ("28.5.2", True),
        ("29.1.3", True),
    ],
)
def test_the_classic_builder_needs_cache_from_since_the_cve_fix(version: str, needs: bool):
    assert classic_needs_cache_from(version) is needs


def test_build_advice_follows_the_store():
    graph = verdicts(replace(FACTS, engine=EngineFacts("20.10.24", False)))
    assert (
        "BUILDKIT_INLINE_CACHE=1" in diagnose(replace(FACTS, engine=EngineFacts("20.10.24", False)))[1].says
    )
    assert graph["builds"][0] == OK
    assert "type=registry,ref=127.0.0.1:7613" in diagnose(FACTS)[1].says


async def test_the_probe_reads_a_real_node_and_its_peer(workdir):
    a = await start_node(workdir, "a")
    b = await start_node(workdir, "b", seeds=(a.peer_addr,))
    try:
        await async_wait_until(lambda: b.core.view.live_peers(), 10, what="b sees a")
        facts = await asyncio.to_thread(probe, b.status_addr, "unix:///nonexistent/docker.sock")
        assert facts.status is not None and facts.tcp == {a.peer_addr: ""}
        assert facts.registry == (200, "")
        found = verdicts(facts)
        assert found["engine"][0] == FAIL  # no engine at that socket, and it says so
        assert found["peers"][0] == OK and found["registry"][0] == OK and found["secret"][0] == OK
    finally:
        await b.stop()
        await a.stop()


@pytest.mark.docker
@pytest.mark.parametrize("kind", ["20.10", "28.5-containerd"])
def test_the_probe_names_a_real_engines_version_and_store(engines, kind):
    from mesh.lab.engines import KINDS

    engine = engines(f"doc-{kind}", kind=KINDS[kind])
    facts = probe("127.0.0.1:1", engine.host)  # no node there: only the engine is asked
    assert not facts.engine.error and facts.engine.version.startswith(kind.split("-")[0].split(".")[0])
    assert facts.engine.containerd_store is kind.endswith("containerd")
    found = diagnose(facts)
    assert found[0].level == OK and found[-1].check == "node" and found[-1].level == FAIL
    builds = found[1].says
    assert ("type=registry" in builds) is kind.endswith("containerd")

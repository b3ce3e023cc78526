"""`cachemesh doctor`: why a host "gets no cache", as checks with a fix each.

Pure: the facts come in (what mesh/doctor/probe.py found: the engine, the local
node's status document, what answered on the network), findings go out. Each finding says what
was found and, when it is a problem, what to do about it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

OK, WARN, FAIL = "ok", "warn", "fail"

UDP_GRACE = 60.0
"""Seconds a peer may be alive before its gossip datagrams should have arrived."""
CLOCK_LIMIT = 30.0
"""Seconds of clock offset worth a warning; the auth window (120 s by default) refuses more."""


ENGINE_OFF = "off"
"""The node's engine on its status page when it runs with --engine off (registry only)."""


@dataclass(frozen=True)
class EngineFacts:
    version: str  # ENGINE_OFF: the node runs without an engine, none was asked
    containerd_store: bool
    error: str = ""  # why the engine could not be asked; "" when it answered


@dataclass(frozen=True)
class Facts:
    engine: EngineFacts
    status: Mapping[str, Any] | None  # the node's /api/status; None: no node answered
    status_error: str  # why not, when `status` is None
    status_addr: str
    tcp: Mapping[str, str] = field(default_factory=dict)  # peer address -> "" (connected) or error
    registry: tuple[int, str] = (0, "")  # (HTTP status of GET /v2/, error); (0, "") not asked


@dataclass(frozen=True)
class Finding:
    check: str
    level: str  # OK, WARN or FAIL
    says: str
    fix: str = ""


def diagnose(facts: Facts) -> list[Finding]:
    findings = [_engine(facts.engine), *_builds(facts.engine)]
    status = facts.status
    if status is None:
        findings.append(
            Finding(
                "node",
                FAIL,
                f"no cachemesh node answers at {facts.status_addr}: {facts.status_error}",
                "start it (docker run ... cachemesh, or systemctl start cachemesh), or pass "
                "--status-addr where its status page listens",
            )
        )
        return findings
    node = status.get("node", {})
    findings.append(
        Finding(
            "node",
            OK,
            f"node {node.get('name')} {node.get('version', '')} in cluster {node.get('cluster')!r}, "
            f"ready: {status.get('ready')} ({status.get('ready_reason')})",
        )
    )
    findings += _discovery(status)
    findings += _peers(status, facts.tcp)
    findings += _secret(status)
    findings += _clock(status)
    findings += _disk(status)
    findings.append(_registry(status, facts.registry))
    return findings


def exit_code(findings: Sequence[Finding]) -> int:
    return 1 if any(f.level == FAIL for f in findings) else 0


def _version(text: str) -> tuple[int, int, int]:
    parts = [*text.split("-")[0].split("."), "0", "0", "0"][:3]
    try:
        return int(parts[0]), int(parts[1]), int(parts[2])
    except ValueError:
        return 0, 0, 0


def _engine(engine: EngineFacts) -> Finding:
    if engine.version == ENGINE_OFF:
        return Finding(
            "engine",
            OK,
            "no engine (--engine off): the node shares registry content only, through its endpoint",
        )
    if engine.error:
        return Finding(
            "engine",
            FAIL,
            f"the Docker Engine does not answer: {engine.error}",
            "start Docker, or point --docker-host (CACHEMESH_DOCKER_HOST) at its socket; in the "
            "container, mount /var/run/docker.sock",
        )
    store = "containerd image store" if engine.containerd_store else "graph driver (overlay2)"
    return Finding("engine", OK, f"Docker Engine {engine.version}, {store}")


def classic_needs_cache_from(version: str) -> bool:
    """Since the CVE-2024-24557 fix (25.0.2, backported to 24.0.9 and 23.0.10), the classic
    builder takes cache only from images a build names in --cache-from, not from loaded ones."""
    v = _version(version)
    return v >= (25, 0, 2) or (24, 0, 9) <= v < (25, 0, 0) or (23, 0, 10) <= v < (24, 0, 0)


def _builds(engine: EngineFacts) -> list[Finding]:
    """The flags a build needs on this engine to hit the cache the mesh brings."""
    if engine.error:
        return []
    if engine.version == ENGINE_OFF:
        return [
            Finding(
                "builds",
                OK,
                "builds take cache through the registry endpoint: docker buildx build "
                "--cache-to type=registry,ref=127.0.0.1:7613/cache/app:main,mode=max "
                "--cache-from type=registry,ref=127.0.0.1:7613/cache/app:main . (the "
                "docker-container driver needs --driver-opt network=host to reach it)",
            )
        ]
    v = _version(engine.version)
    classic = (
        "classic builder (DOCKER_BUILDKIT=0): docker build --cache-from app:main ."
        if classic_needs_cache_from(engine.version)
        else "classic builder (DOCKER_BUILDKIT=0): no flag needed, loaded images are cache"
    )
    default = "BuildKit is the default builder" if v >= (23, 0, 0) else "the classic builder is the default"
    if engine.containerd_store:
        buildkit = (
            "BuildKit: --cache-from IMAGE asks a remote registry on this store; use the node's "
            "registry cache: docker build --cache-to type=registry,ref=127.0.0.1:7613/cache/app:main,"
            "mode=max --cache-from type=registry,ref=127.0.0.1:7613/cache/app:main ."
        )
    else:
        buildkit = (
            "BuildKit: build with --build-arg BUILDKIT_INLINE_CACHE=1 and read back with "
            "--cache-from app:main (or the registry cache through 127.0.0.1:7613 with the "
            "docker-container driver and --driver-opt network=host)"
        )
    return [Finding("builds", OK, f"{default}; {classic}; {buildkit}")]


def _discovery(status: Mapping[str, Any]) -> list[Finding]:
    found = status.get("discovery", {})
    seeds, mdns = found.get("seeds") or [], bool(found.get("mdns"))
    if not seeds and not mdns:
        return [
            Finding(
                "discovery",
                FAIL,
                "no seeds and mDNS off: this node cannot find peers",
                "set --seeds (CACHEMESH_SEEDS) to a few hosts' addresses or a DNS name, or drop --no-mdns",
            )
        ]
    ways = []
    if seeds:
        ways.append(f"seeds {', '.join(seeds)}")
    if mdns:
        ways.append(f"mDNS (found {len(found.get('mdns_found') or [])})")
    return [Finding("discovery", OK, "finds peers by " + " and ".join(ways))]


def _peers(status: Mapping[str, Any], tcp: Mapping[str, str]) -> list[Finding]:
    peers = status.get("peers") or []
    alive = [p for p in peers if p.get("state") == "alive"]
    out: list[Finding] = []
    if not alive:
        mdns_only = not (status.get("discovery", {}).get("seeds"))
        out.append(
            Finding(
                "peers",
                FAIL if peers or status.get("discovery", {}).get("seeds") else WARN,
                f"no peer is alive ({len(peers)} known)",
                "mDNS does not cross routers, and most clouds drop multicast: set --seeds"
                if mdns_only
                else "check that the seeds resolve and that TCP and UDP 7611 are open between the hosts",
            )
        )
    else:
        out.append(Finding("peers", OK, f"{len(alive)} of {len(peers)} known peers alive"))
    for addr, error in sorted(tcp.items()):
        if error:
            out.append(
                Finding(
                    "tcp",
                    FAIL,
                    f"TCP to the peer API at {addr}: {error}",
                    f"open TCP {addr.rsplit(':', 1)[-1]} from this host to {addr} (firewall, security group)",
                )
            )
    datagrams = [p for p in alive if (p.get("gossip") or {}).get("datagrams") == "sealed"]
    silent = [
        p
        for p in alive
        if (p.get("gossip") or {}).get("datagrams") == "none yet" and (p.get("since") or 0) > UDP_GRACE
    ]
    if silent and not datagrams:
        names = ", ".join(str(p.get("name")) for p in silent)
        out.append(
            Finding(
                "udp",
                WARN,
                f"no gossip datagram has arrived from {names} (as expected only where every node "
                "runs --no-gossip-datagrams)",
                "open UDP 7611 between the hosts, or run every node with --no-gossip-datagrams: "
                "a node whose datagrams are dropped looks dead to its peers",
            )
        )
    return out


def _secret(status: Mapping[str, Any]) -> list[Finding]:
    tls = status.get("node", {}).get("tls") or {}
    if tls.get("mode") == "off":
        return [Finding("secret", WARN, "TLS is off: peer traffic is not encrypted", "drop --tls off")]
    held = ", ".join(tls.get("secrets") or []) or "?"
    refused = {
        addr: reason
        for addr, reason in (tls.get("refused") or {}).items()
        if "does not verify" in str(reason) or "certificate" in str(reason)
    }
    if refused:
        addrs = ", ".join(sorted(refused))
        return [
            Finding(
                "secret",
                FAIL,
                f"{addrs} and this node do not trust each other's certificates (this node holds {held})",
                "give every host the same cluster secret and --cluster name: compare the fingerprints "
                "`cachemesh doctor` prints on both hosts (they never show the secret itself)",
            )
        ]
    return [Finding("secret", OK, f"cluster secret fingerprint {held}; no peer refused")]


def _clock(status: Mapping[str, Any]) -> list[Finding]:
    offsets = {
        str(p.get("name")): float(p["clock_offset"])
        for p in status.get("peers") or []
        if isinstance(p.get("clock_offset"), int | float)
    }
    # Beyond the auth window a peer's gossip is refused before it is read: known by address.
    for addr, offset in (status.get("node", {}).get("clock_refused") or {}).items():
        offsets.setdefault(str(addr), float(offset))
    off = {name: o for name, o in offsets.items() if abs(o) > CLOCK_LIMIT}
    if off:
        worst = max(off, key=lambda n: abs(off[n]))
        return [
            Finding(
                "clock",
                FAIL,
                f"this host's clock is {off[worst]:+.0f} s off {worst}'s ({len(off)} peer(s) off)",
                "run NTP on every host (chrony or systemd-timesyncd): signed requests older than "
                "the auth window are refused",
            )
        ]
    if not offsets:
        return [Finding("clock", OK, "no peer's clock measured yet")]
    worst = max(offsets, key=lambda n: abs(offsets[n]))
    largest = f"{offsets[worst]:+.1f} s, {worst}"
    return [Finding("clock", OK, f"clocks agree with peers (largest offset {largest})")]


def _disk(status: Mapping[str, Any]) -> list[Finding]:
    disk = status.get("disk") or {}
    budget, held = disk.get("budget") or 0, disk.get("held")
    full = [f for f in disk.get("filesystems") or [] if f.get("fraction", 0) >= (disk.get("high") or 1.0)]
    if full:
        paths = ", ".join(f"{f['path']} {f['fraction']:.0%}" for f in full)
        return [
            Finding(
                "disk",
                WARN,
                f"filesystem above --disk-high: {paths}; the node evicts what the mesh brought",
                "give the engine's data root more space, or lower --disk-budget",
            )
        ]
    if budget and held is not None and held > budget:
        return [
            Finding(
                "disk",
                WARN,
                f"the mesh holds {held / 1e9:.1f} GB here, over its {budget / 1e9:.1f} GB budget",
                "eviction is under way; raise --disk-budget if images keep coming back",
            )
        ]
    if not budget:
        return [Finding("disk", OK, "no disk budget: the mesh brings everything it shares")]
    shown = "?" if held is None else f"{held / 1e9:.1f} GB"
    return [Finding("disk", OK, f"the mesh holds {shown} here of a {budget / 1e9:.1f} GB budget")]


def _registry(status: Mapping[str, Any], answer: tuple[int, str]) -> Finding:
    listen = (status.get("registry") or {}).get("listen", "off")
    if listen == "off":
        return Finding("registry", OK, "the registry endpoint is off (--registry-listen off)")
    code, error = answer
    if code == 200:
        return Finding("registry", OK, f"the registry endpoint answers at {listen}")
    return Finding(
        "registry",
        FAIL,
        f"the registry endpoint at {listen} does not answer: {error or f'HTTP {code}'}",
        "check --registry-listen; with the container, run it with --network host",
    )


def render(findings: Sequence[Finding]) -> str:
    marks = {OK: "ok  ", WARN: "WARN", FAIL: "FAIL"}
    lines = []
    for f in findings:
        lines.append(f"[{marks[f.level]}] {f.check}: {f.says}")
        if f.fix and f.level != OK:
            lines.append(f"       fix: {f.fix}")
    failed = sum(f.level == FAIL for f in findings)
    lines.append(f"{failed} problem(s) found" if failed else "no problem found")
    return "\n".join(lines)

"""The node's status document (`/api/status`, the status page, `cachemesh status`), built from
the core's read-only view and the node's own I/O state, handed over as `StatusFacts` (never the
whole node). The status surface in mesh/ui only receives this document through a callable."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from mesh.node.readiness import TIMED_OUT
from mesh.protocol.liveness import State
from mesh.protocol.oci import is_registry_entry
from mesh.protocol.view import MeshView
from mesh.ui.status_doc import (
    ClaimDoc,
    DiskDoc,
    ImageDoc,
    NodeTLSDoc,
    PeerDoc,
    PeerGossipDoc,
    PeerTLSDoc,
    PullFailureDoc,
    RegistryDoc,
    StatusDoc,
    TransferDoc,
    TrustDoc,
    WarmupDoc,
)

if TYPE_CHECKING:
    from mesh.net.tls_contexts import NodeTLS
    from mesh.net.tls_peers import TLSObserver
    from mesh.node.local_images import LocalImages
    from mesh.node.puller import Puller
    from mesh.node.transfer import Transfer
    from mesh.node.trust_view import TrustView


@dataclass(frozen=True)
class StatusFacts:
    """What the status document reads, and nothing more. Fixed facts are values; the parts that
    change (or are bound after the status server starts) are objects and callables read per call."""

    view: MeshView  # the core's read-only view: peers, holdings, metadata
    node_id: str
    name: str
    address: str  # the advertised peer address
    cluster: str
    version: str
    engine: str  # --docker-host
    seeds: tuple[str, ...]
    started: float  # wall clock, for the uptime
    started_monotonic: float  # for the --ready-timeout countdown (immune to clock steps)
    ready_timeout: float
    readiness: Callable[[], tuple[bool, str]]
    local: LocalImages
    puller: Puller
    serving: Callable[[], Iterable[Transfer]]  # uploads in progress
    tls: NodeTLS | None
    tls_peers: TLSObserver
    gossip_secrets: Mapping[str, int]  # node ID -> which held secret sealed its datagrams
    clock_offsets: Mapping[str, float]  # node ID -> this clock minus its, from its datagrams
    clock_refused: Callable[[], Mapping[str, float]]  # address -> offset of datagrams refused for it
    mdns_found: Callable[[], Iterable[str]] | None  # addresses mDNS found; None: mDNS is off
    registry: Callable[[], RegistryDoc]  # the registry section
    disk: Callable[[], DiskDoc]  # the disk section
    trust: TrustView | None = None  # the claims this node believes (None: trust classes unknown here)
    trust_fingerprints: tuple[str, ...] = ()
    push_token: bool = False  # the registry takes pushes only with a token


def _transfer(t: Transfer) -> TransferDoc:
    return {
        "image": t.image,
        "tags": list(t.tags),
        "peer": t.peer_name,
        "address": t.peer,
        "direction": t.direction,
        "bytes": t.done,
        "total": t.total,
        "rate": round(t.rate),
        "started": t.started,
        "finished": t.finished,
        "outcome": t.outcome,
        "error": t.error,
        "relay": t.relay,  # in: the source was still receiving it; out: served as it arrived
    }


def _warmup(facts: StatusFacts, ready: bool, reason: str) -> WarmupDoc:
    timeout = facts.ready_timeout
    left = max(0.0, round(timeout - (time.monotonic() - facts.started_monotonic), 1))
    return {
        **facts.puller.progress().as_dict(),
        "ready_timeout": timeout or None,
        "ready_timeout_left": left if timeout else None,
        "ready_by_timeout": ready and reason.startswith(TIMED_OUT),
    }


def _node_tls(facts: StatusFacts) -> NodeTLSDoc:
    if facts.tls is None:
        return {"mode": "off"}
    # mesh/net may not import mesh/ui (the layer rule): its summary comes as a plain dict.
    return cast(NodeTLSDoc, {**facts.tls.summary(), "refused": facts.tls_peers.refused()})


def build_status(facts: StatusFacts) -> StatusDoc:
    view = facts.view
    members = view.peers()
    holdings = view.all_holdings()
    if facts.trust is not None and facts.trust.enabled:
        # The tags this node believes: a claim it refused names nothing here (the trust section
        # lists it, with why).
        holdings = {node: facts.trust.holdings(node) for node in holdings}
    ready, reason = facts.readiness()
    peers: list[PeerDoc] = []
    for member_id, m in sorted(members.items(), key=lambda kv: kv[1].name):
        peers.append(
            {
                "id": member_id,
                "name": m.name,
                "address": m.addr,
                "state": m.state.label,
                "incarnation": m.incarnation,
                "rtt_ms": None if m.rtt is None else round(m.rtt * 1000, 2),
                "images": sum(not is_registry_entry(t) for t in holdings.get(member_id, {}).values()),
                "since": round(time.monotonic() - m.since, 1),
                "tls": cast(PeerTLSDoc, facts.tls_peers.state(member_id, m.addr)),  # a plain dict, as above
                "gossip": _gossip_state(facts.gossip_secrets.get(member_id)),
                "clock_offset": _rounded(facts.clock_offsets.get(member_id)),
            }
        )
    holders: dict[str, list[str]] = {}
    tags: dict[str, set[str]] = {}
    for holder, held in holdings.items():
        if holder != facts.node_id and (holder not in members or members[holder].state is not State.ALIVE):
            continue
        name = facts.name if holder == facts.node_id else members[holder].name
        for image, image_tags in held.items():
            if is_registry_entry(image_tags):
                continue  # registry content: the `registry` section
            holders.setdefault(image, []).append(name)
            tags.setdefault(image, set()).update(image_tags)
    for image, local in facts.local.images.items():
        tags.setdefault(image, set()).update(local.tags)
    metas = {**view.metas(), **facts.local.metas()}
    images: list[ImageDoc] = []
    for image in sorted(tags, key=lambda i: (-metas[i].created if i in metas else 0, i)):
        local_image = facts.local.images.get(image)
        if not tags[image] and local_image is None and image not in facts.local.shared:
            continue
        meta = metas.get(image)
        decision = facts.local.decisions.get(image)
        images.append(
            {
                "id": image,
                "engine_id": local_image.native if local_image is not None else None,
                "tags": sorted(tags[image]),
                "size": meta.size if meta else None,
                "created": meta.created if meta else None,
                "local": local_image is not None,
                "holders": sorted(holders.get(image, [])),
                # Why a tagged local image is (not) announced; None for others' and untagged ones.
                "share": None
                if decision is None
                else {"shared": decision.share, "reason": decision.reason, "code": decision.code},
                "from_mesh": image in facts.local.brought,
            }
        )
    plan = facts.puller.plan
    doc: StatusDoc = {
        "node": {
            "id": facts.node_id,
            "name": facts.name,
            "address": facts.address,
            "cluster": facts.cluster,
            "incarnation": view.incarnation,
            "version": facts.version,
            "uptime": round(time.time() - facts.started, 1),
            "engine": facts.engine,
            "engine_available": facts.local.available,
            "tls": _node_tls(facts),
            "clock_refused": {a: round(o, 1) for a, o in sorted(facts.clock_refused().items())},
        },
        "discovery": {
            "seeds": list(facts.seeds),
            "mdns": facts.mdns_found is not None,
            "mdns_found": sorted(facts.mdns_found()) if facts.mdns_found is not None else [],
        },
        "ready": ready,
        "ready_reason": reason,
        "missing": [] if plan is None else plan.missing,
        "warmup": _warmup(facts, ready, reason),
        "peers": peers,
        "images": images,
        "transfers": [_transfer(t) for t in facts.puller.active.values()]
        + [_transfer(t) for t in facts.serving()],
        "recent_transfers": [_transfer(t) for t in facts.puller.recent],
        "pull_failures": _pull_failures(facts, {i: m.name for i, m in members.items()}),
        "registry": facts.registry(),
        "disk": facts.disk(),
        # Tags set back to an older image on purpose, here or adopted from the mesh (rollbacks), and
        # tags the mesh would move but that stay on a newer image built here.
        "tag_sets": [
            {"tag": tag, "image": s.image, "set_at": s.at / 1000}
            for tag, s in sorted(facts.local.tagsets.items())
        ],
        "tags_kept": [] if plan is None else plan.kept,
    }
    if facts.trust is not None:
        doc["trust"] = _trust(facts)
    return doc


def _trust(facts: StatusFacts) -> TrustDoc:
    trust = facts.trust
    assert trust is not None
    policy = trust.policy
    members = facts.view.peers()
    alive = [i for i, m in sorted(members.items(), key=lambda kv: kv[1].name) if m.state is State.ALIVE]
    names = {i: m.name for i, m in members.items()} | {facts.node_id: facts.name}
    claims: list[ClaimDoc] = [
        {
            "kind": row.kind,
            "name": row.name,
            "target": row.target,
            "publisher": names.get(row.publisher, row.publisher),
            "publisher_id": row.publisher,
            "trust_class": row.klass,
            "believed": row.believed,
            "reason": row.reason,
        }
        for row in trust.rows([facts.node_id, *alive])
    ]
    claims.sort(key=lambda c: (c["name"], c["kind"], not c["believed"], c["publisher"]))
    return {
        "mode": "off" if not policy.enabled else policy.own_class,
        "keys": list(facts.trust_fingerprints),
        "protected": list(policy.protected),
        "push_token": facts.push_token,
        "refused": dict(sorted(trust.refused.items())),
        "claims": claims,
    }


def _pull_failures(facts: StatusFacts, names: Mapping[str, str]) -> list[PullFailureDoc]:
    """The images whose pulls keep failing, and how often: a retry loop shows here, not only in
    the log (the soak bounds the attempts per image with it)."""
    now = time.monotonic()
    limit = facts.puller.config.max_attempts
    return [
        {
            "image": image,
            "attempts": failure.attempts,
            "retry_in": round(max(0.0, failure.retry_at - now), 1),
            "sources": sorted(names.get(s, s) for s in failure.bad_sources),
            "given_up": failure.attempts >= limit,
        }
        for image, failure in sorted(facts.puller.failures.items())
    ]


def _rounded(offset: float | None) -> float | None:
    return None if offset is None else round(offset, 1)


def _gossip_state(secret: int | None) -> PeerGossipDoc:
    """How a peer's gossip datagrams arrive: sealed with which of this node's secrets."""
    if secret is None:
        return {"datagrams": "none yet"}
    return {"datagrams": "sealed", "secret": "current" if secret == 0 else "previous"}

"""The node's status document (`/api/status`, the status page, `cachemesh status`), built from
the core's read-only view and the node's own I/O state. The status surface in mesh/ui only
receives this document through a callable."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from mesh.node.readiness import TIMED_OUT
from mesh.protocol.liveness import State
from mesh.protocol.oci import is_registry_entry

if TYPE_CHECKING:
    from mesh.node.node import Node


def _transfer(t: Any) -> dict[str, Any]:
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


def _warmup(node: Node, ready: bool, reason: str) -> dict[str, Any]:
    timeout = node.config.ready_timeout
    left = max(0.0, round(timeout - (time.monotonic() - node.started_monotonic), 1))
    return {
        **node.puller.progress().as_dict(),
        "ready_timeout": timeout or None,
        "ready_timeout_left": left if timeout else None,
        "ready_by_timeout": ready and reason.startswith(TIMED_OUT),
    }


def build_status(node: Node) -> dict[str, Any]:
    view = node.core.view
    members = view.peers()
    holdings = view.all_holdings()
    ready, reason = node.readiness.check()
    peers = []
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
                "tls": node.tls_peers.state(member_id, m.addr),
                "gossip": _gossip_state(node.gossip_secrets.get(member_id)),
            }
        )
    holders: dict[str, list[str]] = {}
    tags: dict[str, set[str]] = {}
    for holder, held in holdings.items():
        if holder != node.node_id and (holder not in members or members[holder].state is not State.ALIVE):
            continue
        name = node.config.node_name if holder == node.node_id else members[holder].name
        for image, image_tags in held.items():
            if is_registry_entry(image_tags):
                continue  # registry content: the `registry` section
            holders.setdefault(image, []).append(name)
            tags.setdefault(image, set()).update(image_tags)
    for image, local in node.local.images.items():
        tags.setdefault(image, set()).update(local.tags)
    metas = {**view.metas(), **node.local.metas()}
    images = []
    for image in sorted(tags, key=lambda i: (-metas[i].created if i in metas else 0, i)):
        local_image = node.local.images.get(image)
        if not tags[image] and local_image is None and image not in node.local.shared:
            continue
        meta = metas.get(image)
        decision = node.local.decisions.get(image)
        images.append(
            {
                "id": image,
                "tags": sorted(tags[image]),
                "size": meta.size if meta else None,
                "created": meta.created if meta else None,
                "local": local_image is not None,
                "holders": sorted(holders.get(image, [])),
                # Why a tagged local image is (not) announced; None for others' and untagged ones.
                "share": None
                if decision is None
                else {"shared": decision.share, "reason": decision.reason, "code": decision.code},
                "from_mesh": image in node.local.brought,
            }
        )
    plan = node.puller.plan
    return {
        "node": {
            "id": node.node_id,
            "name": node.config.node_name,
            "address": node.advertise,
            "cluster": node.config.cluster,
            "incarnation": view.incarnation,
            "version": node.version,
            "uptime": round(time.time() - node.started, 1),
            "engine": node.config.docker_host,
            "engine_available": node.local.available,
            "tls": {**node.tls.summary(), "refused": node.tls_peers.refused()}
            if node.tls is not None
            else {"mode": "off"},
        },
        "discovery": {
            "seeds": list(node.config.seeds),
            "mdns": node.mdns is not None,
            "mdns_found": sorted(node.mdns.found.values()) if node.mdns is not None else [],
        },
        "ready": ready,
        "ready_reason": reason,
        "missing": [] if plan is None else plan.missing,
        "warmup": _warmup(node, ready, reason),
        "peers": peers,
        "images": images,
        "transfers": [_transfer(t) for t in node.puller.active.values()]
        + [_transfer(t) for t in node.serving.values()],
        "recent_transfers": [_transfer(t) for t in node.puller.recent],
        "registry": node.registry.status(node.registry_addr or "off"),
        "disk": node.disk.status(),
    }


def _gossip_state(secret: int | None) -> dict[str, str]:
    """How a peer's gossip datagrams arrive: sealed with which of this node's secrets."""
    if secret is None:
        return {"datagrams": "none yet"}
    return {"datagrams": "sealed", "secret": "current" if secret == 0 else "previous"}

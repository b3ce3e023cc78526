"""The node as the registry sees it: live peers' registry entries, their RTTs, and a way to publish.

Read through the core's read-only view (mesh/protocol/view.py), like the puller and readiness.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from mesh.node.trust_view import TrustView
from mesh.protocol.liveness import State
from mesh.protocol.oci import is_registry_entry
from mesh.protocol.sources import Candidate, rank
from mesh.protocol.view import MeshView
from mesh.protocol.wire import ImageMeta, Tags
from mesh.ui.metrics import Metrics


class RegistryView:
    def __init__(
        self,
        view: MeshView,
        *,
        zone: str,
        publish: Callable[[], None],
        trust: TrustView | None = None,
    ) -> None:
        """`view`: the core's read-only view; `zone`: this node's zone (same-zone sources first);
        `publish`: put the registry's announcement into the local manifest; `trust`: the tag
        claims this node believes (none: every claim)."""
        self._view = view
        self._trust = trust or TrustView(view, None)
        self._zone = zone
        self._publish = publish

    def live_manifests(self) -> Mapping[str, Mapping[str, Tags]]:
        view = self._view
        out: dict[str, dict[str, Tags]] = {}
        for peer in view.live_peers():
            if peer.state is not State.ALIVE:
                continue
            held = self._trust.holdings(peer.id)
            entries = {i: tags for i, tags in held.items() if is_registry_entry(tags)}
            if entries:
                out[peer.id] = entries
        return out

    def metas(self) -> Mapping[str, ImageMeta]:
        return self._view.metas()

    def sources(self, key: str, holders: list[str], relays: list[str]) -> list[str]:
        view = self._view
        addrs: dict[str, str] = {}
        candidates = []
        for node, relay in [*((n, False) for n in holders), *((n, True) for n in relays)]:
            peer = view.peer(node)
            if peer is not None:
                status = view.status(node)
                addrs[node] = peer.addr
                candidates.append(Candidate(node, peer.rtt, status.uploads, status.zone, relay))
        ranked = rank(key, candidates, me=view.node_id, zone=self._zone, bad=(), penalties={}, now=0.0)
        return [addrs[c.peer] for c in ranked]

    def fetching(self, digest: str) -> list[str]:
        view = self._view
        return [
            p.id
            for p in view.live_peers()
            if p.state is State.ALIVE and view.status(p.id).receiving.get(digest) == "blob"
        ]

    def name(self, node: str) -> str:
        peer = self._view.peer(node)
        return peer.name if peer is not None else node

    def addr(self, node: str) -> str | None:
        peer = self._view.peer(node)
        return peer.addr if peer is not None and peer.state in (State.ALIVE, State.SUSPECT) else None

    def publish(self) -> None:
        self._publish()

    def may_push(self, ref: str) -> bool:
        return self._trust.may_push(ref)


class RegistryCounters:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def request(self, method: str, outcome: str) -> None:
        self._metrics.registry_requests.labels(method, outcome).inc()

    def served(self, n: int) -> None:
        self._metrics.registry_bytes.labels("local").inc(n)

    def fetched(self, n: int) -> None:
        self._metrics.registry_bytes.labels("peers").inc(n)

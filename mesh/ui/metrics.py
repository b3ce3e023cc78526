"""Prometheus metrics of one node (`cachemesh_*`), on a registry of its own so several nodes can
run in one process (tests). Counters are bumped as things happen; gauges are read from the node
when scraped, so they are never stale."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mesh.protocol.trust import REFUSALS
from mesh.ui.status_doc import MetricsSnapshot


class _Snapshot(Collector):
    def __init__(self, read: Callable[[], MetricsSnapshot]) -> None:
        self._read = read

    def describe(self) -> list[Metric]:
        return []  # the snapshot is read only when collected

    def collect(self) -> Iterator[Metric]:
        snap = self._read()
        peers = GaugeMetricFamily(
            "cachemesh_peers", "Peers by state, as this node sees them", labels=["state"]
        )
        for state, count in snap["peers"].items():
            peers.add_metric([state], count)
        yield peers
        images = GaugeMetricFamily(
            "cachemesh_images", "Images held here (local) and known in the mesh", labels=["scope"]
        )
        images.add_metric(["local"], snap["images_local"])
        images.add_metric(["mesh"], snap["images_mesh"])
        yield images
        yield GaugeMetricFamily(
            "cachemesh_ready", "1 once this node holds what it should", value=snap["ready"]
        )
        yield GaugeMetricFamily(
            "cachemesh_images_missing", "Images this node should hold and does not yet", value=snap["missing"]
        )
        yield GaugeMetricFamily("cachemesh_transfers_in_flight", "Pulls under way", value=snap["in_flight"])
        yield GaugeMetricFamily(
            "cachemesh_incarnation", "This node's SWIM incarnation", value=snap["incarnation"]
        )
        disk = snap.get("disk")
        if disk:
            yield GaugeMetricFamily(
                "cachemesh_disk_budget_bytes",
                "The disk budget for what the mesh brings here (0: none)",
                value=disk["budget"],
            )
            if disk["held"] is not None:
                yield GaugeMetricFamily(
                    "cachemesh_mesh_bytes_held",
                    "Bytes the mesh brought here (pulled images, registry content), at the last check",
                    value=disk["held"],
                )
        if "share" in snap:
            decisions = GaugeMetricFamily(
                "cachemesh_share_decisions",
                "Tagged local images by share decision (shared, local) and reason",
                labels=["decision", "reason"],
            )
            for (decision, reason), count in sorted(snap["share"].items()):
                decisions.add_metric([decision, reason], count)
            yield decisions
        if "registry_fetches" in snap:
            yield GaugeMetricFamily(
                "cachemesh_registry_fetches_in_flight",
                "Registry blobs being fetched from peers",
                value=snap["registry_fetches"],
            )
        core = snap["core"]
        for name, help_text in (
            ("gossip_rounds", "Gossip rounds that sent rumours"),
            ("push_pulls", "Full-state syncs started"),
            ("probes", "Failure-detector probes sent"),
        ):
            yield CounterMetricFamily(f"cachemesh_{name}", help_text, value=core.get(name, 0))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.transfer_bytes = Counter(
            "cachemesh_transfer_bytes",
            "Image bytes moved between peers",
            ["direction"],
            registry=self.registry,
        )
        self.transfers = Counter(
            "cachemesh_transfers",
            "Image transfers by direction and outcome",
            ["direction", "outcome"],
            registry=self.registry,
        )
        self.transfer_seconds = Histogram(
            "cachemesh_transfer_seconds",
            "Duration of successful pulls",
            registry=self.registry,
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800),
        )
        self.peer_requests = Counter(
            "cachemesh_peer_requests",
            "Peer API requests served, by endpoint and HTTP status",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.gossip_errors = Counter(
            "cachemesh_gossip_send_errors",
            "Gossip messages this node could not deliver",
            registry=self.registry,
        )
        self.gossip_datagrams = Counter(
            "cachemesh_gossip_datagrams",
            "Sealed gossip datagrams sent (out) and accepted (in)",
            ["direction"],
            registry=self.registry,
        )
        self.gossip_refused = Counter(
            "cachemesh_gossip_datagrams_refused",
            "Datagrams on the peer port that did not open as this cluster's gossip, by error",
            ["error"],
            registry=self.registry,
        )
        self.engine_errors = Counter(
            "cachemesh_engine_errors", "Failed calls to the local Docker Engine", registry=self.registry
        )
        self.delta_fallbacks = Counter(
            "cachemesh_delta_fallbacks",
            "Pulls whose engine refused a stream without its held layers and took it in full",
            registry=self.registry,
        )
        self.layers_left_out = Counter(
            "cachemesh_layers_left_out",
            "Layers left out of streams served, because the receiver held them",
            registry=self.registry,
        )
        self.layer_bytes_left_out = Counter(
            "cachemesh_layer_bytes_left_out",
            "Bytes of layers left out of streams served, because the receiver held them",
            registry=self.registry,
        )
        self.registry_requests = Counter(
            "cachemesh_registry_requests",
            "Local registry requests, by method and outcome (ok or the spec's error code)",
            ["method", "outcome"],
            registry=self.registry,
        )
        self.registry_bytes = Counter(
            "cachemesh_registry_bytes",
            "Registry bytes served to local clients from this node's store (local) and fetched from peers",
            ["source"],
            registry=self.registry,
        )
        self.failovers = Counter(
            "cachemesh_failovers",
            "Pulls that failed on a source (died, stalled, broke the stream) and move to another holder",
            registry=self.registry,
        )
        self.handoffs = Counter(
            "cachemesh_handoffs",
            "Pulls a busy source handed on to a peer that relays the image as it arrives",
            registry=self.registry,
        )
        self.relays_served = Counter(
            "cachemesh_relays_served",
            "Streams served to peers from an image still arriving here (cut-through relay)",
            registry=self.registry,
        )
        self.evictions = Counter(
            "cachemesh_evictions",
            "Mesh-brought content evicted, by kind (image, manifest) and reason (budget, watermark)",
            ["kind", "reason"],
            registry=self.registry,
        )
        self.tls_handshake_failures = Counter(
            "cachemesh_tls_handshake_failures",
            "TLS handshakes with peers that failed, by kind: plain (the peer speaks plain HTTP), "
            "verify (its certificate does not verify: another secret or CA), refused (it refused "
            "this node's certificate), other",
            ["kind"],
            registry=self.registry,
        )
        self.claims_refused = Counter(
            "cachemesh_trust_claims_refused",
            "Tag claims from the mesh this node did not believe, counted once per claim, by reason: "
            "unsigned (a trusted host, an unsigned claim), protected (a protected name, unsigned), "
            "bad-signature (forged, garbled or moved), replayed (older than one signed since)",
            ["reason"],
            registry=self.registry,
        )
        for reason in REFUSALS:
            self.claims_refused.labels(reason)
        for kind in ("plain", "verify", "refused", "other"):
            self.tls_handshake_failures.labels(kind)
        for source in ("local", "peers"):
            self.registry_bytes.labels(source)
        for direction in ("in", "out"):
            self.transfer_bytes.labels(direction)
            for outcome in ("ok", "failed"):
                self.transfers.labels(direction, outcome)

    def render(self, snapshot: MetricsSnapshot) -> bytes:
        """The counters, then the gauges read from `snapshot` (taken at the scrape: never stale)."""
        gauges = CollectorRegistry(auto_describe=False)
        gauges.register(_Snapshot(lambda: snapshot))
        data: bytes = generate_latest(self.registry) + generate_latest(gauges)
        return data

    def claim_refused(self, reason: str) -> None:
        self.claims_refused.labels(reason).inc()

    def tls_failed(self, kind: str) -> None:
        self.tls_handshake_failures.labels(kind).inc()

    def evicted(self, kind: str, reason: str, size: int) -> None:
        self.evictions.labels(kind, reason).inc()

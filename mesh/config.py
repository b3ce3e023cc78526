"""One frozen configuration for a node: what the operator set, and the timings its preset picks.

The defaults are the LAN preset; `Config.local()` is the fast preset for tests and the demo. The
protocol core's own timings are a `Timings` (mesh.protocol.timings) inside it, so the core never
sees the rest. Which flags and env vars set which field, and what values they take, is mesh.options.
"""

from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass, field
from typing import Any

from mesh.protocol.timings import Timings


class ConfigError(ValueError):
    """A setting is missing or malformed. The message says which flag or env var to fix."""


@dataclass(frozen=True, slots=True)
class Config:
    # --- operator settings ---------------------------------------------------------------
    engine: str = "docker"
    """"docker": share the local engine's images and serve the registry endpoint. "off": the
    registry endpoint alone, with no Docker socket (BuildKit's docker-container driver, engine-less
    runners): the node holds no images, pulls none, and is ready once synced."""
    docker_host: str = "unix:///var/run/docker.sock"
    """Engine API endpoint of the local Docker Engine (unix:// or tcp://). Unused with engine off."""
    listen: str = "0.0.0.0:7611"
    """host:port for the peer API (gossip and transfers)."""
    advertise: str = ""
    """host:port peers dial. Empty: derived from the host's addresses (see mesh.discovery.addresses)."""
    status_listen: str = "127.0.0.1:7612"
    """host:port for the status page, JSON API and metrics. Localhost unless told otherwise."""
    seeds: tuple[str, ...] = ()
    """host:port of peers to join through; DNS names are re-resolved, so a seed can be a DNS round robin."""
    mdns: bool = True
    """Find peers on the local link by multicast DNS."""
    gossip_datagrams: bool = True
    """Send gossip that fits in sealed UDP datagrams on the peer port (the rest goes over TLS).
    Off: everything over the TLS peer API; set it the same on every node (docs/protocol.md)."""
    cluster: str = "default"
    """Cluster name. Nodes only talk within one cluster; the name is mixed into the signing key."""
    secret: bytes = field(default=b"", repr=False)
    """Cluster secret every request is signed with. Required unless `insecure`."""
    insecure: bool = False
    """Run without a secret (a fixed, publicly known key). For throwaway local experiments only."""
    data_dir: str = "/var/lib/cachemesh"
    """Directory for the node ID, its incarnation and its eviction list."""
    node_name: str = field(default_factory=platform.node)
    """Human-readable name shown on status pages."""
    include: tuple[str, ...] = ()
    """Only share tags matching one of these globs (empty: all tags)."""
    exclude: tuple[str, ...] = ()
    """Never share tags matching these globs (wins over include)."""
    previous_secret: bytes = field(default=b"", repr=False)
    """During a secret rotation, the old secret (second line of --secret-file): peers that still
    hold only it are admitted. Empty otherwise."""
    tls: str = "on"
    """TLS 1.3 with mutual authentication on the peer API: "on" (default) or "off" (--insecure only)."""
    tls_cert: str = ""
    """Operator PKI: this node's certificate (PEM). With tls_key and tls_ca, replaces the CA derived
    from the cluster secret."""
    tls_key: str = ""
    """Operator PKI: this node's private key (PEM)."""
    tls_ca: str = ""
    """Operator PKI: the CA certificate(s) peers' certificates must chain to (PEM)."""
    registry_listen: str = "127.0.0.1:7613"
    """host:port of the local OCI registry endpoint (BuildKit cache, docker push/pull); "off" for none.
    Loopback needs no credentials: it is this host's builds talking to their own node."""
    registry_warm: tuple[str, ...] = ()
    """Registry `repo:tag` globs a new node fetches whole before it reports ready, e.g. `cache/*`."""
    registry_push_token_file: str = ""
    """A file holding the token a push to the local registry must present (docker login's password,
    or Basic auth); pulls stay open. Empty: pushes need no credentials."""
    trust_key: str = ""
    """Trust classes: the private Ed25519 key (PEM) of a trusted publisher. This host signs its tag
    claims with it and believes only signed claims (mesh.protocol.trust)."""
    trust_pub: str = ""
    """Trust classes: the public key(s) (PEM; two during a rotation, new first) every host verifies
    claims with. Given alone, this host is untrusted: it believes signed claims and its own class's."""
    protect: tuple[str, ...] = ()
    """Tag and `repo:tag` globs only signed claims may set, on every host (e.g. `*:main`). Needs a
    trust key."""
    ready_timeout: float = 1800.0
    """Seconds after start when /readyz says ready even if the warm-up is not done, and says why
    (0: wait for the warm-up however long it takes). The cache only speeds builds up: past half an
    hour, a host that builds without part of it serves better than one an autoscaler keeps waiting for."""
    share: str = "deps"
    """Which local builds are announced: "deps" (only when a dependency step changed, i.e. the
    first layer new to the mesh comes before the image's last ADD/COPY; bases always) or "all"."""
    disk_budget: int = 0
    """Bytes the mesh may bring onto this host (pulled images, fetched or pushed registry blobs);
    least recently used content beyond it is evicted and not pulled. 0: no budget."""
    disk_high: float = 0.0
    """Fraction of the engine's or the data dir's filesystem above which mesh-brought content is
    evicted, oldest use first, until use is below disk_low. 0: off."""
    disk_low: float = 0.0
    """Where watermark eviction stops (fraction of the filesystem)."""
    disk_check_interval: float = 10.0
    """Seconds between checks of the budget and the watermarks."""

    # --- engine and transfers ----------------------------------------------------------
    rescan_interval: float = 30.0
    """Seconds between full rescans of the engine's images, a safety net behind engine events."""
    event_debounce: float = 0.2
    """Wait this long after an engine event for more before rescanning (a build emits bursts)."""
    max_transfers_in: int = 2
    """Concurrent pulls into the local engine (downloads). `docker load` is the bottleneck; more
    only thrash disk."""
    max_transfers_out: int = 4
    """Concurrent saves served to peers (uploads); more wait in the upload queue."""
    upload_queue: int = 32
    """Save requests that wait for an upload slot; past this a requester gets 503 + Retry-After."""
    transfer_queue_wait: float = 300.0
    """How long a pull waits in a source's upload queue for its stream to start."""
    zone: str = ""
    """This node's zone (rack, AZ, site): sources in the same zone are preferred. "" = none."""
    transfer_chunk_bytes: int = 1024 * 1024
    """Chunk size of transfer streams (1 MiB matched a direct pipe in measurements)."""
    transfer_idle_timeout: float = 10.0
    """A transfer with no bytes for this long is aborted and fails over to another holder (the
    peer died, stalled or was stopped). A save stream starts within a second on a healthy peer."""
    retry_backoff: float = 2.0
    """First retry delay after a failed transfer; doubles per failure up to retry_backoff_max."""
    retry_backoff_max: float = 120.0
    """Longest retry delay."""
    max_attempts: int = 5
    """After this many failures of one image, readiness stops waiting for it (it is still retried)."""

    # --- HTTP and auth -----------------------------------------------------------------
    auth_window: float = 120.0
    """Seconds of clock skew a signed request may carry. Requests outside the window get 401."""
    request_timeout: float = 10.0
    """Seconds a peer may take to send a whole gossip request body; slower clients get 408."""
    peer_timeout: float = 5.0
    """Seconds this node waits for a peer's gossip response before treating the message as lost."""
    join_grace: float = 5.0
    """With no seeds configured, a node that found no peer after this long is ready on its own."""

    # --- the protocol core ----------------------------------------------------------------
    timings: Timings = field(default_factory=Timings.lan)
    """Timings and message sizes of the protocol core (failure detection, gossip, anti-entropy)."""

    # ---------------------------------------------------------------------------------
    @classmethod
    def lan(cls, **overrides: Any) -> Config:
        """Defaults for a build fleet on one LAN or VPC: 1,000 nodes, a few ms RTT."""
        return cls(**overrides)

    @classmethod
    def local(cls, **overrides: Any) -> Config:
        """Fast timings for tests and the demo: one machine, sub-millisecond RTT."""
        fast: dict[str, Any] = dict(
            timings=Timings.local(),
            rescan_interval=5.0,
            event_debounce=0.1,
            retry_backoff=0.5,
            retry_backoff_max=5.0,
            join_grace=2.0,
            disk_check_interval=1.0,
        )
        fast.update(overrides)
        return cls(**fast)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    # The node enforces two of the core's numbers at its own edges (the peer API's body limit, the
    # pace of its seed lookups): the same numbers, read through here.
    @property
    def max_message_bytes(self) -> int:
        return self.timings.max_message_bytes

    @property
    def reconnect_interval(self) -> float:
        return self.timings.reconnect_interval

    @property
    def signing_secrets(self) -> tuple[bytes, ...]:
        """The secrets this node accepts, the one it signs with first (two during a rotation)."""
        return (self.signing_secret, self.previous_secret) if self.previous_secret else (self.signing_secret,)

    @property
    def signing_secret(self) -> bytes:
        if self.secret:
            return self.secret
        if self.insecure:
            return b"cachemesh-insecure-publicly-known-key"
        raise ConfigError(
            "no cluster secret: set CACHEMESH_SECRET or --secret-file PATH "
            "(or --insecure for a throwaway local experiment)"
        )

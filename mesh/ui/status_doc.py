"""The shape of the node's status document (`/api/status`, the status page, `cachemesh status`,
`cachemesh wait-ready`) and of the snapshot the metrics read: TypedDicts, so mypy checks every key
their builders write and their readers read.

They describe JSON as it is served, and nothing more: mesh.node.status builds the document, with
its `registry` section from mesh.registry.status, its `disk` section from mesh.node.disk and its
`warmup` figures from mesh.node.warmup; mesh.node.node builds the metrics snapshot. The page and
the CLIs read them. They live here, in mesh/ui, because the layer rule lets the node and the
registry import mesh/ui but not mesh/ui import the node.

The CLIs read the document from a node over HTTP, maybe one of another version: the sections that
came later (`warmup`, `registry`, `disk`, `trust`) are NotRequired, so readers check for them. This version's
node always sends them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NotRequired, TypedDict

# --- node -------------------------------------------------------------------------------------


class NodeTLSDoc(TypedDict):
    """This node's peer TLS: `{"mode": "off"}`, or the mode and its certificate's facts."""

    mode: str  # off, derived, operator
    version: NotRequired[str]
    secrets: NotRequired[list[str]]  # fingerprints of the derived CAs held, current first
    cert_not_after: NotRequired[int]
    refused: NotRequired[dict[str, str]]  # address -> why its last handshake failed


class NodeDoc(TypedDict):
    id: str
    name: str
    address: str
    cluster: str
    incarnation: int
    version: str
    uptime: float
    engine: str
    engine_available: bool
    tls: NodeTLSDoc
    clock_refused: dict[str, float]  # source address -> clock offset (s) of gossip refused for it


class DiscoveryDoc(TypedDict):
    seeds: list[str]
    mdns: bool
    mdns_found: list[str]


# --- warm-up ----------------------------------------------------------------------------------


class WarmupFigures(TypedDict):
    """mesh.node.warmup.WarmupProgress as the document carries it (rate and ETA rounded)."""

    images_done: int
    images_left: int
    images_given_up: int
    bytes_done: int
    bytes_left: int
    rate: int
    eta: float | None


class WarmupDoc(WarmupFigures):
    ready_timeout: float | None
    ready_timeout_left: float | None
    ready_by_timeout: bool


# --- peers, images, transfers -----------------------------------------------------------------


class PeerTLSDoc(TypedDict):
    """A peer's TLS as this node last saw it (mesh.net.tls_peers.TLSObserver.state)."""

    state: str  # off, unknown, refused, verified
    error: NotRequired[str]  # refused: why
    version: NotRequired[str]  # verified: the TLS version and cipher
    cipher: NotRequired[str]
    secret: NotRequired[str]  # verified with a certificate: which secret it holds
    identity: NotRequired[str]
    cert_not_after: NotRequired[int]


class PeerGossipDoc(TypedDict):
    datagrams: str  # "none yet" or "sealed"
    secret: NotRequired[str]  # sealed: with this node's "current" or "previous" secret


class PeerDoc(TypedDict):
    id: str
    name: str
    address: str
    state: str  # alive, suspect, dead, left
    incarnation: int
    rtt_ms: float | None
    images: int
    since: float
    tls: PeerTLSDoc
    gossip: PeerGossipDoc
    clock_offset: float | None  # s, this host's clock minus the peer's (from its datagrams); None: unknown


class ShareDoc(TypedDict):
    shared: bool
    reason: str
    code: str


class ImageDoc(TypedDict):
    id: str  # the mesh key: the same for an image on every engine and store
    engine_id: str | None  # this engine's ID for it (what `docker images` shows); None: not here
    tags: list[str]
    size: int | None
    created: int | None
    local: bool
    holders: list[str]
    share: ShareDoc | None  # why a tagged local image is (not) announced; None for others
    from_mesh: bool


class TransferDoc(TypedDict):
    image: str
    tags: list[str]
    peer: str  # the peer's name
    address: str
    direction: str  # in, out
    bytes: int
    total: int
    rate: int
    started: float
    finished: float | None
    outcome: str  # running, ok, failed, ...
    error: str
    relay: bool  # in: the source was still receiving it; out: served as it arrived


class PullFailureDoc(TypedDict):
    """An image whose pulls have failed and not succeeded since (mesh.protocol.planner.Failure)."""

    image: str
    attempts: int  # failed pulls of it so far; reset when one succeeds
    retry_in: float  # s until the planner may try it again (0: it may now)
    sources: list[str]  # the peers (names) that failed it, ranked last next time
    given_up: bool  # attempts reached --max-attempts: readiness no longer waits for it


class TagSetDoc(TypedDict):
    tag: str
    image: str
    set_at: float  # Unix seconds


# --- registry ---------------------------------------------------------------------------------


class RegistryTagDoc(TypedDict):
    tag: str
    digest: str
    pushed_ms: int
    here: bool
    holders: list[str]


class RepositoryDoc(TypedDict):
    name: str
    tags: list[RegistryTagDoc]


class RegistryFetchDoc(TypedDict):
    digest: str
    source: str
    bytes: int
    total: int


class RegistryWarmDoc(TypedDict):
    globs: list[str]
    held: int
    wanted: int
    errors: dict[str, str]


class RegistryDoc(TypedDict):
    listen: str
    repositories: list[RepositoryDoc]
    bytes_held: int
    blobs_held: int
    fetches: list[RegistryFetchDoc]
    warm: RegistryWarmDoc


# --- disk -------------------------------------------------------------------------------------


class EvictionDoc(TypedDict):
    id: str
    kind: str  # image, manifest, blob
    reason: str  # budget, watermark
    bytes: int
    at: float


class FilesystemDoc(TypedDict):
    path: str
    used: int
    total: int
    fraction: float


class DiskDoc(TypedDict):
    budget: int
    high: float
    low: float
    held: int | None  # None until the first check
    kept: int | None
    pinned: int | None
    limit_reason: str
    checks: int
    evictions: dict[str, int]  # by reason
    evicted_bytes: dict[str, int]
    recent_evictions: list[EvictionDoc]
    filesystems: list[FilesystemDoc]


# --- the document -----------------------------------------------------------------------------


class ClaimDoc(TypedDict):
    """One tag claim in the mesh and what this node made of it (mesh.protocol.trust)."""

    kind: str  # image, registry, tagset
    name: str  # the tag or repo:tag
    target: str  # the image (mesh key) or registry manifest digest it names
    publisher: str  # the name of the node whose manifest carries it
    publisher_id: str
    trust_class: str  # trusted (a valid signature) or untrusted
    believed: bool
    reason: str  # why not believed: unsigned, protected, bad-signature, replayed; "" if believed


class TrustDoc(TypedDict):
    mode: str  # off (no trust key), trusted (signs its claims), untrusted (public key only)
    keys: list[str]  # fingerprints of the public keys claims are verified with
    protected: list[str]  # --protect globs
    push_token: bool  # the registry takes pushes only with the token
    refused: dict[str, int]  # claims refused since start, by reason
    claims: list[ClaimDoc]  # this node's and live peers' claims (at most 500)


class StatusDoc(TypedDict):
    node: NodeDoc
    discovery: DiscoveryDoc
    ready: bool
    ready_reason: str
    missing: list[str]
    warmup: NotRequired[WarmupDoc]
    peers: list[PeerDoc]
    images: list[ImageDoc]
    transfers: list[TransferDoc]
    recent_transfers: list[TransferDoc]
    pull_failures: NotRequired[list[PullFailureDoc]]  # later than the rest: older nodes lack it
    registry: NotRequired[RegistryDoc]
    disk: NotRequired[DiskDoc]
    trust: NotRequired[TrustDoc]
    tag_sets: list[TagSetDoc]  # tags set back on purpose (rollbacks), here or adopted
    tags_kept: list[str]  # tags the mesh would move, kept on a newer image built here


# --- what the metrics read --------------------------------------------------------------------


class MetricsSnapshot(TypedDict):
    """The node's figures as mesh.ui.metrics reads them at each scrape (mesh.node.node)."""

    peers: dict[str, int]  # by state label
    images_local: int
    images_mesh: int
    ready: int  # 1 or 0
    missing: int
    in_flight: int
    registry_fetches: int
    incarnation: int
    core: Mapping[str, int]  # mesh.protocol.core.MeshCore.stats
    disk: DiskDoc | None
    share: Mapping[tuple[str, str], int]  # (shared or local, the share rule's code) -> images

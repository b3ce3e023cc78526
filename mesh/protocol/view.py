"""A read-only view of what one core knows, for the node's I/O edges (puller, readiness, status). Pure.

The edges ask through this view and get snapshots (frozen records, fresh dicts, read-only
mappings): they never hold or change the core's members, manifest copies or metadata.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from mesh.protocol.liveness import State
from mesh.protocol.manifests import Manifests
from mesh.protocol.membership import Member, Membership
from mesh.protocol.nodestatus import NodeStatus, is_status_entry, parse, status_key
from mesh.protocol.wire import ImageMeta, Tags


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """One member as this node sees it now."""

    id: str
    name: str
    addr: str
    state: State
    incarnation: int
    rtt: float | None  # seconds, smoothed; None until a probe was answered
    since: float  # the core's clock when it entered this state

    @staticmethod
    def of(m: Member) -> PeerInfo:
        return PeerInfo(m.id, m.name, m.addr, m.state, m.incarnation, m.rtt, m.since)


class MeshView:
    def __init__(self, membership: Membership, manifests: Manifests) -> None:
        self._membership = membership
        self._manifests = manifests

    @property
    def node_id(self) -> str:
        return self._membership.me.id

    @property
    def incarnation(self) -> int:
        return self._membership.me.incarnation

    # --- peers ----------------------------------------------------------------------------

    def peer(self, node: str) -> PeerInfo | None:
        """A member other than this node, or None if it is not known."""
        m = self._membership.members.get(node)
        return None if m is None or m is self._membership.me else PeerInfo.of(m)

    def peers(self) -> dict[str, PeerInfo]:
        """Every known member but this node, in any state."""
        me = self._membership.me
        return {i: PeerInfo.of(m) for i, m in self._membership.members.items() if m is not me}

    def live_peers(self) -> list[PeerInfo]:
        """Members alive or suspect (still probed, still gossiped to)."""
        members = self._membership.members
        return [PeerInfo.of(members[i]) for i in self._membership.live_ids()]

    def live_addrs(self) -> list[str]:
        members = self._membership.members
        return [members[i].addr for i in self._membership.live_ids()]

    # --- holdings -------------------------------------------------------------------------

    def holdings(self, node: str) -> dict[str, Tags]:
        """What `node` holds as known here (image ID -> tags); empty if nothing is known. Its
        status entry (mesh.protocol.nodestatus) is not a holding and is left out."""
        replica = self._manifests.replicas.get(node)
        if replica is None:
            return {}
        return {i: tags for i, (tags, _) in replica.entries.items() if not is_status_entry(tags)}

    def entries(self, node: str) -> dict[str, tuple[Tags, int, bytes]]:
        """Every entry of `node`'s manifest as known here, its status entry included: image ID ->
        (tags, stamp, trust signature or b""), for the trust check (mesh.node.trust_view)."""
        replica = self._manifests.replicas.get(node)
        if replica is None:
            return {}
        sigs = replica.sigs
        return {i: (tags, stamp, sigs.get(i, b"")) for i, (tags, stamp) in replica.entries.items()}

    def status(self, node: str) -> NodeStatus:
        """`node`'s gossiped transfer status (zone, load, relays); empty until one is known."""
        replica = self._manifests.replicas.get(node)
        entry = replica.entries.get(status_key(node)) if replica is not None else None
        found = parse(entry[0]) if entry is not None else None
        return found or NodeStatus()

    def all_holdings(self) -> dict[str, dict[str, Tags]]:
        """Every node's holdings as known here, this node's own included."""
        return {node: self.holdings(node) for node in self._manifests.replicas}

    def manifest_pending(self, node: str) -> bool:
        """True while this node lacks part of `node`'s manifest that it knows exists: never received,
        or a rumoured newer version not applied yet."""
        replica = self._manifests.replicas.get(node)
        return replica is None or replica.version == 0 or bool(replica.heard)

    # --- metadata -------------------------------------------------------------------------

    def metas(self) -> Mapping[str, ImageMeta]:
        """Image metadata learnt from peers and announced here, by image ID (read-only)."""
        return MappingProxyType(self._manifests.metas)

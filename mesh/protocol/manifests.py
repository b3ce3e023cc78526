"""Manifests: what every node holds, as this node knows it. Pure.

Each node's manifest maps image ID -> tags. Every change the origin makes bumps its version, and
each entry remembers the version (stamp) it last changed at; a removal leaves a tombstone with
its stamp. So "everything after version v" is a small delta, and any copy can serve it.

- Fresh changes spread as rumours (`ManifestUpdate`, origin version `prev` -> `version`).
  A copy that is at `prev` applies it and advances; one that is behind applies the entries by
  stamp (newer stamp wins) but keeps its version, so the gap is filled from a peer later.
- Anti-entropy (`sync`) compares versions and asks for `ManifestDelta`s since the known version.
- Tombstones expire after `tombstone_ttl`; the copy's `floor` rises past them, and a delta asked
  for from below the floor is sent as a full manifest instead.
- Image metadata (layers, parent, size) is content-addressed: one `ImageMeta` per image ID, held
  once however many nodes hold the image, fetched from a peer only when this node lacks it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from mesh.protocol.events import Event, ManifestChanged, MetaLearned
from mesh.protocol.formulas import backoff
from mesh.protocol.outbox import Outbox
from mesh.protocol.rumours import BroadcastQueue
from mesh.protocol.timings import Timings
from mesh.protocol.wire import (
    Entry,
    ImageMeta,
    ManifestDelta,
    ManifestUpdate,
    MetaWant,
    SyncWant,
    Tags,
    encoded_size,
)

MAX_IMAGES_PER_NODE = 5000
"""One node's manifest must fit one message; past this the newest images are announced."""


@dataclass(slots=True)
class Replica:
    """One node's manifest as known here. Complete up to `version`; entries may run ahead of it."""

    version: int = 0
    floor: int = 0
    entries: dict[str, tuple[Tags, int]] = field(default_factory=dict)
    sigs: dict[str, bytes] = field(default_factory=dict)  # entries' trust signatures (signed ones only)
    tombs: dict[str, int] = field(default_factory=dict)
    heard: set[int] = field(default_factory=set)  # rumoured versions above `version`
    gap_since: float | None = None
    gap_source: str = ""
    revision: int = 0  # bumped on every entry change; keys the delta cache
    deltas: dict[int, ManifestDelta] = field(default_factory=dict)  # since -> delta, for `deltas_state`
    deltas_state: tuple[int, int, int] = (-1, -1, -1)

    def stamp_of(self, image: str) -> int:
        entry = self.entries.get(image)
        if entry is not None:
            return entry[1]
        return self.tombs.get(image, -1)

    def apply(
        self, entry: Entry, now: float, expiry: deque[tuple[float, Replica, str, int]], ttl: float
    ) -> bool:
        if entry.stamp <= self.stamp_of(entry.image):
            return False
        self.revision += 1
        self.sigs.pop(entry.image, None)
        if entry.tags is None:
            self.entries.pop(entry.image, None)
            self.tombs[entry.image] = entry.stamp
            expiry.append((now + ttl, self, entry.image, entry.stamp))
        else:
            self.tombs.pop(entry.image, None)
            self.entries[entry.image] = (entry.tags, entry.stamp)
            if entry.sig:
                self.sigs[entry.image] = entry.sig
        return True

    def entry(self, image: str) -> Entry | None:
        """The entry as held, with its signature, as a delta would carry it."""
        held = self.entries.get(image)
        return None if held is None else Entry(image, held[0], held[1], self.sigs.get(image, b""))


@dataclass(slots=True)
class _MetaAsk:
    origin: str  # whose manifest named the image: it holds the image, so it has the metadata
    due: float  # ask again then if nothing came
    attempts: int


Sign = Callable[[str, str, Tags, int], bytes]
"""(publisher, image, tags, stamp) -> the entry's trust signature (mesh.net.trust_keys)."""


class Manifests:
    def __init__(
        self,
        timings: Timings,
        self_id: str,
        initial_version: int,
        outbox: Outbox,
        rumours: BroadcastQueue,
        events: list[Event],
        touched: Callable[[str], None] = lambda node: None,
        sign: Sign | None = None,
    ) -> None:
        """`sign`: on a trusted publisher, signs every entry of the local manifest as it changes."""
        self.timings = timings
        self._sign = sign
        self.self_id = self_id
        self._touched = touched  # a manifest version may have changed (digest upkeep)
        self.replicas: dict[str, Replica] = {self_id: Replica(initial_version, initial_version)}
        self.metas: dict[str, ImageMeta] = {}
        self._out = outbox
        self._rumours = rumours
        self._events = events
        self._expiry: deque[tuple[float, Replica, str, int]] = deque()
        self._meta_asks: dict[str, _MetaAsk] = {}
        self._gapped: dict[str, None] = {}  # nodes whose copy is behind a rumoured version

    def _replica(self, node: str) -> Replica:
        # Not setdefault(node, Replica()): that builds a Replica for every rumour received.
        replica = self.replicas.get(node)
        if replica is None:
            replica = self.replicas[node] = Replica()
        return replica

    @property
    def own(self) -> Replica:
        return self.replicas[self.self_id]

    def version_of(self, node: str) -> int:
        replica = self.replicas.get(node)
        return replica.version if replica is not None else 0

    # --- the local manifest ------------------------------------------------------------

    def set_local(self, images: Mapping[str, Tags], metas: Iterable[ImageMeta], now: float) -> bool:
        """Make the local manifest equal `images` (ID -> tags); rumour the difference. True if changed."""
        for meta in metas:
            self.metas.setdefault(meta.id, meta)
        if len(images) > MAX_IMAGES_PER_NODE:
            newest = sorted(
                images, key=lambda i: self.metas[i].created if i in self.metas else 0, reverse=True
            )
            images = {i: images[i] for i in newest[:MAX_IMAGES_PER_NODE]}
        own = self.own
        changes: list[tuple[str, Tags | None]] = []
        for image, tags in images.items():
            current = own.entries.get(image)
            if current is None or current[0] != tags:
                changes.append((image, tuple(tags)))
        changes.extend((image, None) for image in own.entries if image not in images)
        if not changes:
            return False
        self._touched(self.self_id)
        own = self.own
        prev = own.version
        own.version += 1
        sign = self._sign
        entries = [
            Entry(image, tags, own.version, sign(self.self_id, image, tags, own.version) if sign else b"")
            if tags is not None
            else Entry(image, None, own.version)  # a removal is never believed, only obeyed: unsigned
            for image, tags in changes
        ]
        for entry in entries:
            own.apply(entry, now, self._expiry, self.timings.tombstone_ttl)
        # A small change (an image built or tagged) rides in the rumour itself. A bulk change (a
        # node starting with hundreds of images) is rumoured as a bare version notice: every node
        # then pulls the delta once, instead of every node forwarding kilobytes a dozen times.
        update = ManifestUpdate(self.self_id, prev, own.version, tuple(entries))
        if encoded_size(update) > self.timings.rumour_inline_bytes:
            update = ManifestUpdate(self.self_id, prev, own.version, ())
        self._rumours.push(("u", self.self_id, own.version), update)
        self._events.append(ManifestChanged(self.self_id))
        return True

    # --- rumours -----------------------------------------------------------------------------

    def on_update(self, src: str, msg: ManifestUpdate, now: float) -> None:
        if msg.node == self.self_id:
            return
        replica = self._replica(msg.node)
        if msg.version <= replica.version:
            return
        first_time = msg.version not in replica.heard
        changed = False
        for entry in msg.changes:
            changed |= replica.apply(entry, now, self._expiry, self.timings.tombstone_ttl)
        if msg.changes and msg.prev == replica.version:
            replica.version = msg.version
            self._touched(msg.node)
            self._advance_heard(replica)
        elif first_time:
            replica.heard.add(msg.version)
            if not msg.changes:
                # A bare notice: pull the delta now from whoever told us.
                self._out.send(src, SyncWant(((msg.node, replica.version),)))
                replica.gap_since, replica.gap_source = now, src
            elif replica.gap_since is None:
                replica.gap_since, replica.gap_source = now, src
            self._gapped[msg.node] = None
        key = ("u", msg.node, msg.version)
        if first_time:
            self._rumours.push(key, msg)
        elif msg.changes:
            queued = self._rumours.get(key)
            if queued is not None and not queued.changes:  # type: ignore[union-attr]
                self._rumours.push(key, msg)  # the full rumour supersedes a notice of the same version
        if changed:
            self._events.append(ManifestChanged(msg.node))
            self._want_metas(src, msg.node, (e.image for e in msg.changes if e.tags is not None), now)

    @staticmethod
    def _advance_heard(replica: Replica) -> None:
        replica.heard = {v for v in replica.heard if v > replica.version}
        if not replica.heard:
            replica.gap_since = None

    def gaps_to_repair(self, now: float, delay: float) -> list[tuple[str, str, int]]:
        """(peer to ask, node, known version) for copies that have been behind a rumour too long.
        The caller may redirect the ask when that peer is gone. Only copies with a gap are looked
        at: a thousand-node cluster has a thousand copies on every node."""
        out = []
        for node in list(self._gapped):
            replica = self.replicas.get(node)
            if replica is None or replica.gap_since is None:
                del self._gapped[node]
            elif now - replica.gap_since >= delay:
                out.append((replica.gap_source, node, replica.version))
                replica.gap_since = now  # ask again only after another `delay`
        return out

    # --- deltas --------------------------------------------------------------------------

    def delta_for(self, node: str, since: int) -> ManifestDelta | None:
        replica = self.replicas.get(node)
        if replica is None or since >= replica.version:
            return None
        # After a rumoured notice, many peers ask for the same delta: build and pack it once.
        state = (replica.version, replica.floor, replica.revision)
        if replica.deltas_state != state:
            replica.deltas, replica.deltas_state = {}, state
        key = -1 if since < replica.floor else since  # every full copy is the same message
        cached = replica.deltas.get(key)
        if cached is None:
            cached = replica.deltas[key] = self._build_delta(node, replica, since)
        return cached

    @staticmethod
    def _build_delta(node: str, replica: Replica, since: int) -> ManifestDelta:
        if since < replica.floor:
            sigs = replica.sigs
            entries = tuple(
                Entry(i, tags, stamp, sigs.get(i, b"")) for i, (tags, stamp) in replica.entries.items()
            )
            return ManifestDelta(node, 0, replica.version, True, replica.floor, entries)
        sigs = replica.sigs
        changed = [
            Entry(i, tags, stamp, sigs.get(i, b""))
            for i, (tags, stamp) in replica.entries.items()
            if stamp > since
        ]
        changed.extend(Entry(i, None, stamp) for i, stamp in replica.tombs.items() if stamp > since)
        return ManifestDelta(node, since, replica.version, False, replica.floor, tuple(changed))

    def on_delta(self, src: str, msg: ManifestDelta, now: float) -> None:
        if msg.node == self.self_id:
            return
        replica = self._replica(msg.node)
        if msg.version <= replica.version:
            return
        changed = False
        if msg.full and not replica.entries and not replica.tombs:
            # A first full copy (a node joining learns every manifest this way): nothing to reconcile.
            replica.entries = {e.image: (e.tags, e.stamp) for e in msg.entries if e.tags is not None}
            replica.sigs = {e.image: e.sig for e in msg.entries if e.tags is not None and e.sig}
            replica.revision += 1
            changed = bool(replica.entries)
        else:
            if msg.full:
                keep = {e.image for e in msg.entries}
                for image in [i for i in replica.entries if i not in keep]:
                    changed |= replica.apply(
                        Entry(image, None, msg.version), now, self._expiry, self.timings.tombstone_ttl
                    )
            for entry in msg.entries:
                changed |= replica.apply(entry, now, self._expiry, self.timings.tombstone_ttl)
        if msg.full or msg.since <= replica.version:
            # A copy that was behind missed an update, so others may have too: pass on a bare notice
            # so they pull it now rather than at their next sync. A new copy (a node joining) stays
            # quiet, or every join would rumour the whole cluster's versions.
            missed = replica.version > 0 and msg.version not in replica.heard
            replica.version = msg.version
            self._touched(msg.node)
            if msg.full:
                replica.floor = max(replica.floor, msg.floor)
            self._advance_heard(replica)
            key = ("u", msg.node, msg.version)
            if missed and key not in self._rumours:
                # Small deltas travel inline, like the original rumour; big ones as a bare notice.
                update = ManifestUpdate(msg.node, msg.since, msg.version, () if msg.full else msg.entries)
                if update.changes and encoded_size(update) > self.timings.rumour_inline_bytes:
                    update = ManifestUpdate(msg.node, msg.since, msg.version, ())
                self._rumours.push(key, update)
        if changed:
            self._events.append(ManifestChanged(msg.node))
            self._want_metas(src, msg.node, (e.image for e in msg.entries if e.tags is not None), now)

    # --- metas ---------------------------------------------------------------------------

    def _want_metas(self, src: str, origin: str, images: Iterable[str], now: float) -> None:
        missing = []
        for image in images:
            if image in self.metas:
                continue
            ask = self._meta_asks.get(image)
            if ask is not None and ask.due > now:
                continue
            if ask is None:
                self._meta_asks[image] = _MetaAsk(origin, now + 4 * self.timings.probe_interval, 1)
            else:
                ask.due = now + 4 * self.timings.probe_interval
            missing.append(image)
        if missing:
            self._out.send(src, MetaWant(tuple(missing)))

    def metas_for(self, images: Iterable[str]) -> list[ImageMeta]:
        return [self.metas[i] for i in images if i in self.metas]

    def on_metas(self, metas: Iterable[ImageMeta]) -> None:
        for meta in metas:
            if meta.id not in self.metas and self._meta_asks.pop(meta.id, None) is not None:
                self.metas[meta.id] = meta
                self._events.append(MetaLearned(meta.id))

    def stale_meta_asks(self, now: float) -> list[tuple[str, str]]:
        """(origin, image) for metadata asked for that never came: the peer that told us may not have
        had it yet, or the reply was lost. Ask the origin, which holds the image, with backoff."""
        stale = []
        for image, ask in self._meta_asks.items():
            if ask.due <= now:
                ask.attempts += 1
                ask.due = now + backoff(ask.attempts, 4 * self.timings.probe_interval, 60.0)
                stale.append((ask.origin, image))
        return stale

    def forget_meta_ask(self, image: str) -> None:
        self._meta_asks.pop(image, None)

    def holders_of(self, image: str) -> list[str]:
        return [
            node
            for node, replica in self.replicas.items()
            if image in replica.entries and node != self.self_id
        ]

    # --- time ----------------------------------------------------------------------------

    def expire(self, now: float) -> None:
        """Drop tombstones past their time; the copy's floor rises so old deltas become full ones."""
        while self._expiry and self._expiry[0][0] <= now:
            _, replica, image, stamp = self._expiry.popleft()
            if replica.tombs.get(image) == stamp:
                del replica.tombs[image]
                replica.floor = max(replica.floor, stamp)
                replica.revision += 1

    def forget(self, node: str) -> None:
        """A member was reaped: drop its manifest and metas no one else references."""
        replica = self.replicas.pop(node, None)
        if replica is None:
            return
        self._touched(node)
        referenced = {i for r in self.replicas.values() for i in r.entries}
        for image in [i for i in replica.entries if i not in referenced]:
            self.metas.pop(image, None)
        if replica.entries:
            self._events.append(ManifestChanged(node))

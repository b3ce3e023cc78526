"""What this node should hold, from whom to pull it, and in what order. Pure.

Policy (the default; a disk budget comes later):
- Every tag shared in the mesh (subject to the include/exclude globs) resolves to one image: the
  one with the latest claim, ties broken by image ID, so every node picks the same one. A claim's
  time is the image's creation, or, for a tag set on purpose (a rollback to an older image,
  mesh.protocol.tagsets) by a node that still tags that image so, the time it was set.
- A tag here on an image built on this host (not brought by the mesh) that is newer than the
  winner is not moved: an image from the mesh never replaces a newer local build.
- This node should hold that image with that tag. Pulling an image brings its parent chain, so a
  classic-builder rebuild here finds every intermediate step; base images are tags like any other,
  because a rebuild needs its FROM image by name.
- Images the operator removed here are not pulled back (they are remembered as evicted) until a
  newer image takes their tag.
- The source is chosen by `mesh.protocol.sources.rank`: live holders and live relays (peers still
  receiving the image, cut-through, whose stream covers the layers this node lacks), weighed by
  RTT, their gossiped uploads, zone and recent failures, ties spread per receiver, so a burst of
  receivers forms a tree, not a star.
- An image whose parent chain already brings another wanted image is pulled first, and the other
  waits for it instead of crossing the network twice.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import takewhile

from mesh.protocol import sources
from mesh.protocol.oci import is_registry_entry
from mesh.protocol.sources import Penalty
from mesh.protocol.tagsets import TagSet, created_ms, tag_map, valid
from mesh.protocol.wire import ImageMeta, Tags


@dataclass(frozen=True, slots=True)
class Peer:
    """A peer as source choice sees it. `zone`, `uploads` and `receiving` come from the peer's
    gossiped status (mesh.protocol.nodestatus); `receiving` maps images it is receiving and
    relaying to the image store its stream is for ("graph" or "containerd"), and `relay_have`
    those whose stream is a delta to the leading layers it leaves out (absent: a full stream)."""

    id: str
    alive: bool
    rtt: float | None
    zone: str = ""
    uploads: int = 0
    receiving: Mapping[str, str] = field(default_factory=dict)
    relay_have: Mapping[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class Failure:
    attempts: int
    retry_at: float
    bad_sources: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Pull:
    image: str
    source: str
    tags: tuple[str, ...]
    size: int
    via_relay: bool = False
    """The source is still receiving the image itself and relays it as it arrives."""
    have: int = 0
    """The leading layers of the image this node holds (by chain ID), to be left out of the
    stream: what the source was chosen for (a relay only if it covers it)."""


@dataclass(frozen=True, slots=True)
class TagAction:
    image: str
    tag: str


@dataclass(frozen=True, slots=True)
class Plan:
    pulls: list[Pull]
    tags: list[TagAction]
    missing: list[str]
    """Images this node should hold and does not yet (in flight, waiting or failing)."""
    given_up: list[str]
    """Images that failed `max_attempts` times: still retried, but readiness stops waiting."""
    tagsets: dict[str, TagSet] = field(default_factory=dict)
    """tag -> the tag set that decided its image (a rollback), for tags decided by one."""
    kept: list[str] = field(default_factory=list)
    """Tags left on a newer image built here, though the mesh's winner is another."""

    @property
    def warm(self) -> bool:
        return not self.tags and all(i in self.given_up for i in self.missing)


def tag_allowed(tag: str, include: Iterable[str], exclude: Iterable[str]) -> bool:
    if any(fnmatch.fnmatchcase(tag, pattern) for pattern in exclude):
        return False
    patterns = list(include)
    return not patterns or any(fnmatch.fnmatchcase(tag, pattern) for pattern in patterns)


def winners(
    holdings: Iterable[Mapping[str, Tags]],
    metas: Mapping[str, ImageMeta],
    include: Iterable[str],
    exclude: Iterable[str],
    sets: Iterable[Mapping[str, TagSet]] = (),
) -> dict[str, str]:
    """tag -> the image every node agrees should carry it (latest claim, then highest ID)."""
    return {tag: image for tag, (image, _) in decide(holdings, metas, include, exclude, sets).items()}


def decide(
    holdings: Iterable[Mapping[str, Tags]],
    metas: Mapping[str, ImageMeta],
    include: Iterable[str],
    exclude: Iterable[str],
    sets: Iterable[Mapping[str, TagSet]] = (),
) -> dict[str, tuple[str, TagSet | None]]:
    """tag -> (its image, the tag set that decided it or None). A claim's time is the image's
    creation; `sets` (each node's, checked with tagsets.valid against its own manifest) claim
    their tag at the time they were set."""
    best: dict[str, tuple[int, str, TagSet | None]] = {}
    include, exclude = list(include), list(exclude)

    def claim(tag: str, key: tuple[int, str, TagSet | None]) -> None:
        current = best.get(tag)
        if (current is None or key[:2] > current[:2]) and tag_allowed(tag, include, exclude):
            best[tag] = key

    for manifest in holdings:
        for image, tags in manifest.items():
            meta = metas.get(image)
            if meta is None or is_registry_entry(tags):
                continue  # metadata not here yet (decide when it is), or registry content, not an image
            for tag in tags:
                claim(tag, (created_ms(meta.created), image, None))
    for node_sets in sets:
        for tag, tagset in node_sets.items():
            if tagset.image in metas:
                claim(tag, (tagset.at, tagset.image, tagset))
    return {tag: (image, tagset) for tag, (_, image, tagset) in best.items()}


def ancestors(image: str, metas: Mapping[str, ImageMeta]) -> list[str]:
    chain, seen = [], {image}
    current = metas[image].parent if image in metas else ""
    while current and current not in seen:
        chain.append(current)
        seen.add(current)
        current = metas[current].parent if current in metas else ""
    return chain


def chain_of(image: str, metas: Mapping[str, ImageMeta]) -> list[str]:
    """The image and its locally known parent chain, child first (what `docker history -q` lists)."""
    return list(takewhile(metas.__contains__, [image, *ancestors(image, metas)]))


def plan(
    *,
    local: Mapping[str, Tags],
    remote: Mapping[str, Mapping[str, Tags]],
    metas: Mapping[str, ImageMeta],
    peers: Mapping[str, Peer],
    in_flight: Mapping[str, str],
    failures: Mapping[str, Failure],
    evicted: Mapping[str, str],
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    max_pulls: int,
    max_attempts: int,
    now: float,
    me: str = "",
    zone: str = "",
    store: str = "",
    penalties: Mapping[str, Penalty] | None = None,
    local_sets: Mapping[str, TagSet] | None = None,
    remote_sets: Mapping[str, Mapping[str, TagSet]] | None = None,
    brought: Collection[str] | None = None,
    have: Mapping[str, int] | None = None,
    local_claims: Mapping[str, Tags] | None = None,
) -> Plan:
    """Decide pulls and local tag moves.

    local: image -> tags held here. remote: peer ID -> its manifest (image -> tags), live peers only.
    in_flight: image -> source of pulls under way. failures: image -> its failed attempts (when
    to retry it, which sources failed it). evicted: image -> tag it carried when the operator
    removed it here.

    Source choice (mesh.protocol.sources.rank): `me` is this node's ID (spreads ties between
    receivers), `zone` its zone ("" = no preference), `store` its image store: a relay serves
    only receivers of the store its own stream is for, so relays count only when their store is
    `store` (with store "" relays are ignored: the caller cannot say). `penalties`: peer ->
    its recent failures with any image (`sources.penalise`), which lower its preference until
    they expire; `peers[p].uploads` is p's gossiped load.

    Tag sets (mesh.protocol.tagsets): `local_sets` this node's, `remote_sets` peer -> its gossiped
    ones; each counts only while its node tags that image so. `brought`: the local images the
    mesh brought here; the others were built here (all of them when None), and a tag on one newer
    than the tag's winner stays.

    `have`: image -> how many of its leading layers this node holds (by chain ID; absent: 0),
    which the pull asks the source to leave out. A relay is a candidate only if its stream covers
    that (`sources.covers`: it leaves out no more than this node holds), and the pull carries it.
    A caller that wants an image in full (the engine refused its delta) gives 0.

    `local_claims`: the tags here that count as this node's claims (None: all of `local`). Under
    trust classes (mesh.protocol.trust) an untrusted host's tag on a protected name is no claim:
    it neither competes for the tag nor keeps it from the mesh's winner.
    """
    live_remote = {p: m for p, m in remote.items() if p in peers and peers[p].alive}
    claims = local if local_claims is None else local_claims
    sets = [valid(local_sets or {}, claims)]
    sets += [valid((remote_sets or {}).get(p, {}), m) for p, m in live_remote.items()]
    here = tag_map(claims)
    want_tags: dict[str, set[str]] = {}
    winning: dict[str, TagSet] = {}
    kept: list[str] = []
    for tag, (image, tagset) in sorted(
        decide([claims, *live_remote.values()], metas, include, exclude, sets).items()
    ):
        if _built_here_newer(here.get(tag), image, metas, brought):
            kept.append(tag)  # the mesh's older image never moves a newer build of this host's
            continue
        want_tags.setdefault(image, set()).add(tag)
        if tagset is not None:
            winning[tag] = tagset

    tags: list[TagAction] = []
    missing: list[str] = []
    for image, wanted in sorted(want_tags.items()):
        if image in evicted:
            # Not tagged either while the engine still lists it: an eviction is under way (the
            # containerd store lists an image for a moment after its last tag went), and a tag
            # given back would be evicted again, and again (found by the soak: 7 in 1.5 s).
            continue
        if image in local:
            if image in in_flight:
                # Loaded, not yet checked by its pull, which tags it once it is; tagging it here
                # too raced the pull and repeated itself on every plan (the soak: 8 in 1 s).
                continue
            tags.extend(TagAction(image, tag) for tag in sorted(wanted - set(local[image])))
        else:
            missing.append(image)

    holders: dict[str, list[str]] = {}
    for peer, manifest in live_remote.items():
        for image in manifest:
            holders.setdefault(image, []).append(peer)
    held = have or {}
    relays: dict[str, list[str]] = {}
    if store:
        for peer_id, info in sorted(peers.items()):
            if info.alive and peer_id != me:
                for image, relay_store in info.receiving.items():
                    if (
                        relay_store == store
                        and peer_id not in holders.get(image, ())
                        and sources.covers(info.relay_have.get(image, 0), held.get(image, 0))
                    ):
                        relays.setdefault(image, []).append(peer_id)

    given_up = [i for i in missing if i in failures and failures[i].attempts >= max_attempts]
    # A wanted image that another wanted image's chain brings along waits for that pull.
    covered: set[str] = set()
    for image in missing:
        if image in in_flight or (image in holders and image not in failures):
            covered.update(ancestors(image, metas))
    candidates = [
        i
        for i in missing
        if i not in in_flight
        and i not in covered
        and i in holders
        and (i not in failures or failures[i].retry_at <= now)
    ]
    # Oldest first: base images before what is built on them, so chains arrive in order.
    candidates.sort(key=lambda i: (metas[i].created if i in metas else 0, i))

    pulls: list[Pull] = []
    budget = max(0, max_pulls - len(in_flight))
    sent: dict[str, int] = {}  # pulls this node already runs or plans per source: load not yet gossiped
    for source in in_flight.values():
        sent[source] = sent.get(source, 0) + 1
    for image in candidates[:budget]:
        bad = failures[image].bad_sources if image in failures else set()
        options = [
            sources.Candidate(p, peers[p].rtt, peers[p].uploads, peers[p].zone, relay=False)
            for p in holders[image]
        ]
        options += [
            sources.Candidate(p, peers[p].rtt, peers[p].uploads, peers[p].zone, relay=True)
            for p in relays.get(image, ())
        ]
        best = sources.rank(
            image,
            options,
            me=me,
            zone=zone,
            bad=bad,
            penalties=penalties or {},
            now=now,
            extra_uploads=sent,
        )[0]
        sent[best.peer] = sent.get(best.peer, 0) + 1
        size = metas[image].size if image in metas else 0
        pulls.append(
            Pull(image, best.peer, tuple(sorted(want_tags[image])), size, best.relay, held.get(image, 0))
        )
    return Plan(pulls, tags, missing, given_up, winning, kept)


def _built_here_newer(
    mine: str | None, winner: str, metas: Mapping[str, ImageMeta], brought: Collection[str] | None
) -> bool:
    """The tag's image here, `mine`, was built here (not brought) and is newer than the winner,
    or as new: creation times have one-second resolution, so a rebuild in the same second as the
    mesh's image cannot be told apart by age, and the host's own build is what its user just made."""
    if mine is None or mine == winner or (brought is not None and mine in brought):
        return False
    return mine in metas and winner in metas and metas[mine].created >= metas[winner].created

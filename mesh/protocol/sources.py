"""From whom to pull an image, and when a source hands a requester on to a relay. Pure.

A burst (an autoscaler adding hosts at once) must become a tree, not a star: the first holder's
uplink cannot carry every copy. Two rules make it one, with no tracker, and a third keeps it
correct when receivers hold part of the image already:

1. The receiver's choice (`rank`). Every live holder of the image, and every live peer that is
   still receiving it and can relay it (cut-through, docs/protocol.md) with a stream that covers
   this pull's `have` (3 below), is a candidate. Each gets a cost in "shares of an uplink",
   lowest first:

       cost = (1 + uploads) * zone_factor + rtt / RTT_PER_SHARE + relay + penalties

   - `uploads` is the peer's gossiped load figure (uploads in flight plus queued): one more
     receiver gets about 1/(uploads + 1) of its uplink. Pulls this plan has already sent to a peer
     count too, so one plan does not pile onto one source.
   - `zone_factor` is ZONE_FACTOR when this node has a zone and the peer is not in it, else 1.
   - `relay` is RELAY_COST for a peer that is still receiving: it is bounded by its own inflow and
     may yet fail, so an idle holder beats an idle relay, but a busy holder does not.
   - penalties: FAILED_HERE for a peer that already failed this image (`bad`), and PER_FAILURE per
     recent failure of the peer with any image while its penalty lasts (`Penalty.until > now`).
   Ties go to a hash of (this node, peer, image), so receivers that decide at the same moment
   on the same information spread over equal sources instead of all taking the first.

2. The source's hand-off (`relay_to`). Gossip lags a burst by a fraction of a second, so receivers
   deciding together still pick the same holder. A node that is already streaming an image to a
   peer that relays it (same image store, a stream that covers the request's `have`, see 3,
   hand-off allowed) may answer a further request for that image with "ask that relay" instead
   of splitting its uplink. The request
   carries `hops`, the hand-offs its receiver has followed in this attempt, and the node decides
   on that and on what it sends now:

   - `hops < CHAIN_DEPTH`: hand on to the newest relaying downstream. Relays do the same, so a
     small burst becomes a chain: each hop gets a whole uplink, and with cut-through each hop
     adds about one round trip and one socket read's worth of bytes, not one image time.
   - `hops >= CHAIN_DEPTH`: serve the request here while fewer than BRANCH relaying downstreams
     take the image from this node; past that, hand it to the downstream this node has handed
     the fewest requests so far (`routed`, a count the node keeps per stream). Every request
     handed to a child ends up in that child's subtree, so the count stands for the subtree's
     size, and the fewest-routed child keeps the tree balanced without any node knowing the
     whole of it. A large burst becomes a chain of CHAIN_DEPTH hops ending in a BRANCH-ary
     tree of depth about log_BRANCH(N): each tree node's uplink is split BRANCH ways, but the
     depth stays small where a chain of N would add a hop per receiver, and the receiver's hop
     cap (mesh.node.puller.MAX_HANDOFFS) is never reached.

   A chain for small bursts because splitting an uplink halves every stream below the split:
   with 4 receivers a chain takes about one image time, a tree about two.

3. Deltas (`have`). A receiver that holds an image's first layers (the base image, an older
   build) asks with `have`, the count of leading layers it holds by chain ID, and the source
   leaves those layers out of the stream. A relay's spool of such a stream is tagged with that
   `have`, and it can serve a requester only when the requester's `have` is at least the spool's:
   `have` is a prefix count, so then every layer the requester lacks is in the stream; a
   requester with less would get a stream without a layer it lacks. So a relay is a candidate
   (`covers`) and a hand-off target only for such requesters; a full stream (`have` 0) covers
   every one. The relay itself refuses any other (mesh/node/peer_api.py), whatever gossip said.
   In a burst of mixed held sets that would make the holder a star again: receivers arriving
   with less and less (an older build, then the base, then nothing) each find no relay that
   covers them, and each takes another copy of the holder's uplink. So a holder that already
   streams the image to a relay that does not cover a relaying requester sends that one the
   image in full (`cut_for`): its spool covers every later requester, whatever it holds, and the
   holder sends at most two copies. It resends the requester what it holds (the base: 8 MB of
   72, say); in a burst where all hold the same the first relay covers all, and nothing changes.
   Two copies are still one too many when a base holder reaches the holder first, so the first
   stream is widened (`widen_for`): cut by the least `have` among the live peers that lack the
   image (as their gossiped holdings show), when what that adds is at most WIDEN_MAX_EXTRA of
   the stream. Its spool then covers them all, and the holder sends one copy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

ZONE_FACTOR = 4.0
"""A peer outside this node's zone costs as much as one carrying three more uploads."""
RTT_PER_SHARE = 0.05
"""50 ms of round trip weighs as much as one more upload (inside a LAN, RTT barely counts)."""
RELAY_COST = 0.5
FAILED_HERE = 100.0
PER_FAILURE = 10.0
CHAIN_DEPTH = 9
"""Hand-offs a request follows as a chain before nodes start branching (see the docstring): a
burst of up to ten hosts, an autoscaler's usual step, is one chain at a whole uplink per hop."""
BRANCH = 2
"""Relaying downstreams a node serves itself once a request has followed CHAIN_DEPTH hand-offs."""


@dataclass(frozen=True, slots=True)
class Penalty:
    """A peer's recent failures (any image) and until when they lower its preference."""

    failures: int
    until: float


def penalise(previous: Penalty | None, now: float, base: float, cap: float) -> Penalty:
    """One more failure from a peer: the penalty lasts base * 2^(failures-1), at most `cap` seconds."""
    failures = (previous.failures if previous is not None and previous.until > now else 0) + 1
    return Penalty(failures, now + min(cap, base * 2 ** (failures - 1)))


@dataclass(frozen=True, slots=True)
class Candidate:
    """One possible source for one image, as `rank` sees it."""

    peer: str
    rtt: float | None
    uploads: int
    zone: str
    relay: bool


def cost(
    c: Candidate, *, zone: str, bad: bool, penalty: Penalty | None, now: float, extra_uploads: int = 0
) -> float:
    zone_factor = ZONE_FACTOR if zone and c.zone != zone else 1.0
    total = (1 + c.uploads + extra_uploads) * zone_factor
    total += (c.rtt / RTT_PER_SHARE) if c.rtt is not None else 1.0  # unmeasured: as if 50 ms
    if c.relay:
        total += RELAY_COST
    if bad:
        total += FAILED_HERE
    if penalty is not None and penalty.until > now:
        total += PER_FAILURE * penalty.failures
    return total


def spread(me: str, peer: str, image: str) -> bytes:
    """The tie-breaker: differs per receiver, so equal sources are shared out, and stable."""
    return hashlib.sha256(f"{me}\0{peer}\0{image}".encode()).digest()[:8]


def rank(
    image: str,
    candidates: Iterable[Candidate],
    *,
    me: str,
    zone: str,
    bad: Iterable[str],
    penalties: Mapping[str, Penalty],
    now: float,
    extra_uploads: Mapping[str, int] | None = None,
) -> list[Candidate]:
    """Candidates best first (see the module docstring for the cost)."""
    bad = set(bad)
    extra = extra_uploads or {}
    return sorted(
        candidates,
        key=lambda c: (
            cost(
                c,
                zone=zone,
                bad=c.peer in bad,
                penalty=penalties.get(c.peer),
                now=now,
                extra_uploads=extra.get(c.peer, 0),
            ),
            spread(me, c.peer, image),
        ),
    )


@dataclass(frozen=True, slots=True)
class LeftOut:
    """What a holder's stream of an image leaves out for a requester: `drop`, the layers (diff
    IDs) whose files it omits, and `left`, the count of leading layers every one of them is
    among, which the stream is tagged with (X-Cachemesh-Have) and a relay of it serves by."""

    drop: frozenset[str]
    left: int


def left_out(layers: Sequence[str], have: int, *, possible: bool) -> LeftOut:
    """The delta a holder sends a requester holding the first `have` of `layers` (bottom first).
    A layer that recurs above `have` stays in (the requester's engine needs its files there), and
    lowers `left`; a format that takes no delta (`possible` false) leaves nothing out: left 0."""
    drop = frozenset(layers[:have]) - frozenset(layers[have:]) if possible else frozenset()
    left = max((i + 1 for i, layer in enumerate(layers) if layer in drop), default=0)
    return LeftOut(drop, left)


def cut_for(image: str, store: str, have: int, *, relays: bool, sending: Sequence[Downstream]) -> int:
    """The `have` a holder cuts its stream to a requester by (`left_out`): the requester's own,
    or 0, a full stream, when the requester relays and this node already streams the image to a
    relay of that store whose stream does not cover the requester (rule 3's burst case, the module
    docstring). Without it each requester holding less than every relay so far (an older build,
    then the base, then nothing) costs the holder another copy of its uplink; a full stream covers
    every later one, so a holder sends at most two copies to the first receivers of a burst."""
    behind = any(
        out.image == image and out.store == store and out.relays and not covers(out.have, have)
        for out in sending
    )
    return 0 if relays and behind else have


WIDEN_MAX_EXTRA = 0.25
"""A first stream is widened only when the layers it adds are at most this share of its bytes:
resending a small base to one receiver saves the holder a second copy; resending a large one to
every receiver of a burst (they all get the first relay's stream) would cost more than it saves."""


def widen_for(
    have: int, lacking: Iterable[int], prefix_bytes: Mapping[int, int], *, relays: bool, first: bool
) -> int:
    """The `have` to cut the first stream of an image to a relaying requester by: the least
    `have` among `lacking` (what the live peers that lack the image hold of it, by their
    gossiped holdings) whose added layers cost at most WIDEN_MAX_EXTRA of the stream, else the
    requester's own. `prefix_bytes` maps a count of leading layers to their bytes, where known
    (0 to 0, every layer to the image's size); without both ends known nothing is widened. Not
    the first stream, or a requester that does not relay: its own `have`."""
    if not relays or not first or have == 0:
        return have
    total = max(prefix_bytes.items(), default=(0, 0))[1]
    held = prefix_bytes.get(have)
    if held is None or total <= held:
        return have
    for target in sorted({h for h in lacking if 0 <= h < have}):
        base = prefix_bytes.get(target)
        if base is not None and held - base <= WIDEN_MAX_EXTRA * (total - held):
            return target
    return have


def common_prefix(a: Sequence[str], b: Sequence[str]) -> int:
    """How many leading layers two layer lists share: what a peer holding an image of layers `b`
    holds of one of layers `a` (equal diff IDs in order are equal chain IDs)."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def covers(relay_have: int, have: int) -> bool:
    """Whether a relay whose stream leaves out its first `relay_have` layers can serve a
    requester that holds the first `have`: every layer the requester lacks is in the stream."""
    return relay_have <= have


@dataclass(frozen=True, slots=True)
class Downstream:
    """A stream this node is sending now: to whom, of what, for which store, whether the
    receiver relays it (spools it and serves it to others as it arrives), and the `have` it
    asked with: its spool leaves out at most those leading layers, and serves only requesters
    that hold at least as many (`covers`)."""

    peer: str
    image: str
    store: str
    relays: bool
    have: int = 0


def relay_to(
    image: str,
    store: str,
    requester: str,
    sending: Sequence[Downstream],
    *,
    have: int = 0,
    hops: int = 0,
    routed: Mapping[Downstream, int] | None = None,
) -> Downstream | None:
    """The stream whose receiver a request for `image` from `requester` (whose engine uses
    `store` and holds the image's first `have` layers) is handed to, or None to serve it here.
    `sending` is this node's streams now, oldest first; only those whose relay covers `have` are
    hand-off targets. `hops` the hand-offs the request has followed in this attempt; `routed` how
    many requests this node has handed to each of its downstreams so far (absent: none). The
    caller counts the answer in `routed`. Rule: the module docstring."""
    relays = [
        out
        for out in sending
        if out.image == image
        and out.relays
        and out.store == store
        and out.peer != requester
        and covers(out.have, have)
    ]
    if not relays:
        return None
    if hops < CHAIN_DEPTH:
        # the newest is the chain's far end as this node knows it: the requester joins behind it
        return relays[-1]
    if len(relays) < BRANCH:
        return None
    counts = routed or {}
    # fewest handed so far; among equals the oldest, which is furthest ahead
    return min(enumerate(relays), key=lambda pair: (counts.get(pair[1], 0), pair[0]))[1]


def worth_relaying(image: str, source: str, others: Mapping[str, Collection[str]]) -> bool:
    """Whether a pull of `image` from `source` should be spooled, to be served on as it arrives.

    Only when some live peer other than the source lacks the image too (`others`: each live
    peer's holdings): otherwise nobody can ask this node for it before it holds the image whole,
    and the spool would only write the image to disk a second time while the engine loads it."""
    return any(image not in held for peer, held in others.items() if peer != source)

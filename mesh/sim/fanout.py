"""Fan-out of one image to many new hosts at once, by simulation: the real planner chooses the
sources, the real hand-off rule (mesh.protocol.sources.relay_to) answers requests, the real delta
rules decide what each stream carries and whom a relay may serve, and links share bandwidth
fairly (mesh.sim.links). Deterministic: same parameters, same run.

The scene: one node holds an image, a list of layers (`layers`, sizes bottom first); `receivers`
new nodes want it at the same moment (an autoscaler's burst). Each receiver holds, before the
burst, one of HELD_SETS (`held`, taken in turn): nothing, the base (the image's bottom layer), or
an older build (every layer of the image but the top one, and another top). Every node has equal
links (`bandwidth` bytes/s up and down). What happens, in simulated time:

- Each receiver's `have` is the count of the image's leading layers it holds, by chain ID
  (mesh.engine.base.held_prefix, as the node's puller counts it). It runs
  `mesh.protocol.planner.plan` with that `have` on its view of the mesh: who holds the image, who
  is receiving it and relays it, and what each relay's stream leaves out, each one's uploads (in
  flight plus queued), its RTT to each. That view is the truth as it was `gossip_lag` seconds
  ago: the nodes' status reaches the others by gossip.
- Its request reaches the source after one one-way latency. The source applies
  `sources.relay_to` to its streams in flight (each tagged with what it leaves out), the
  request's `have`, the hand-offs the request has followed and the requests it has handed to
  each downstream (the counts the node keeps); if it hands the request on, the receiver asks
  that relay (one more round trip), and so on, as the node's puller does: at most
  `max_handoffs` times in one attempt, then the relay asked serves it itself. So the burst
  builds the node's shape: a chain of sources.CHAIN_DEPTH hops, then a binary tree, among the
  streams that cover each request. A source sends `max_uploads` streams at once and queues up
  to `upload_queue` more in order; past that it turns the request away, and the receiver, as its
  puller does, counts a failed attempt (the planner then ranks that source last), waits the
  backoff (at least the Retry-After) and plans again, asking sources to serve it themselves.
- What a stream carries, as the node: a holder leaves out the layers the requester holds
  (`sources.left_out`, the rule mesh/node/peer_api.py applies; this is the graph store, which
  takes any delta), and tags the stream with `left`; a relay serves the bytes of its own spool,
  tagged with its stream's `left`, and only to a requester it covers (`sources.covers`), any
  other it refuses (404: a failed attempt, as in the node). The simulator checks, apart from
  those rules, that every stream carries every layer its receiver lacks (`ServedShort`
  otherwise) and that every receiver ends with every layer.
- A receiver relays the image as it arrives (cut-through) when `relay` is on and some peer other
  than its source lacks the image (`sources.worth_relaying`): it can forward only what has
  reached it, less one socket read (`relay_chunk`: it passes on what it has received whole), so
  each relay hop adds about one read's time and one one-way latency.

The result is the time from the burst until every receiver holds the image, and the ratio to the
time one receiver alone takes (`fanout_ratios`: one receiver holding the base, or the held set of
the case). A star (every receiver served by the first holder) is N times.
"""

from __future__ import annotations

import bisect
import heapq
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mesh.config import Config
from mesh.engine.base import chain_ids, held_prefix
from mesh.protocol import planner, sources
from mesh.protocol.formulas import backoff
from mesh.protocol.wire import ImageMeta
from mesh.sim.links import INF, Flow, share

_LAN = Config.lan()
IMAGE = "sha256:" + "f" * 64
TAG = "app:latest"
STORE = "graph"
EPS = 1e-6  # bytes: below this a transfer counts as done
MB = 1_000_000

LAYERS = (8 * MB, 48 * MB, 16 * MB)
"""The burst's image, bottom first: an 8 MB base, then 64 MB of new layers (dependencies, then
the code built on them), as an autoscaler's new hosts meet it: the base is already there."""
HELD_SETS = ("nothing", "base", "older")
"""What a receiver may hold before a burst: nothing; the base (the image's bottom layer); an older
build of the image (every layer but the top one, and an older top)."""
MIXED = ("nothing", "base", "older", "base")
"""The mixed burst: receivers hold these in turn (scripts/bench_fanout.py --held mixed)."""
ONE_LAYER: dict[str, Any] = {"layers": (64 * MB,), "held": ("nothing",)}
"""The case measured before held sets: one 64 MB layer, receivers holding nothing of it."""


class ServedShort(AssertionError):
    """A receiver was sent a stream that leaves out a layer it lacks: the rules let through a
    stream its engine could not load (never, in any run so far)."""


@dataclass(frozen=True, slots=True)
class FanoutParams:
    receivers: int
    layers: tuple[int, ...] = LAYERS
    """The image's layers, in bytes, bottom first."""
    held: tuple[str, ...] = ("base",)
    """What receivers hold before the burst (HELD_SETS), in turn: receiver i holds
    held[(i - 1) % len(held)]."""
    bandwidth: float = 25_000_000.0
    """Every node's uplink and downlink, bytes/s (200 Mbit/s)."""
    relay: bool = True
    """Receivers relay the image as it arrives (cut-through) and announce it."""
    relay_chunk: int = 1 << 18
    """What a relay must hold whole before it forwards it: one socket read. The node forwards
    whatever has arrived: the client reads the stream with StreamReader.read(1 MiB), which returns
    what is buffered, at most 1 MiB, without waiting for more; each piece is appended to the
    spool, and the spool's readers send what is written (mesh/node/relay.py Spool.read). A
    socket read delivers at most 256 KiB (asyncio's selector transport; uvloop, which the node
    runs, 256,000 bytes), so this is the most a relay waits for, not the mean."""
    gossip_lag: float = 1.0
    """Seconds until a change in a node's status (holds, relays, uploads) is in the others' views
    (about five gossip rounds at LAN timings)."""
    max_uploads: int = _LAN.max_transfers_out
    """Streams a node sends at once (--max-uploads); more wait in its upload queue."""
    upload_queue: int = _LAN.upload_queue
    """Requests that may wait for an upload slot (--upload-queue); past that: busy, retry later."""
    max_handoffs: int = 32
    """Hand-offs a pull follows in one attempt before it asks the last relay to serve it
    (mesh.node.puller.MAX_HANDOFFS)."""
    busy_retry_after: float = 2.0
    """What a source with a full queue asks a requester to wait (mesh.net.server.BUSY_RETRY_AFTER)."""
    failover_pause: float = 0.5
    """The least wait before a failed pull is tried again (mesh.node.puller.FAILOVER_PAUSE)."""
    retry_backoff: float = _LAN.retry_backoff
    retry_backoff_max: float = _LAN.retry_backoff_max
    latency: float = 0.0005
    """Base one-way latency, seconds; plus up to `latency_spread` by distance (as in simnet)."""
    latency_spread: float = 0.004
    seed: int = 1

    @property
    def size(self) -> int:
        return sum(self.layers)


def layer_ids(count: int) -> tuple[str, ...]:
    """The image's layers (diff IDs), bottom first."""
    return tuple("sha256:" + f"{0xA000 + i:064x}" for i in range(count))


OLDER_TOP = "sha256:" + "b" * 64
"""The top layer of the older build: other code on the same lower layers."""


def held_chains(held: str, layers: tuple[str, ...]) -> frozenset[str]:
    """The chain IDs an engine holding `held` (one of HELD_SETS) has, for an image of `layers`."""
    if held == "nothing":
        return frozenset()
    if held == "base":
        if len(layers) < 2:
            raise ValueError("a base needs an image of at least two layers")
        return frozenset(chain_ids(layers[:1]))
    if held == "older":
        return frozenset(chain_ids((*layers[:-1], OLDER_TOP)))
    raise ValueError(f"held set {held!r}: one of {', '.join(HELD_SETS)}")


@dataclass(slots=True)
class _Stream:
    """One image stream from src to dst (a Flow for the link model, plus its progress), the layers
    it carries (by position) and `left`, what it is tagged with (X-Cachemesh-Have)."""

    flow: Flow
    started: float
    seq: int
    size: float
    carried: frozenset[int]
    downstream: sources.Downstream
    sent: float = 0.0

    @property
    def left(self) -> int:
        return self.downstream.have


@dataclass(slots=True)
class _Node:
    id: str
    position: float
    held: str = "nothing"
    have: int = 0
    """Leading layers of the image held, by chain ID: what its pulls ask with."""
    layers: set[int] = field(default_factory=set)
    """The image's layers (by position) this node holds: its chain ID's prefix, then what came."""
    received: float = 0.0
    holder_since: float = INF
    relaying_since: float = INF
    inflow: _Stream | None = None
    spool: _Stream | None = None
    """The stream this node relays (spools), kept after it ends: what its announcements say."""
    outflows: list[_Stream] = field(default_factory=list)
    queue: list[str] = field(default_factory=list)
    uploads_log: list[tuple[float, int]] = field(default_factory=lambda: [(-INF, 0)])
    done_at: float | None = None
    lag: float = 0.0
    """Bytes what it relays stays behind what its source has sent: the chunk it must hold whole,
    and what is still on the wire to it (at most the link's rate times the one-way latency)."""
    routed: dict[sources.Downstream, int] = field(default_factory=dict)
    """Requests this node has handed to each of its downstreams (sources.relay_to's `routed`)."""
    failure: planner.Failure | None = None  # this receiver's failed attempts, as the puller keeps them
    penalties: dict[str, sources.Penalty] = field(default_factory=dict)
    busy: int = 0  # requests of this receiver a full queue turned away
    refused: int = 0  # requests of this receiver a relay refused (it did not cover them)


@dataclass
class FanoutResult:
    params: FanoutParams
    seconds: float
    """From the burst until the last receiver holds the image."""
    per_receiver: list[float]
    sources: dict[str, int]
    """Source -> receivers it served."""
    handoffs: int
    depth: int
    """The longest chain of relays from the first holder to a receiver."""
    busy: int = 0
    """Requests a full upload queue turned away (each retried after the backoff)."""
    refused: int = 0
    """Requests a relay refused because its stream did not cover them (each a failed attempt)."""
    parent: dict[str, str] = field(default_factory=dict)
    """Receiver -> the node whose stream it loaded."""
    streamed: dict[str, float] = field(default_factory=dict)
    """Receiver -> the bytes of the stream it loaded."""
    left: dict[str, int] = field(default_factory=dict)
    """Receiver -> the `left` of the stream it loaded: every layer it left out is among the first
    that many (sources.covers(left, have) says the receiver held them all)."""
    have: dict[str, int] = field(default_factory=dict)
    """Receiver -> the leading layers it held before the burst, by chain ID."""
    whole: dict[str, bool] = field(default_factory=dict)
    """Receiver -> whether it ended holding every layer of the image."""

    def summary(self) -> dict[str, Any]:
        return {
            "receivers": self.params.receivers,
            "seconds": round(self.seconds, 3),
            "median_seconds": round(sorted(self.per_receiver)[len(self.per_receiver) // 2], 3),
            "served_by_first_holder": self.sources.get("n0", 0),
            "handoffs": self.handoffs,
            "depth": self.depth,
            "busy": self.busy,
            "refused": self.refused,
        }


class FanoutSim:
    def __init__(self, params: FanoutParams) -> None:
        self.p = params
        rng = random.Random(params.seed)
        self.nodes = {f"n{i}": _Node(f"n{i}", rng.random()) for i in range(params.receivers + 1)}
        self.layer_ids = layer_ids(len(params.layers))
        chains = chain_ids(self.layer_ids)
        everything = set(range(len(params.layers)))
        origin = self.nodes["n0"]
        origin.received, origin.holder_since, origin.done_at = float(params.size), -INF, 0.0
        origin.layers, origin.have, origin.held = set(everything), len(everything), "the image"
        for i in range(1, params.receivers + 1):
            node = self.nodes[f"n{i}"]
            node.held = params.held[(i - 1) % len(params.held)]
            engine = held_chains(node.held, self.layer_ids)
            node.have = held_prefix(self.layer_ids, engine)
            node.layers = {n for n, chain in enumerate(chains) if chain in engine}
        self.meta = ImageMeta(IMAGE, "", self.layer_ids, params.size, 1_700_000_000)
        self.now = 0.0
        # (at, seq, kind, receiver, source, hand-offs so far in this attempt)
        self.events: list[tuple[float, int, str, str, str, int]] = []
        self._seq = 0
        self.served: dict[str, int] = {}
        self.parent: dict[str, str] = {}
        self.loaded: dict[str, _Stream] = {}
        self.handoffs = 0
        self.synced_at, self.dirty = 0.0, True
        self.up = {n: params.bandwidth for n in self.nodes}
        self.down = dict(self.up)

    # --- the view a receiver plans on ------------------------------------------------------

    def owd(self, a: str, b: str) -> float:
        pa, pb = self.nodes[a].position, self.nodes[b].position
        return self.p.latency + self.p.latency_spread * abs(pa - pb)

    def _uploads_at(self, node: _Node, at: float) -> int:
        log = node.uploads_log
        return log[bisect.bisect_right(log, (at, 1 << 62)) - 1][1]

    def choose(self, me: str) -> planner.Pull | None:
        """The real planner, on this receiver's view (the truth `gossip_lag` seconds ago)."""
        as_of = self.now - self.p.gossip_lag
        remote: dict[str, Mapping[str, tuple[str, ...]]] = {}
        peers: dict[str, planner.Peer] = {}
        for node in self.nodes.values():
            if node.id == me:
                continue
            holds = node.holder_since <= as_of
            relays = node.relaying_since <= as_of and not holds
            if not holds and not relays:
                continue  # holds nothing of the image: no part in the choice
            if holds:
                remote[node.id] = {IMAGE: (TAG,)}
            left = node.spool.left if relays and node.spool is not None else 0
            peers[node.id] = planner.Peer(
                node.id,
                True,
                2 * self.owd(me, node.id),
                uploads=self._uploads_at(node, as_of),
                receiving={IMAGE: STORE} if relays else {},
                relay_have={IMAGE: left} if left else {},
            )
        receiver = self.nodes[me]
        plan = planner.plan(
            local={},
            remote=remote,
            metas={IMAGE: self.meta},
            peers=peers,
            in_flight={},
            failures={IMAGE: failure} if (failure := receiver.failure) else {},
            evicted={},
            max_pulls=2,
            max_attempts=5,
            now=self.now,
            me=me,
            store=STORE if self.p.relay else "",
            penalties=receiver.penalties,
            have={IMAGE: receiver.have},
        )
        return plan.pulls[0] if plan.pulls else None

    def _spools(self, me: str, source: str) -> bool:
        """Whether `me` spools its pull from `source` to relay it: relaying is on and, in its view,
        some other live peer lacks the image (the puller's rule, sources.worth_relaying)."""
        if not self.p.relay:
            return False
        as_of = self.now - self.p.gossip_lag
        holding, lacking = {IMAGE}, frozenset[str]()
        others = {
            n.id: holding if n.holder_since <= as_of else lacking for n in self.nodes.values() if n.id != me
        }
        return sources.worth_relaying(IMAGE, source, others)

    # --- events ------------------------------------------------------------------------------

    def _at(self, at: float, kind: str, node: str, target: str = "", hops: int = 0) -> None:
        self._seq += 1
        heapq.heappush(self.events, (at, self._seq, kind, node, target, hops))

    def _request(self, receiver: str, source: str, hops: int) -> None:
        """A request from `receiver` reaches `source`: hand it on, serve it, queue it, or turn it
        away (busy). As the node: hand-offs are allowed on a first attempt only, and for at most
        `max_handoffs` hops; then the source asked serves it itself (or refuses it, a relay that
        does not cover it, once an upload slot is its: mesh.net.server, then peer_api)."""
        src, rcv = self.nodes[source], self.nodes[receiver]
        handoff = rcv.failure is None and hops < self.p.max_handoffs
        if handoff:
            sending = [s.downstream for s in sorted(src.outflows, key=lambda s: s.seq)]
            chosen = sources.relay_to(
                IMAGE, STORE, receiver, sending, have=rcv.have, hops=hops, routed=src.routed
            )
            if chosen is not None:
                src.routed[chosen] = src.routed.get(chosen, 0) + 1
                self._hand_on(source, receiver, chosen.peer, hops)
                return
        if len(src.outflows) < self.p.max_uploads:
            self._start(source, receiver)
        elif len(src.queue) < self.p.upload_queue:
            src.queue.append(receiver)
            self._log_uploads(src)
        else:
            self._at(self.now + self.owd(source, receiver), "busy", receiver, source)

    def _hand_on(self, source: str, receiver: str, relay: str, hops: int) -> None:
        self.handoffs += 1
        # the answer goes back, then the receiver asks the relay at once
        at = self.now + self.owd(source, receiver) + self.owd(receiver, relay)
        self._at(at, "request", receiver, relay, hops + 1)

    def _busy(self, receiver: str, source: str) -> None:
        """A full queue turned the request away: the puller records a failure (no penalty) and
        plans again after the backoff, at least the Retry-After."""
        node = self.nodes[receiver]
        node.busy += 1
        self._failed(node, source, self.p.busy_retry_after)

    def _refused(self, receiver: str, source: str) -> None:
        """A relay refused the request (404, its stream does not cover it): a failed attempt, the
        source penalised, as the puller does (mesh/node/puller.py _failed)."""
        node = self.nodes[receiver]
        node.refused += 1
        node.penalties[source] = sources.penalise(
            node.penalties.get(source), self.now, self.p.retry_backoff * 4, self.p.retry_backoff_max
        )
        self._failed(node, source, 0.0)

    def _failed(self, node: _Node, source: str, retry_after: float) -> None:
        failure = node.failure = node.failure or planner.Failure(0, 0.0)
        failure.attempts += 1
        failure.bad_sources.add(source)
        delay = backoff(failure.attempts - 1, self.p.retry_backoff, self.p.retry_backoff_max)
        failure.retry_at = self.now + max(delay, self.p.failover_pause, retry_after)
        self._at(failure.retry_at, "plan", node.id)

    def _start(self, source: str, receiver: str) -> None:
        """An upload slot serves the request: a holder's save, leaving out what the receiver holds;
        a relay's spool, to a receiver it covers; any other receiver is refused."""
        self._sync()
        src, dst = self.nodes[source], self.nodes[receiver]
        relays = self._spools(receiver, source)
        if src.done_at is not None:
            sending = [s.downstream for s in sorted(src.outflows, key=lambda s: s.seq)]
            have = sources.cut_for(IMAGE, STORE, dst.have, relays=relays, sending=sending)
            # The node's first-stream widening, with gossip showing what each receiver holds (in a
            # fleet that shares its base images) and the holder knowing the size of each leading run of
            # layers (the node knows those of the images it holds: the base, older builds).
            wanting = [n.have for n in self.nodes.values() if n.done_at is None and n.id != receiver]
            prefix = {n: sum(self.p.layers[:n]) for n in range(len(self.p.layers) + 1)}
            have = sources.widen_for(have, wanting, prefix, relays=relays, first=not sending)
            cut = sources.left_out(self.layer_ids, have, possible=True)
            carried = frozenset(i for i, layer in enumerate(self.layer_ids) if layer not in cut.drop)
            size = float(sum(self.p.layers[i] for i in carried))
            downstream = sources.Downstream(receiver, IMAGE, STORE, relays, cut.left)
        elif src.inflow is not None and sources.covers(src.inflow.left, dst.have):
            spool = src.inflow
            carried, size = spool.carried, spool.size
            downstream = sources.Downstream(receiver, IMAGE, STORE, relays, spool.left)
        else:
            self._at(self.now + self.owd(source, receiver), "refused", receiver, source)
            return
        lacking = set(range(len(self.p.layers))) - dst.layers
        if not lacking <= carried:
            raise ServedShort(
                f"{receiver} (holds {dst.held}, have {dst.have}) was sent layers {sorted(carried)} by "
                f"{source}, without {sorted(lacking - carried)} it lacks"
            )
        self._seq += 1
        stream = _Stream(Flow(source, receiver), self.now, self._seq, size, carried, downstream)
        src.outflows.append(stream)
        dst.inflow = stream
        if relays:
            dst.spool = stream
            dst.relaying_since = min(dst.relaying_since, self.now)
        dst.lag = self.p.relay_chunk + self.p.bandwidth * self.owd(source, receiver)
        self.parent[receiver] = source
        self.loaded[receiver] = stream
        self.served[source] = self.served.get(source, 0) + 1
        self._log_uploads(src)

    def _serve_queue(self, node: _Node) -> None:
        while node.queue and len(node.outflows) < self.p.max_uploads:
            self._start(node.id, node.queue.pop(0))
        self._log_uploads(node)

    def _log_uploads(self, node: _Node) -> None:
        count = len(node.outflows) + len(node.queue)
        if node.uploads_log[-1][1] != count:
            if node.uploads_log[-1][0] == self.now:
                node.uploads_log[-1] = (self.now, count)
            else:
                node.uploads_log.append((self.now, count))

    def _finish(self, stream: _Stream) -> None:
        self._sync()
        src, dst = self.nodes[stream.flow.src], self.nodes[stream.flow.dst]
        src.outflows.remove(stream)
        # as the node: its count for a downstream lasts as long as the stream to it
        src.routed.pop(stream.downstream, None)
        dst.inflow = None
        dst.received = stream.size
        dst.layers |= stream.carried
        # the last byte is on the wire for one more one-way latency
        dst.holder_since = dst.done_at = self.now + self.owd(src.id, dst.id)
        self._serve_queue(src)

    # --- the fluid model between events --------------------------------------------------------

    def _streams(self) -> list[_Stream]:
        return sorted((s for n in self.nodes.values() for s in n.outflows), key=lambda s: s.seq)

    def _available(self, stream: _Stream) -> float:
        """What the stream's source can send so far: all of it, or, for a relay, what has reached it
        less the chunk it is still receiving whole (its spool holds the same bytes as the stream)."""
        src = self.nodes[stream.flow.src]
        if src.done_at is not None:
            return stream.size
        return max(0.0, src.received - src.lag)

    def _rates(self, streams: list[_Stream]) -> None:
        for s in streams:
            src = self.nodes[s.flow.src]
            s.flow.follows, s.flow.cap = None, INF
            available = self._available(s)
            if available - s.sent <= EPS and available < s.size:
                # caught up with its relay: no faster than the relay receives, and not at all
                # until the relay holds a whole chunk more than it has passed on
                if src.inflow is None or available <= 0:
                    s.flow.cap = 0.0
                else:
                    s.flow.follows = src.inflow.flow
        share((s.flow for s in streams), self.up, self.down)

    def _next_change(self, streams: list[_Stream]) -> float:
        """Seconds until a stream completes, or one catches up with its relay (or can move again)."""
        soonest = INF
        for s in streams:
            rate = s.flow.rate
            if rate > 0:
                soonest = min(soonest, (s.size - s.sent) / rate)
            available = self._available(s)
            if available >= s.size or s.flow.follows is not None:
                continue
            src = self.nodes[s.flow.src]
            inflow = src.inflow.flow.rate if src.inflow is not None else 0.0
            gap = available - s.sent
            if gap > EPS and rate > inflow:
                soonest = min(soonest, gap / (rate - inflow))  # catches up
            elif gap <= EPS and inflow > 0:
                # stalled until the relay holds more than it has sent on
                soonest = min(soonest, (s.sent + src.lag - src.received) / inflow + 1e-9)
        # At least a nanosecond: past some hundreds of simulated seconds a smaller step would not
        # move the clock (float resolution), and the run would stand still.
        return max(soonest, 1e-9)

    def _sync(self) -> None:
        """Move every stream on to `now` at the rates set at the last change. Streams go oldest
        first, so a relay's inflow has moved before what it forwards is held to it (against
        rounding drift)."""
        dt = self.now - self.synced_at
        if dt > 0:
            for s in self._streams():
                s.sent = min(s.size, s.sent + s.flow.rate * dt, self._available(s))
                self.nodes[s.flow.dst].received = s.sent
        self.synced_at = self.now
        self.dirty = True

    # --- the run -----------------------------------------------------------------------------

    def run(self) -> FanoutResult:
        for node in self.nodes.values():
            if node.id != "n0":
                self._at(0.0, "plan", node.id)
        waiting = self.p.receivers
        self.synced_at, self.dirty = 0.0, True
        change_at = INF
        while waiting:
            if self.dirty:
                # Rates hold until a stream starts, ends, or catches up with its relay; hand-offs
                # and plans in between change none of them, so they cost no new allocation.
                streams = self._streams()
                self._rates(streams)
                change_at = self.now + self._next_change(streams)
                self.dirty = False
            event_at = self.events[0][0] if self.events else INF
            if change_at == INF and event_at == INF:
                raise RuntimeError(f"fan-out stuck at {self.now:.3f}s with {waiting} receivers waiting")
            if change_at <= event_at:
                self.now = change_at
                self._sync()
                for s in self._streams():
                    if s.size - s.sent <= EPS:
                        self._finish(s)
                        waiting -= 1
                continue
            self.now = event_at
            while self.events and self.events[0][0] <= self.now:
                _, _, kind, who, target, hops = heapq.heappop(self.events)
                if kind == "plan":
                    pull = self.choose(who)
                    if pull is None:
                        self._at(self.now + 0.1, "plan", who)  # nothing to pull from yet
                    else:
                        self._at(self.now + self.owd(who, pull.source), "request", who, pull.source)
                elif kind == "busy":
                    self._busy(who, target)
                elif kind == "refused":
                    self._refused(who, target)
                else:
                    self._request(who, target, hops)
        return self._result()

    def _result(self) -> FanoutResult:
        receivers = [n for n in self.nodes.values() if n.id != "n0"]
        finished = [n.done_at for n in receivers if n.done_at is not None]
        everything = set(range(len(self.p.layers)))
        return FanoutResult(
            self.p,
            max(finished),
            finished,
            self.served,
            self.handoffs,
            self._depth(),
            busy=sum(n.busy for n in receivers),
            refused=sum(n.refused for n in receivers),
            parent=dict(self.parent),
            streamed={r: s.size for r, s in self.loaded.items()},
            left={r: s.left for r, s in self.loaded.items()},
            have={n.id: n.have for n in receivers},
            whole={n.id: n.layers == everything for n in receivers},
        )

    def _depth(self) -> int:
        deepest = 0
        for node in self.parent:
            hops, current = 0, node
            while current in self.parent:
                current = self.parent[current]
                hops += 1
            deepest = max(deepest, hops)
        return deepest


def fanout_time(params: FanoutParams) -> FanoutResult:
    return FanoutSim(params).run()


def reference(held: tuple[str, ...]) -> tuple[str, ...]:
    """The held set of the one receiver a case's ratio is against: the case's own when it has
    one, else (a mixed burst) the base, the common case (as scripts/bench_fanout.py does)."""
    return held if len(set(held)) == 1 else ("base",)


def fanout_ratios(
    counts: tuple[int, ...] = (10, 100), *, prefix: str = "fanout", **overrides: Any
) -> dict[str, Any]:
    """`{prefix}_ratio_N`: the time for N receivers over the time for one (holding the same, or
    the base in a mixed burst), on equal links, with the figures behind them: seconds, the depth
    of the tree, and the streams the first holder sent (`first_holder_copies`)."""
    held = overrides.pop("held", FanoutParams(1).held)
    one = fanout_time(FanoutParams(1, held=reference(held), **overrides))
    out: dict[str, Any] = {f"{prefix}_seconds_1": round(one.seconds, 3)}
    for n in counts:
        result = fanout_time(FanoutParams(n, held=held, **overrides))
        out[f"{prefix}_ratio_{n}"] = round(result.seconds / one.seconds, 2)
        out[f"{prefix}_seconds_{n}"] = round(result.seconds, 3)
        out[f"{prefix}_depth_{n}"] = result.depth
        out[f"{prefix}_first_holder_copies_{n}"] = result.sources.get("n0", 0)
    return out


CASES: dict[str, dict[str, Any]] = {
    "fanout": {"held": ("base",)},
    "fanout_mixed": {"held": MIXED},
    "fanout_nothing": ONE_LAYER,
}
"""The figures scripts/simulate.py prints, by key prefix: receivers holding the base (the
default, what an autoscaler adds), a mixed burst, and the one-layer image nobody holds any of."""


def fanout_cases(counts: tuple[int, ...] = (10, 100, 1000), **overrides: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for prefix, case in CASES.items():
        out.update(fanout_ratios(counts, prefix=prefix, **{**case, **overrides}))
    return out

"""Fan-out of one image to many new hosts at once, by simulation: the real planner chooses the
sources, the real hand-off rule (mesh.protocol.sources.relay_to) answers requests, and links share
bandwidth fairly (mesh.sim.links). Deterministic: same parameters, same run.

The scene: one node holds an image of `size` bytes; `receivers` new nodes want it at the same
moment (an autoscaler's burst). Every node has equal links (`bandwidth` bytes/s up and down). What
happens, in simulated time:

- Each receiver runs `mesh.protocol.planner.plan` on its view of the mesh: who holds the image,
  who is receiving it and relays it, each one's uploads (in flight plus queued), its RTT to each.
  That view is the truth as it was `gossip_lag` seconds ago: the nodes' status reaches the others
  by gossip.
- Its request reaches the source after one one-way latency. The source applies
  `sources.relay_to` to its streams in flight, the hand-offs the request has followed and the
  requests it has handed to each downstream (the counts the node keeps); if it hands the request
  on, the receiver asks that relay (one more round trip), and so on, as the node's puller does:
  at most `max_handoffs` times in one attempt, then the relay asked serves it itself. So the
  burst builds the node's shape: a chain of sources.CHAIN_DEPTH hops, then a binary tree. A
  source sends `max_uploads` streams at once and queues up to `upload_queue` more in order;
  past that it turns the request away, and the receiver, as its puller does, counts a failed
  attempt (the planner then ranks that source last), waits the backoff (at least the
  Retry-After) and plans again, asking sources to serve it themselves.
- A receiver relays the image as it arrives (cut-through) when `relay` is on: it can forward only
  what has reached it, less one socket read (`relay_chunk`: it passes on what it has received
  whole), so each relay hop adds about one read's time and one one-way latency.

The result is the time from the burst until every receiver holds the image, and the ratio to the
time one receiver alone takes. A star (every receiver served by the first holder) is N times.
"""

from __future__ import annotations

import bisect
import heapq
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mesh.config import Config
from mesh.protocol import planner, sources
from mesh.protocol.formulas import backoff
from mesh.protocol.wire import ImageMeta
from mesh.sim.links import INF, Flow, share

_LAN = Config.lan()
IMAGE = "sha256:" + "f" * 64
TAG = "app:latest"
STORE = "graph"
EPS = 1e-6  # bytes: below this a transfer counts as done


@dataclass(frozen=True, slots=True)
class FanoutParams:
    receivers: int
    size: int = 64_000_000
    """The image, in bytes (the issue's bench: 64 MB)."""
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


@dataclass(slots=True)
class _Stream:
    """One image stream from src to dst (a Flow for the link model, plus its progress)."""

    flow: Flow
    started: float
    seq: int
    sent: float = 0.0


@dataclass(slots=True)
class _Node:
    id: str
    position: float
    received: float = 0.0
    holder_since: float = INF
    receiving_since: float = INF
    inflow: _Stream | None = None
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
    busy: int = 0  # requests of this receiver a full queue turned away


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

    def summary(self) -> dict[str, Any]:
        return {
            "receivers": self.params.receivers,
            "seconds": round(self.seconds, 3),
            "median_seconds": round(sorted(self.per_receiver)[len(self.per_receiver) // 2], 3),
            "served_by_first_holder": self.sources.get("n0", 0),
            "handoffs": self.handoffs,
            "depth": self.depth,
            "busy": self.busy,
        }


class FanoutSim:
    def __init__(self, params: FanoutParams) -> None:
        self.p = params
        rng = random.Random(params.seed)
        self.nodes = {f"n{i}": _Node(f"n{i}", rng.random()) for i in range(params.receivers + 1)}
        origin = self.nodes["n0"]
        origin.received, origin.holder_since, origin.done_at = float(params.size), -INF, 0.0
        self.meta = ImageMeta(IMAGE, "", ("sha256:" + "e" * 64,), params.size, 1_700_000_000)
        self.now = 0.0
        # (at, seq, kind, receiver, source, hand-offs so far in this attempt)
        self.events: list[tuple[float, int, str, str, str, int]] = []
        self._seq = 0
        self.served: dict[str, int] = {}
        self.parent: dict[str, str] = {}
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
            relays = self.p.relay and node.receiving_since <= as_of and not holds
            if not holds and not relays:
                continue  # holds nothing of the image: no part in the choice
            if holds:
                remote[node.id] = {IMAGE: (TAG,)}
            peers[node.id] = planner.Peer(
                node.id,
                True,
                2 * self.owd(me, node.id),
                uploads=self._uploads_at(node, as_of),
                receiving={IMAGE: STORE} if relays else {},
            )
        plan = planner.plan(
            local={},
            remote=remote,
            metas={IMAGE: self.meta},
            peers=peers,
            in_flight={},
            failures={IMAGE: failure} if (failure := self.nodes[me].failure) else {},
            evicted={},
            max_pulls=2,
            max_attempts=5,
            now=self.now,
            me=me,
            store=STORE if self.p.relay else "",
        )
        return plan.pulls[0] if plan.pulls else None

    # --- events ------------------------------------------------------------------------------

    def _at(self, at: float, kind: str, node: str, target: str = "", hops: int = 0) -> None:
        self._seq += 1
        heapq.heappush(self.events, (at, self._seq, kind, node, target, hops))

    def _request(self, receiver: str, source: str, hops: int) -> None:
        """A request from `receiver` reaches `source`: hand it on, serve it, queue it, or turn it
        away (busy). As the node: hand-offs are allowed on a first attempt only, and for at most
        `max_handoffs` hops; then the source asked serves it itself."""
        src = self.nodes[source]
        handoff = self.nodes[receiver].failure is None and hops < self.p.max_handoffs
        if handoff and self.p.relay:
            sending = [
                sources.Downstream(s.flow.dst, IMAGE, STORE, relays=True)
                for s in sorted(src.outflows, key=lambda s: s.seq)
            ]
            chosen = sources.relay_to(IMAGE, STORE, receiver, sending, hops=hops, routed=src.routed)
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
        failure = node.failure = node.failure or planner.Failure(0, 0.0)
        failure.attempts += 1
        failure.bad_sources.add(source)
        delay = backoff(failure.attempts - 1, self.p.retry_backoff, self.p.retry_backoff_max)
        failure.retry_at = self.now + max(delay, self.p.failover_pause, self.p.busy_retry_after)
        self._at(failure.retry_at, "plan", receiver)

    def _start(self, source: str, receiver: str) -> None:
        self._sync()
        src, dst = self.nodes[source], self.nodes[receiver]
        self._seq += 1
        stream = _Stream(Flow(source, receiver), self.now, self._seq)
        src.outflows.append(stream)
        dst.inflow = stream
        dst.receiving_since = min(dst.receiving_since, self.now)
        dst.lag = self.p.relay_chunk + self.p.bandwidth * self.owd(source, receiver)
        self.parent[receiver] = source
        self.served[source] = self.served.get(source, 0) + 1
        self._log_uploads(src)

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
        src.routed.pop(sources.Downstream(dst.id, IMAGE, STORE, relays=True), None)
        dst.inflow = None
        dst.received = float(self.p.size)
        # the last byte is on the wire for one more one-way latency
        dst.holder_since = dst.done_at = self.now + self.owd(src.id, dst.id)
        if src.queue:
            self._start(src.id, src.queue.pop(0))
        self._log_uploads(src)

    # --- the fluid model between events --------------------------------------------------------

    def _streams(self) -> list[_Stream]:
        return sorted((s for n in self.nodes.values() for s in n.outflows), key=lambda s: s.seq)

    def _available(self, stream: _Stream) -> float:
        """What the stream's source can send so far: all of it, or, for a relay, what has reached it
        less the chunk it is still receiving whole."""
        src = self.nodes[stream.flow.src]
        if src.done_at is not None:
            return float(self.p.size)
        return max(0.0, src.received - src.lag)

    def _rates(self, streams: list[_Stream]) -> None:
        for s in streams:
            src = self.nodes[s.flow.src]
            s.flow.follows, s.flow.cap = None, INF
            available = self._available(s)
            if available - s.sent <= EPS and available < self.p.size:
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
                soonest = min(soonest, (self.p.size - s.sent) / rate)
            available = self._available(s)
            if available >= self.p.size or s.flow.follows is not None:
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
                s.sent = min(float(self.p.size), s.sent + s.flow.rate * dt, self._available(s))
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
                    if self.p.size - s.sent <= EPS:
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
                else:
                    self._request(who, target, hops)
        finished = [n.done_at for n in self.nodes.values() if n.id != "n0" and n.done_at is not None]
        busy = sum(n.busy for n in self.nodes.values())
        return FanoutResult(self.p, max(finished), finished, self.served, self.handoffs, self._depth(), busy)

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


def fanout_ratios(counts: tuple[int, ...] = (10, 100), **overrides: Any) -> dict[str, Any]:
    """`fanout_ratio_N`: the time for N receivers over the time for one, on equal links, with the
    figures behind them."""
    one = fanout_time(FanoutParams(1, **overrides))
    out: dict[str, Any] = {"fanout_seconds_1": round(one.seconds, 3)}
    for n in counts:
        result = fanout_time(FanoutParams(n, **overrides))
        out[f"fanout_ratio_{n}"] = round(result.seconds / one.seconds, 2)
        out[f"fanout_seconds_{n}"] = round(result.seconds, 3)
        out[f"fanout_depth_{n}"] = result.depth
    return out

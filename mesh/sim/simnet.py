"""A deterministic simulated network that drives real `MeshCore`s on a simulated clock.

Not a model of the protocol: each simulated node is the same MeshCore the asyncio node runs.
The network routes drained envelopes with per-message loss, a per-link latency, partitions and
crashes, and counts the bytes each node sends as a real node would put them on the wire: an
envelope that fits in a datagram as a sealed datagram (answers are datagrams of their own); a
larger one as a signed HTTP request, answered by a signed response that carries the receiver's
first reply to the sender, as the peer API does (see wirecost.py for the measured overhead).
Same seed, same run.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from mesh.protocol import wire
from mesh.protocol.core import MeshCore
from mesh.protocol.datagram import fits as datagram_fits
from mesh.protocol.outbox import Outgoing
from mesh.protocol.timings import Timings
from mesh.sim.wirecost import (
    RESPONSE_EMPTY,
    datagram_bytes,
    reply_bytes,
    request_bytes,
)


@dataclass(slots=True)
class SimNode:
    addr: str
    core: MeshCore
    position: float
    up: bool = True
    group: int = 0
    scheduled: float = float("inf")
    tick_token: int = 0


@dataclass(slots=True)
class Traffic:
    """Bytes each node sent on the wire (HTTP framing included), per whole simulated second."""

    per_second: dict[tuple[str, int], int] = field(default_factory=lambda: defaultdict(int))
    # With SimNetwork.count_kinds: the same bytes split by what they carried (message types, or
    # "empty response"), for finding what a busy second is made of.
    kinds: dict[tuple[str, int], Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    messages: int = 0
    dropped: int = 0


class SimNetwork:
    def __init__(
        self,
        timings: Timings,
        *,
        datagrams: bool = True,
        seed: int = 0,
        loss: float = 0.0,
        base_latency: float = 0.0005,
        spread_latency: float = 0.004,
        count_bytes: bool = True,
        strict_wire: bool = False,
    ) -> None:
        self.timings = timings
        self.datagrams = datagrams  # as the node's --gossip-datagrams: envelopes that fit go as datagrams
        self.rng = random.Random(seed)
        self.loss = loss
        self.base_latency = base_latency
        self.spread_latency = spread_latency
        self.count_bytes = count_bytes
        self.count_kinds = False
        self.strict_wire = strict_wire
        self.now = 0.0
        self.nodes: dict[str, SimNode] = {}
        self.traffic = Traffic()
        self.partitioned = False
        self.drop_hook: Callable[[str, str, wire.Envelope], bool] | None = None
        self.on_deliver: Callable[[SimNode], None] | None = None
        # (time, sequence, kind, node, payload): kind 0 is a tick (payload: token), 1 the delivery of a
        # request (envelope), 2 the delivery of a reply that came back in an HTTP response, 3 the
        # delivery of a datagram (envelope)
        self._queue: list[tuple[float, int, int, SimNode, Any]] = []
        self._seq = 0
        self._next_id = 0

    # --- nodes ---------------------------------------------------------------------------

    def add_node(
        self, *, addr: str | None = None, incarnation: int = 1, manifest_version: int = 1
    ) -> SimNode:
        self._next_id += 1
        addr = addr or f"10.0.{self._next_id // 250}.{self._next_id % 250 + 1}:7611"
        node_id = f"{self.rng.getrandbits(64):016x}"
        core = MeshCore(
            self.timings,
            node_id,
            f"n{self._next_id}",
            addr,
            now=self.now,
            incarnation=incarnation,
            manifest_version=manifest_version,
            rng=random.Random(self.rng.getrandbits(64)),
        )
        node = SimNode(addr, core, self.rng.random())
        self.nodes[addr] = node
        self._schedule_tick(node)
        return node

    def crash(self, addr: str) -> None:
        self.nodes[addr].up = False

    def restart(self, addr: str, *, incarnation: int, manifest_version: int) -> SimNode:
        """The process comes back with fresh state but a higher incarnation and version, as a
        real node does (it persists its incarnation; versions start from the wall clock)."""
        old = self.nodes.pop(addr)
        node_id = old.core.node_id
        core = MeshCore(
            self.timings,
            node_id,
            old.core.membership.me.name,
            addr,
            now=self.now,
            incarnation=incarnation,
            manifest_version=manifest_version,
            rng=random.Random(self.rng.getrandbits(64)),
        )
        node = SimNode(addr, core, old.position, group=old.group)
        self.nodes[addr] = node
        self._schedule_tick(node)
        return node

    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        for index, members in enumerate(groups):
            for addr in members:
                self.nodes[addr].group = index
        self.partitioned = True

    def heal(self) -> None:
        for node in self.nodes.values():
            node.group = 0
        self.partitioned = False

    def live(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.up]

    # --- the event loop ----------------------------------------------------------------------

    def _push(self, at: float, kind: int, node: SimNode, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (at, self._seq, kind, node, payload))

    def _schedule_tick(self, node: SimNode) -> None:
        at = max(node.core.next_deadline(), self.now)
        if at < node.scheduled:
            node.scheduled = at
            node.tick_token += 1
            self._push(at, 0, node, node.tick_token)

    def _flush(self, node: SimNode, reply_to: str | None = None) -> None:
        """Send what the node's core has drained. After an HTTP request from `reply_to`, the first
        envelope back to it travels as the HTTP response (its framing is a response's, and it is
        not answered again), and with none the request is answered by an empty signed 204."""
        replied = False
        for out in node.core.drain():
            as_reply = not replied and out.addr == reply_to
            replied = replied or as_reply
            self._send(node, out, as_reply)
        if reply_to is not None and not replied and self.count_bytes:
            self.traffic.per_second[(node.addr, int(self.now))] += RESPONSE_EMPTY
            if self.count_kinds:
                self.traffic.kinds[(node.addr, int(self.now))]["empty response"] += RESPONSE_EMPTY
        self._schedule_tick(node)

    def _send(self, node: SimNode, out: Outgoing, as_reply: bool = False) -> None:
        traffic = self.traffic
        traffic.messages += 1
        datagram = False
        if self.count_bytes or self.strict_wire or self.datagrams:
            data = wire.encode(out.envelope)
            # A reply to an HTTP request rides in its response, as the peer API does.
            datagram = self.datagrams and not as_reply and datagram_fits(len(data))
            if self.count_bytes:
                if datagram:
                    size = datagram_bytes(len(data))
                elif as_reply:
                    size = reply_bytes(len(data))
                else:
                    size = request_bytes(len(data), out.addr)
                traffic.per_second[(node.addr, int(self.now))] += size
                if self.count_kinds:
                    kind = "+".join(sorted({type(m).__name__ for m in out.envelope.messages}))
                    how = " in a datagram" if datagram else " in a response" if as_reply else ""
                    traffic.kinds[(node.addr, int(self.now))][kind + how] += size
            envelope = (
                wire.decode(data, max_bytes=self.timings.max_message_bytes)
                if self.strict_wire
                else out.envelope
            )
        else:
            envelope = out.envelope
        dest = self.nodes.get(out.addr)
        if dest is None or (self.loss and self.rng.random() < self.loss):
            traffic.dropped += 1
            return
        if self.partitioned and dest.group != node.group:
            traffic.dropped += 1
            return
        if self.drop_hook is not None and self.drop_hook(node.addr, out.addr, envelope):
            traffic.dropped += 1
            return
        latency = self.base_latency + abs(node.position - dest.position) * self.spread_latency
        self._push(self.now + latency, 3 if datagram else 2 if as_reply else 1, dest, envelope)

    def run_until(self, until: float) -> None:
        queue = self._queue
        while queue and queue[0][0] <= until:
            at, _, kind, node, payload = heapq.heappop(queue)
            self.now = at
            if not node.up or self.nodes.get(node.addr) is not node:
                continue
            if kind == 0:
                if payload != node.tick_token:
                    continue
                node.scheduled = float("inf")
                node.core.tick(at)
                self._flush(node)
            else:
                node.core.receive(payload, at)
                # What a node sends after reading a response or a datagram goes out as new sends.
                self._flush(node, reply_to=payload.addr if kind == 1 else None)
            if kind != 0 and self.on_deliver is not None:
                self.on_deliver(node)
        self.now = until

    def kick(self, node: SimNode) -> None:
        """Flush a node whose core was changed from outside (a local image change, a join)."""
        self._flush(node)

"""The protocol state machine of one node: membership, manifests and anti-entropy. Pure.

Like aioquic's QuicConnection: the owner feeds it envelopes (`receive`) and the time (`tick`),
asks when to call again (`next_deadline`), and drains envelopes to send (`drain`) and events
(`drain_events`). It never touches a socket, a clock or the engine, so the asyncio node and the
simulator drive exactly the same code.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from mesh.protocol.antientropy import DigestCache, SummaryCache, differing, split_by_size
from mesh.protocol.events import Event, PeerForgotten, PeerStateChanged
from mesh.protocol.formulas import push_pull_scale, retransmit_limit
from mesh.protocol.liveness import State
from mesh.protocol.manifests import Manifests, Sign
from mesh.protocol.membership import Member, Membership
from mesh.protocol.outbox import Outbox, Outgoing
from mesh.protocol.rumours import BroadcastQueue
from mesh.protocol.timings import Timings
from mesh.protocol.view import MeshView
from mesh.protocol.wire import (
    Ack,
    Alive,
    Dead,
    Envelope,
    ImageMeta,
    ManifestDelta,
    ManifestUpdate,
    Message,
    Metas,
    MetaWant,
    Ping,
    PingReq,
    Suspect,
    SyncDigest,
    SyncSummary,
    SyncWant,
    Tags,
)


class MeshCore:
    def __init__(
        self,
        timings: Timings,
        node_id: str,
        name: str,
        addr: str,
        *,
        now: float,
        incarnation: int = 1,
        manifest_version: int = 1,
        rng: random.Random | None = None,
        sign: Sign | None = None,
    ) -> None:
        """`sign`: this node is a trusted publisher, and signs its manifest entries with it."""
        self.timings = timings
        self._node_id = node_id
        self.rng = rng or random.Random()
        self.events: list[Event] = []
        self.rumours = BroadcastQueue()
        self.out = Outbox(node_id, addr, timings.max_message_bytes)
        me = Member(node_id, name, addr, incarnation, State.ALIVE, now)
        self.digest = DigestCache()
        self.digest.mark(node_id)
        self.summaries = SummaryCache()
        self.membership = Membership(
            timings, me, self.rng, self.out, self.rumours, self.events, self.digest.mark
        )
        self.manifests = Manifests(
            timings, node_id, manifest_version, self.out, self.rumours, self.events, self.digest.mark, sign
        )
        self.view = MeshView(self.membership, self.manifests)  # what the I/O edges may read
        self.synced_with_peer = False
        self._gossip_rounds = 0
        self._push_pulls = 0
        jitter = self.rng.random
        self._next_gossip = now + jitter() * timings.gossip_interval
        self._next_push_pull = now + timings.probe_interval * (1 + jitter())
        self._next_reconnect = now + timings.reconnect_interval * (1 + jitter())
        self._next_maintenance = now + 1.0
        self._joins: dict[str, float] = {}
        # A node that just started syncs a few times in quick succession: peers that started at the
        # same moment (a fleet booting) are not in the first summary it gets, and rumours about them
        # die out at nodes that already know them.
        self._bootstrap_syncs = 3
        self._catch_up: str | None = None
        self._events_seen = 0
        self._handlers: dict[type, Callable[[str, str, Any, float], None]] = {
            Ping: lambda src, sender, m, now: self.membership.on_ping(src, m),
            Ack: lambda src, sender, m, now: self.membership.on_ack(src, m, now),
            PingReq: lambda src, sender, m, now: self.membership.on_ping_req(src, m, now),
            Alive: lambda src, sender, m, now: self.membership.on_alive(m, now),
            Suspect: lambda src, sender, m, now: self.membership.on_suspect(m, now),
            Dead: lambda src, sender, m, now: self.membership.on_dead(m, now),
            ManifestUpdate: lambda src, sender, m, now: self.manifests.on_update(src, m, now),
            SyncDigest: self._on_sync_digest,
            SyncSummary: self._on_sync_summary,
            SyncWant: self._on_sync_want,
            ManifestDelta: lambda src, sender, m, now: self.manifests.on_delta(src, m, now),
            MetaWant: self._on_meta_want,
            Metas: lambda src, sender, m, now: self.manifests.on_metas(m.metas),
        }

    # --- identity ----------------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        return self._node_id

    @property
    def stats(self) -> dict[str, int]:
        """Counters for /metrics."""
        return {
            "gossip_rounds": self._gossip_rounds,
            "push_pulls": self._push_pulls,
            "probes": self.membership.probes_sent,
        }

    @property
    def incarnation(self) -> int:
        return self.membership.me.incarnation

    # --- inputs ----------------------------------------------------------------------------

    def receive(self, envelope: Envelope, now: float) -> None:
        src, sender = envelope.addr, envelope.sender
        if sender == self._node_id:
            return
        self.membership.on_contact(sender, src, envelope.incarnation, now)
        for message in envelope.messages:
            self._handlers[type(message)](src, sender, message, now)
        self._after_events(now)

    def join(self, addrs: Iterable[str], now: float) -> None:
        """Contact candidate addresses (seeds, mDNS) that are not live members yet."""
        retry_before = now - self.timings.reconnect_interval
        for addr in addrs:
            if addr == self.membership.me.addr or self.membership.is_live_addr(addr):
                continue
            if self._joins.get(addr, -1e18) > retry_before:
                continue
            self._joins[addr] = now
            self.out.send(addr, self.membership.alive_message())
            self.out.send(addr, SyncDigest(self._digest()))

    def leave(self, now: float) -> None:
        self.membership.leave(now)

    def set_local_images(self, images: Mapping[str, Tags], metas: Iterable[ImageMeta], now: float) -> bool:
        return self.manifests.set_local(images, metas, now)

    # --- time ---------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        self.membership.tick(now)
        if now >= self._next_gossip and len(self.rumours):
            self._gossip(now)
            self._next_gossip = max(self._next_gossip + self.timings.gossip_interval, now)
        if now >= self._next_push_pull:
            revived = self.membership.members.get(self._catch_up or "")
            self._catch_up = None
            target: list[Member] = self.membership.random_live(1)
            if revived is not None and revived.state in (State.ALIVE, State.SUSPECT):
                target = [revived]
            if target and not self.membership.leaving:
                self.out.send(target[0].addr, SyncDigest(self._digest()))
                self._push_pulls += 1
            if target and self._bootstrap_syncs > 0:
                self._bootstrap_syncs -= 1
                self._next_push_pull = now + self.timings.probe_interval
            else:
                interval = push_pull_scale(self.timings.push_pull_interval, self.membership.size)
                self._next_push_pull = now + interval * (0.5 + self.rng.random())
        if now >= self._next_reconnect:
            dead = self.membership.dead_ids()
            if dead and not self.membership.leaving:
                # Sync with a node we think is dead: if a partition has healed, the summaries that
                # follow tell each side it was declared dead, and both refute.
                self.out.send(self.membership.members[self.rng.choice(dead)].addr, SyncDigest(self._digest()))
            self._next_reconnect = now + self.timings.reconnect_interval * (0.5 + self.rng.random())
        if now >= self._next_maintenance:
            self._maintenance(now)
            self._next_maintenance = now + 1.0
        self._after_events(now)

    def next_deadline(self) -> float:
        deadline = min(
            self.membership.next_deadline(),
            self._next_push_pull,
            self._next_reconnect,
            self._next_maintenance,
        )
        # Gossip rounds only matter when there is something to say: an idle node does not wake up
        # five times a second. A rumour that arrives goes out at the next round.
        if len(self.rumours):
            deadline = min(deadline, self._next_gossip)
        return deadline

    def _gossip(self, now: float) -> None:
        self._gossip_rounds += 1
        limit = retransmit_limit(self.timings.retransmit_mult, self.membership.size)
        first: list[Message] = []
        for target in self.membership.gossip_targets(self.timings.gossip_nodes):
            messages = self.rumours.take(self.timings.gossip_message_bytes, limit)
            if not messages:
                break
            first = first or messages
            for message in messages:
                self.out.send(target.addr, message)
        dead = self.membership.recently_dead_target(now)
        if dead is not None:
            for message in first:
                self.out.send(dead.addr, message)

    def _maintenance(self, now: float) -> None:
        self.manifests.expire(now)
        m = self.membership
        for source, node, since in self.manifests.gaps_to_repair(now, self.timings.probe_interval):
            # Ask whoever told us; if it is gone, the origin itself; else anyone live.
            if not m.is_live_addr(source):
                origin = m.members.get(node)
                if origin is not None and origin.state in (State.ALIVE, State.SUSPECT):
                    source = origin.addr
                else:
                    anyone = m.random_live(1)
                    if not anyone:
                        continue
                    source = anyone[0].addr
            self.out.send(source, SyncWant(((node, since),)))
        self.rumours.prune(retransmit_limit(self.timings.retransmit_mult, self.membership.size))
        asks: dict[str, list[str]] = {}
        for named_by, image in self.manifests.stale_meta_asks(now):
            holder = m.members.get(named_by)
            if holder is None or holder.state is not State.ALIVE:
                holders = [h for h in self.manifests.holders_of(image) if h in m.members]
                if not holders:
                    self.manifests.forget_meta_ask(image)  # nobody holds it any more
                    continue
                holder = m.members[self.rng.choice(holders)]
            asks.setdefault(holder.addr, []).append(image)
        for addr, images in asks.items():
            self.out.send(addr, MetaWant(tuple(images)))

    def _after_events(self, now: float) -> None:
        new = self.events[self._events_seen :]
        self._events_seen = len(self.events)
        for event in new:
            if isinstance(event, PeerForgotten):
                self.manifests.forget(event.node)
                self.summaries.forget(event.node)
            elif (
                isinstance(event, PeerStateChanged)
                and event.new is State.ALIVE
                and event.old in (State.DEAD, State.LEFT)
            ):
                # A member we had declared dead is back (a partition healed, a node restarted): it
                # has missed what we know and we what it knows, so sync with it soon rather than at
                # the next periodic push-pull. One catch-up per burst of revivals.
                if self._catch_up is None:
                    self._next_push_pull = min(
                        self._next_push_pull, now + self.rng.random() * self.timings.probe_interval
                    )
                self._catch_up = event.node

    # --- outputs ----------------------------------------------------------------------------

    def drain(self) -> list[Outgoing]:
        self.out.incarnation = self.membership.me.incarnation
        return self.out.drain()

    def drain_events(self) -> list[Event]:
        events = self.events[:]
        self.events.clear()
        self._events_seen = 0
        return events

    # --- anti-entropy ----------------------------------------------------------------------

    def _digest(self) -> tuple[int, ...]:
        return self.digest.value(self.membership.members, self.manifests.version_of)

    def _summaries(self, buckets: list[int], reply: bool) -> list[SyncSummary]:
        entries = self.summaries.entries(self.membership.members.values(), buckets, self.manifests.version_of)
        chunks = split_by_size(entries, max(16, self.timings.max_message_bytes // 1024))
        return [SyncSummary(tuple(buckets), tuple(chunk), reply and i == 0) for i, chunk in enumerate(chunks)]

    def _on_sync_digest(self, src: str, sender: str, msg: SyncDigest, now: float) -> None:
        buckets = differing(self._digest(), msg.buckets)
        if not buckets:
            self.synced_with_peer = True  # our views already agree
        else:
            for summary in self._summaries(buckets, reply=True):
                self.out.send(src, summary)

    def _on_sync_summary(self, src: str, sender: str, msg: SyncSummary, now: float) -> None:
        m = self.membership
        for e in msg.entries:
            if e.state == State.ALIVE:
                m.on_alive(Alive(e.node, e.name, e.addr, e.incarnation), now, rumour_new=False)
            elif e.state == State.LEFT:
                m.on_dead(Dead(e.node, e.incarnation, e.node), now)
            else:
                # A remote "dead" only makes us suspect: the node gets its chance to refute
                # (memberlist mergeState).
                m.on_suspect(Suspect(e.node, e.incarnation, sender), now)
        wants = []
        for e in msg.entries:
            member = m.members.get(e.node)
            if member is None or member is m.me or member.state not in (State.ALIVE, State.SUSPECT):
                continue
            known = self.manifests.version_of(e.node)
            if e.mversion > known:
                wants.append((e.node, known))
        if wants:
            self.out.send(src, SyncWant(tuple(wants)))
        if msg.reply:
            for summary in self._summaries(list(msg.buckets), reply=False):
                self.out.send(src, summary)
        self.synced_with_peer = True

    def _on_sync_want(self, src: str, sender: str, msg: SyncWant, now: float) -> None:
        for node, since in msg.wants:
            delta = self.manifests.delta_for(node, since)
            if delta is not None:
                self.out.send(src, delta)

    def _on_meta_want(self, src: str, sender: str, msg: MetaWant, now: float) -> None:
        metas = self.manifests.metas_for(msg.images)
        for i in range(0, len(metas), 256):
            self.out.send(src, Metas(tuple(metas[i : i + 256])))

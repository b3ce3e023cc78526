"""SWIM membership with Lifeguard suspicion. Pure: messages and `now` in, messages and events out.

One probe per `probe_interval` to the next member of a shuffled round-robin list (SWIM §4.3),
indirect probes through `indirect_checks` others when the direct ack is late, suspicion before
death, refutation by incarnation numbers, and suspicion timeouts that grow with log(n) and shrink
with independent confirmations (Lifeguard §IV-B). Membership changes spread as rumours through
the shared BroadcastQueue; the full-state exchange lives in `sync`.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from mesh.protocol.events import Event, PeerForgotten, PeerJoined, PeerStateChanged
from mesh.protocol.formulas import (
    confirmations_expected,
    remaining_suspicion,
    smooth_rtt,
    suspicion_timeout,
)
from mesh.protocol.liveness import State
from mesh.protocol.outbox import Outbox
from mesh.protocol.rumours import BroadcastQueue
from mesh.protocol.timings import Timings
from mesh.protocol.wire import Ack, Alive, Dead, Ping, PingReq, Suspect


@dataclass(slots=True)
class Suspicion:
    started: float
    k: int
    min_timeout: float
    max_timeout: float
    accusers: set[str]
    deadline: float

    @property
    def confirmations(self) -> int:
        return len(self.accusers) - 1  # the first accuser raised it; the others confirm it


@dataclass(slots=True, eq=False)
class Member:
    id: str
    name: str
    addr: str
    incarnation: int
    state: State
    since: float
    rtt: float | None = None
    heard: float = float("-inf")  # when it last reached us directly
    suspicion: Suspicion | None = None


@dataclass(slots=True)
class _Probe:
    target: str
    addr: str
    started: float
    indirect_at: float
    deadline: float
    indirect_sent: bool = False


@dataclass(slots=True)
class _Relay:
    origin_addr: str
    origin_seq: int
    deadline: float


class Membership:
    def __init__(
        self,
        timings: Timings,
        me: Member,
        rng: random.Random,
        outbox: Outbox,
        rumours: BroadcastQueue,
        events: list[Event],
        touched: Callable[[str], None] = lambda node: None,
    ) -> None:
        self.timings = timings
        self.me = me
        self._touched = touched  # a member's incarnation or state may have changed (digest upkeep)
        self.members: dict[str, Member] = {me.id: me}
        self.by_addr: dict[str, str] = {}  # address -> member ID, for joins and seeds
        self.leaving = False
        self._rng = rng
        self._out = outbox
        self._rumours = rumours
        self._events = events
        self._seq = 0
        self.probes_sent = 0
        self._probes: dict[int, _Probe] = {}
        self._relays: dict[int, _Relay] = {}
        self._live: list[str] = []  # alive or suspect, not me: gossip and probe candidates
        self._live_pos: dict[str, int] = {}
        # Ordered dicts rather than sets wherever iteration order reaches the RNG or the outbox:
        # string hashing is salted per process, and the simulator must replay a seed exactly.
        self._gone: dict[str, None] = {}  # dead or left, until reaped
        self._recent_dead: deque[str] = deque()  # in order of death; stale entries skipped when picked
        self._suspects: dict[str, None] = {}
        self._suspicion_due = float("inf")  # earliest suspicion deadline (may be stale-early, never late)
        self._probe_order: list[str] = []
        self._probe_index = 0
        self._next_probe = me.since + rng.random() * timings.probe_interval
        self._next_housekeeping = me.since + 1.0

    # --- views -------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Estimated cluster size: live members and this node."""
        return len(self._live) + 1

    def live_ids(self) -> list[str]:
        return self._live

    def dead_ids(self) -> list[str]:
        return [m for m in self._gone if self.members[m].state is State.DEAD]

    def is_live_addr(self, addr: str) -> bool:
        node = self.by_addr.get(addr)
        return node is not None and self.members[node].state in (State.ALIVE, State.SUSPECT)

    def random_live(self, k: int, exclude: str = "") -> list[Member]:
        pool = self._live
        if not pool:
            return []
        picks = self._rng.sample(pool, min(len(pool), k + 1))
        return [self.members[i] for i in picks if i != exclude][:k]

    def probe_helpers(self, k: int, exclude: str, now: float) -> list[Member]:
        """k members to ask for an indirect probe, preferring ones that reached us recently.

        Random helpers (plain SWIM) are often unreachable when the network is split: for the tens of
        seconds before the far side is declared dead, half of them are over there, and a node on our
        own side gets falsely suspected. Members heard from in the last few probe intervals are
        almost certainly reachable; fall back to any live member when there are not enough.
        """
        horizon = now - 5 * self.timings.probe_interval
        pool = self._live
        picks = self._rng.sample(pool, min(len(pool), 4 * k + 1))
        fresh = [self.members[i] for i in picks if i != exclude and self.members[i].heard >= horizon]
        if len(fresh) < k:
            fresh += [self.members[i] for i in picks if i != exclude and self.members[i].heard < horizon]
        return fresh[:k]

    def gossip_targets(self, k: int) -> list[Member]:
        """k random live members to gossip to."""
        return [self.members[i] for i in self._rng.sample(self._live, min(len(self._live), k))]

    def _recently_dead(self, node: str, now: float) -> bool:
        m = self.members.get(node)
        return m is not None and m.state is State.DEAD and m.since > now - self.timings.gossip_to_dead_time

    def recently_dead_target(self, now: float) -> Member | None:
        """One recently dead member, so a falsely-declared node hears of it and refutes
        (memberlist's GossipToTheDeadTime). It is sent a copy of a live target's rumours, spending
        none of their transmits: after a partition hundreds may be dead, and the live spread must
        not shrink."""
        if not self._recent_dead:
            return None
        node = self._recent_dead[self._rng.randrange(len(self._recent_dead))]
        return self.members[node] if self._recently_dead(node, now) else None

    # --- state changes -------------------------------------------------------------------

    def _set_state(self, m: Member, new: State, now: float) -> None:
        self._touched(m.id)
        old = m.state
        if old is new:
            return
        m.state = new
        m.since = now
        if m is self.me:
            self._events.append(PeerStateChanged(m.id, old, new))
            return
        live_before = old in (State.ALIVE, State.SUSPECT)
        live_after = new in (State.ALIVE, State.SUSPECT)
        if live_before and not live_after:
            self._remove_live(m.id)
            self._gone[m.id] = None
            if new is State.DEAD:
                self._recent_dead.append(m.id)
        elif live_after and not live_before:
            self._gone.pop(m.id, None)  # (a stale entry in _recent_dead is skipped when picked)
            self._add_live(m.id)
        if new is not State.SUSPECT:
            m.suspicion = None
            self._suspects.pop(m.id, None)
        self._events.append(PeerStateChanged(m.id, old, new))

    def _add_live(self, node: str) -> None:
        self._live_pos[node] = len(self._live)
        self._live.append(node)
        # A newcomer goes to a random place in the probe round, as in memberlist, so it is probed soon
        # but no member is probed twice in one round.
        self._probe_order.insert(self._rng.randint(0, len(self._probe_order)), node)

    def _remove_live(self, node: str) -> None:
        pos = self._live_pos.pop(node)
        last = self._live.pop()
        if last != node:
            self._live[pos] = last
            self._live_pos[last] = pos

    def _rumour(self, node: str, message: Alive | Suspect | Dead) -> None:
        self._rumours.push(("m", node), message)

    def _refute(self, accused_incarnation: int) -> None:
        self._touched(self.me.id)
        self.me.incarnation = max(self.me.incarnation, accused_incarnation) + 1
        self._rumour(self.me.id, self.alive_message())

    def alive_message(self) -> Alive:
        return Alive(self.me.id, self.me.name, self.me.addr, self.me.incarnation)

    def on_alive(self, msg: Alive, now: float, *, rumour_new: bool = True) -> None:
        if msg.node == self.me.id:
            stale_view = msg.incarnation > self.me.incarnation or (
                msg.incarnation == self.me.incarnation and msg.addr != self.me.addr
            )
            if stale_view and not self.leaving:
                self._refute(msg.incarnation)
            return
        if not msg.addr:
            return
        m = self.members.get(msg.node)
        if m is None:
            m = Member(msg.node, msg.name, msg.addr, msg.incarnation, State.ALIVE, now)
            self.members[msg.node] = m
            self._touched(m.id)
            self.by_addr[msg.addr] = msg.node
            self._add_live(m.id)
            self._events.append(PeerJoined(m.id))
            if rumour_new:
                self._rumour(m.id, msg)
            return
        if msg.incarnation <= m.incarnation:
            return
        m.incarnation = msg.incarnation
        self._touched(m.id)
        if m.addr != msg.addr:
            if self.by_addr.get(m.addr) == m.id:
                del self.by_addr[m.addr]
            m.addr = msg.addr
        self.by_addr[msg.addr] = m.id
        m.name = msg.name
        self._set_state(m, State.ALIVE, now)
        self._rumour(m.id, msg)

    def on_contact(self, node: str, addr: str, incarnation: int, now: float) -> None:
        """A known member reached us directly with a newer incarnation than we hold for it: that is
        its refutation, whether or not its Alive rumour has reached us yet. During a partition half
        of all gossip is lost, and this keeps a suspect's own traffic from being wasted."""
        m = self.members.get(node)
        if m is None or m is self.me:
            return
        m.heard = now
        if incarnation > m.incarnation:
            self.on_alive(Alive(node, m.name, addr, incarnation), now)

    def on_suspect(self, msg: Suspect, now: float) -> None:
        m = self.members.get(msg.node)
        if m is None or msg.incarnation < m.incarnation:
            return
        if m is self.me:
            if not self.leaving:
                self._refute(msg.incarnation)
            return
        if m.state is State.SUSPECT and m.suspicion is not None:
            if msg.incarnation > m.incarnation:
                m.incarnation = msg.incarnation
                self._touched(m.id)
            s = m.suspicion
            # Only the first k confirmations count and are passed on (Lifeguard; memberlist's
            # suspicion.Confirm): past k the timeout is at its floor, and re-rumouring every prober's
            # accusation of a dead node would flood a large cluster.
            if msg.by not in s.accusers and s.confirmations < s.k:
                s.accusers.add(msg.by)
                s.deadline = s.started + remaining_suspicion(
                    s.confirmations, s.k, 0.0, s.min_timeout, s.max_timeout
                )
                self._suspicion_due = min(self._suspicion_due, s.deadline)
                self._rumour(m.id, msg)
            return
        if m.state is not State.ALIVE:
            return
        m.incarnation = msg.incarnation
        self._set_state(m, State.SUSPECT, now)
        n = self.size
        k = confirmations_expected(self.timings.suspicion_mult, n)
        low = suspicion_timeout(self.timings.suspicion_mult, n, self.timings.probe_interval)
        high = self.timings.suspicion_max_timeout_mult * low
        m.suspicion = Suspicion(now, k, low, high, {msg.by}, now + remaining_suspicion(0, k, 0.0, low, high))
        self._suspects[m.id] = None
        self._suspicion_due = min(self._suspicion_due, m.suspicion.deadline)
        self._rumour(m.id, msg)

    def on_dead(self, msg: Dead, now: float) -> None:
        m = self.members.get(msg.node)
        if m is None or msg.incarnation < m.incarnation or m.state is State.LEFT:
            return
        if m.state is State.DEAD:
            # Declared dead here (say, across a partition), but it actually left: stop trying to
            # reconnect to it.
            if msg.by == msg.node:
                m.incarnation = msg.incarnation
                self._set_state(m, State.LEFT, now)
            return
        if m is self.me and not self.leaving:
            self._refute(msg.incarnation)
            return
        m.incarnation = msg.incarnation
        self._set_state(m, State.LEFT if msg.by == msg.node else State.DEAD, now)
        self._rumour(m.id, msg)

    def leave(self, now: float) -> None:
        """Graceful leave: tell the cluster at once instead of letting it time us out."""
        self.leaving = True
        self.on_dead(Dead(self.me.id, self.me.incarnation, self.me.id), now)

    # --- probes --------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    def on_ping(self, src: str, msg: Ping) -> None:
        if msg.target == self.me.id:
            self._out.send(src, Ack(msg.seq))

    def on_ack(self, src: str, msg: Ack, now: float) -> None:
        probe = self._probes.pop(msg.seq, None)
        if probe is not None:
            m = self.members.get(probe.target)
            if m is not None and src == probe.addr and not probe.indirect_sent:
                m.rtt = smooth_rtt(m.rtt, now - probe.started)  # a retried probe's time is not an RTT
            return
        relay = self._relays.pop(msg.seq, None)
        if relay is not None:
            self._out.send(relay.origin_addr, Ack(relay.origin_seq))

    def on_ping_req(self, src: str, msg: PingReq, now: float) -> None:
        seq = self._next_seq()
        self._relays[seq] = _Relay(src, msg.seq, now + self.timings.probe_interval)
        self._out.send(msg.target_addr, Ping(seq, msg.target))

    def _next_probe_target(self) -> Member | None:
        for _ in range(2):
            while self._probe_index < len(self._probe_order):
                node = self._probe_order[self._probe_index]
                self._probe_index += 1
                m = self.members.get(node)
                if m is not None and m.state in (State.ALIVE, State.SUSPECT) and m is not self.me:
                    return m
            self._probe_order = list(self._live)
            self._rng.shuffle(self._probe_order)
            self._probe_index = 0
        return None

    def _start_probe(self, now: float) -> None:
        m = self._next_probe_target()
        if m is None:
            return
        seq = self._next_seq()
        self.probes_sent += 1
        self._probes[seq] = _Probe(
            m.id, m.addr, now, now + self.timings.probe_timeout, now + self.timings.probe_interval
        )
        self._out.send(m.addr, Ping(seq, m.id))

    def _check_probes(self, now: float) -> None:
        for seq, probe in list(self._probes.items()):
            if not probe.indirect_sent and now >= probe.indirect_at:
                probe.indirect_sent = True
                for helper in self.probe_helpers(self.timings.indirect_checks, probe.target, now):
                    self._out.send(helper.addr, PingReq(seq, probe.target, probe.addr))
                # And a second direct ping, like memberlist's TCP fallback: one lost packet on the
                # direct path should not be enough to start a suspicion.
                self._out.send(probe.addr, Ping(seq, probe.target))
            if now >= probe.deadline:
                del self._probes[seq]
                m = self.members.get(probe.target)
                if m is not None and m.state in (State.ALIVE, State.SUSPECT) and not self.leaving:
                    self.on_suspect(Suspect(m.id, m.incarnation, self.me.id), now)

    # --- time ------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        if self._probes:
            self._check_probes(now)
        if now >= self._suspicion_due:
            self._suspicion_due = float("inf")
            for node in list(self._suspects):
                m = self.members[node]
                if now >= m.suspicion.deadline:  # type: ignore[union-attr]
                    self.on_dead(Dead(node, m.incarnation, self.me.id), now)
                else:
                    self._suspicion_due = min(self._suspicion_due, m.suspicion.deadline)  # type: ignore[union-attr]
        if now >= self._next_probe:
            if not self.leaving:
                self._start_probe(now)
            self._next_probe = max(self._next_probe + self.timings.probe_interval, now)
        if now >= self._next_housekeeping:
            self._housekeeping(now)
            self._next_housekeeping = now + 1.0

    def _housekeeping(self, now: float) -> None:
        if self._relays:  # indirect probes nobody answered; precision does not matter here
            for seq in [s for s, r in self._relays.items() if now >= r.deadline]:
                del self._relays[seq]
        # Both lists are in order of death, so only their fronts need looking at.
        recent = self._recent_dead
        while recent and not self._recently_dead(recent[0], now):
            recent.popleft()
        reap_before = now - self.timings.dead_reap_time
        expired = []
        for node in self._gone:
            if self.members[node].since >= reap_before:
                break
            expired.append(node)
        for node in expired:
            self._gone.pop(node, None)
            gone = self.members.pop(node)
            self._touched(node)
            if self.by_addr.get(gone.addr) == node:
                del self.by_addr[gone.addr]
            self._events.append(PeerForgotten(node))

    def next_deadline(self) -> float:
        deadline = min(self._next_probe, self._next_housekeeping, self._suspicion_due)
        for probe in self._probes.values():
            deadline = min(deadline, probe.deadline if probe.indirect_sent else probe.indirect_at)
        return deadline

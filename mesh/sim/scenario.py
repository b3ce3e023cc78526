"""The fleet scenario the simulator runs and the tests reuse: join, steady state, fresh images
and crashes, a 50/50 partition and its heal. Measures how fast a new image spreads, how fast a
crash is detected, false deaths over the whole run, the bytes each node sends in steady state
(HTTP framing included, see wirecost.py), and how fast views agree after a partition heals.

Timeline for `minutes` simulated minutes (T = 60 * minutes; shown for T = 600):
   0 -  30  nodes join one by one through a random earlier node (an autoscaling fleet)
  30 -  90  each node announces 50 images from a shared catalog, then the mesh settles
  90 - 150  steady state: bytes each node sends per second
 150 - 450  a new image every 2 s at a random node (rounds until every live node knows);
            a crash every 15 s (seconds until every live node marks it dead), restarted 60 s later,
            with at most 5% of the fleet down at once
 450 - 510  a 50/50 partition
 510 - 600  healed: seconds until all live nodes agree on members and manifest versions
Shorter runs scale the phases down (`minutes` >= 2).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

from mesh.protocol.events import PeerStateChanged
from mesh.protocol.liveness import State
from mesh.protocol.timings import Timings
from mesh.protocol.wire import ImageMeta
from mesh.sim.simnet import SimNetwork, SimNode


def _digest(i: int) -> str:
    return "sha256:" + f"{i:064x}"


@dataclass
class Results:
    nodes: int
    rounds_to_converge: list[float] = field(default_factory=list)
    detect_seconds: list[float] = field(default_factory=list)
    false_dead: set[str] = field(default_factory=set)
    steady_bytes: list[int] = field(default_factory=list)
    busiest_seconds: dict[str, float] = field(default_factory=dict)  # with breakdown: share by kind
    heal_seconds: float | None = None
    undelivered_injections: int = 0
    undetected_crashes: int = 0
    wall_messages: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes,
            "rounds_to_converge_p99": _pct(self.rounds_to_converge, 99),
            "seconds_to_detect_failure_max": round(max(self.detect_seconds), 2)
            if self.detect_seconds
            else None,
            "false_dead": len(self.false_dead),
            "bytes_per_node_per_second_p99": _pct(self.steady_bytes, 99),
            "seconds_to_converge_after_heal": None
            if self.heal_seconds is None
            else round(self.heal_seconds, 2),
            "injections": len(self.rounds_to_converge),
            "injections_not_converged": self.undelivered_injections,
            "crashes": len(self.detect_seconds),
            "crashes_not_detected": self.undetected_crashes,
            "rounds_to_converge_p50": _pct(self.rounds_to_converge, 50),
            "seconds_to_detect_failure_p50": _pct(self.detect_seconds, 50),
            "bytes_per_node_per_second_p50": _pct(self.steady_bytes, 50),
            "messages": self.wall_messages,
            **({"busiest_1pct_seconds_by_kind": self.busiest_seconds} if self.busiest_seconds else {}),
        }


def _pct(values: list[Any], p: float) -> Any:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))
    value = ordered[index]
    return round(value, 2) if isinstance(value, float) else value


class FleetScenario:
    def __init__(
        self,
        nodes: int,
        *,
        loss: float,
        seed: int,
        minutes: float,
        timings: Timings | None = None,
        breakdown: bool = False,
    ) -> None:
        """`breakdown`: also split the steady-state bytes by message type and report what the
        busiest 1% of node-seconds carried (same run, same figures otherwise)."""
        if minutes < 2:
            raise ValueError("the scenario needs at least 2 simulated minutes")
        self.timings = timings or Timings.lan()
        self.n = nodes
        self.rng = random.Random(seed)
        # Bytes are counted (envelopes encoded, HTTP framing added) only in the steady-state window
        # that reports them.
        self.net = SimNetwork(self.timings, seed=seed, loss=loss, count_bytes=False)
        self.net.count_kinds = breakdown
        self.scale = minutes / 10.0
        self.results = Results(nodes)
        self.catalog = [
            ImageMeta(_digest(i + 1), "", (_digest(10_000 + i),), 50_000_000, 1_700_000_000 + i)
            for i in range(200)
        ]
        self.images: dict[str, dict[str, tuple[str, ...]]] = {}
        self.all_metas: dict[str, ImageMeta] = {m.id: m for m in self.catalog}
        self._next_image = 1_000_000
        self._sides: dict[str, int] | None = None  # node ID -> side, from partition until views agree
        self._incarnations: dict[str, int] = {}
        self.seeds: dict[str, list[str]] = {}
        self._crashed: dict[str, float] = {}
        self._restarted_at: dict[str, float] = {}

    # --- phases --------------------------------------------------------------------------

    def t(self, seconds: float) -> float:
        return seconds * self.scale

    def run(self) -> Results:
        self.net.on_deliver = None
        self._join_phase()
        self._announce_phase()
        self._steady_phase()
        self._churn_phase()
        self._partition_phase()
        self.results.wall_messages = self.net.traffic.messages
        return self.results

    def _join_phase(self) -> None:
        net, end = self.net, self.t(30)
        joined: list[SimNode] = []
        for i in range(self.n):
            net.run_until(end * i / self.n)
            self._drain_false_dead()
            node = net.add_node()
            if joined:
                self.seeds[node.addr] = [a.addr for a in joined[:3]] + [self.rng.choice(joined).addr]
                node.core.join(self.seeds[node.addr], net.now)
                net.kick(node)
            joined.append(node)
        self._run_with_rejoin(end)

    def _run_with_rejoin(self, until: float) -> None:
        """Every node keeps contacting its seeds until they are live members, as the real node does
        (the fleet's first three nodes play the seed list a fleet would configure)."""
        net = self.net
        while net.now < until:
            net.run_until(min(until, net.now + 1.0))
            self._drain_false_dead()
            for node in list(net.nodes.values()):
                if node.up and node.addr in self.seeds:
                    node.core.join(self.seeds[node.addr], net.now)
                    net.kick(node)

    def _announce_phase(self) -> None:
        for node in self.net.nodes.values():
            held = self.rng.sample(self.catalog, 50)
            self.images[node.addr] = {m.id: (f"img{int(m.id[7:], 16)}:latest",) for m in held}
            node.core.set_local_images(self.images[node.addr], held, self.net.now)
            self.net.kick(node)
        self._run_with_rejoin(self.t(90))

    def _steady_phase(self) -> None:
        start, end = self.t(90), self.t(150)
        self.net.count_bytes = True
        while self.net.now < end:
            self.net.run_until(min(end, self.net.now + 1.0))
            self._drain_false_dead()
        self.net.count_bytes = False
        first, last = math.ceil(start), math.floor(end)
        per_second = self.net.traffic.per_second
        samples = []
        for addr in self.net.nodes:
            for second in range(first, last):
                samples.append(((addr, second), per_second.get((addr, second), 0)))
        self.results.steady_bytes = [n for _, n in samples]
        if self.net.count_kinds:
            busiest = sorted(samples, key=lambda s: -s[1])[: max(1, len(samples) // 100)]
            kinds: Counter[str] = Counter()
            for key, _ in busiest:
                kinds.update(self.net.traffic.kinds.get(key, Counter()))
            total = sum(kinds.values()) or 1
            self.results.busiest_seconds = {k: round(v / total, 3) for k, v in kinds.most_common()}

    def _churn_phase(self) -> None:
        net, start, end = self.net, self.t(150), self.t(450)
        pending_inj: list[tuple[float, str, str]] = []  # injected at, origin ID, image
        pending_crash: dict[str, float] = {}  # node ID -> crashed at
        next_inject, next_crash = start, start + 5
        gi = self.timings.gossip_interval
        while net.now < end:
            net.run_until(min(end, net.now + gi / 2))
            quiet = net.now >= end - 35  # let the last injections and crashes resolve before the partition
            if net.now >= next_inject and not quiet:
                pending_inj.append(self._inject())
                next_inject += 2 * max(self.scale, 0.25)
            # At most 5% of the fleet is down at once (at least one node), whatever the size.
            room = len(self._crashed) < max(1, self.n // 20)
            if net.now >= next_crash and not quiet and room:
                victim = self.rng.choice([n for n in net.live() if n.addr not in self._crashed])
                net.crash(victim.addr)
                self._crashed[victim.addr] = net.now
                pending_crash[victim.core.node_id] = net.now
                next_crash += 15 * max(self.scale, 0.25)
            for addr, at in list(self._crashed.items()):
                if net.now - at >= 60:
                    self._restart(addr)
            pending_inj = self._check_injections(pending_inj)
            pending_crash = self._check_crashes(pending_crash)
            self._drain_false_dead()
        # Added to, not assigned: injections that timed out during the phase were counted already.
        self.results.undelivered_injections += len(pending_inj)
        self.results.undetected_crashes += len(pending_crash)
        self._drain_false_dead()

    def _partition_phase(self) -> None:
        net = self.net
        for addr in list(self._crashed):
            self._restart(addr)
        heal = net.now + 60
        addrs = list(net.nodes)
        self.rng.shuffle(addrs)
        half = len(addrs) // 2
        net.partition([addrs[:half], addrs[half:]])
        self._sides = {n.core.node_id: n.group for n in net.nodes.values()}
        while net.now < heal:
            net.run_until(min(heal, net.now + 1.0))
            self._drain_false_dead()
        net.heal()
        deadline = max(heal + 30, self.t(600))
        while net.now < deadline:
            net.run_until(net.now + 0.5)
            self._drain_false_dead()
            if self._views_agree():
                self.results.heal_seconds = net.now - heal
                break
        self._sides = None
        net.run_until(net.now + 5)
        self._drain_false_dead()

    # --- injections, crashes -----------------------------------------------------------------

    def metas_of(self, images: dict[str, tuple[str, ...]]) -> list[ImageMeta]:
        return [self.all_metas[i] for i in images if i in self.all_metas]

    def _inject(self) -> tuple[float, str, str]:
        node = self.rng.choice(self.net.live())
        self._next_image += 1
        image = _digest(self._next_image)
        meta = ImageMeta(image, "", (_digest(self._next_image + 1_000_000),), 10_000_000, 1_800_000_000)
        self.images[node.addr][image] = (f"fresh{self._next_image}:latest",)
        self.all_metas[image] = meta
        node.core.set_local_images(self.images[node.addr], [meta], self.net.now)
        self.net.kick(node)
        return self.net.now, node.core.node_id, image

    def _check_injections(self, pending: list[tuple[float, str, str]]) -> list[tuple[float, str, str]]:
        live = self.net.live()
        still = []
        for at, origin, image in pending:
            if all(
                n.core.node_id == origin or image in n.core.manifests.replicas.get(origin, _EMPTY).entries
                for n in live
            ):
                elapsed = self.net.now - at
                self.results.rounds_to_converge.append(
                    math.ceil(elapsed / self.timings.gossip_interval - 1e-9)
                )
            elif self.net.now - at < 120:
                still.append((at, origin, image))
            else:
                self.results.undelivered_injections += 1
        return still

    def _check_crashes(self, pending: dict[str, float]) -> dict[str, float]:
        live = self.net.live()
        still = {}
        for victim, at in pending.items():
            seen_dead = True
            for n in live:
                m = n.core.membership.members.get(victim)
                if m is not None and m.state is not State.DEAD and m.incarnation <= self._victim_inc(victim):
                    seen_dead = False
                    break
            if seen_dead:
                self.results.detect_seconds.append(self.net.now - at)
            else:
                still[victim] = at
        return still

    def _victim_inc(self, node_id: str) -> int:
        return self._incarnations.get(node_id, 1 << 62)

    def _restart(self, addr: str) -> None:
        old = self.net.nodes[addr]
        inc = old.core.incarnation + 1
        self._incarnations[old.core.node_id] = old.core.incarnation
        node = self.net.restart(addr, incarnation=inc, manifest_version=int(self.net.now * 1000) + 10_000_000)
        self._crashed.pop(addr, None)
        self._restarted_at[node.core.node_id] = self.net.now
        node.core.join(self.seeds.get(addr, []), self.net.now)
        node.core.set_local_images(self.images[addr], self.metas_of(self.images[addr]), self.net.now)
        self.net.kick(node)

    # --- false positives ----------------------------------------------------------------------

    def _drain_false_dead(self) -> None:
        """A node marked dead while its process was up, and not from across a partition, is false.

        Called throughout the run, from the first join to after the heal: every phase counts."""
        by_id = {n.core.node_id: n for n in self.net.nodes.values()}
        for observer in self.net.nodes.values():
            for event in observer.core.drain_events():
                if not isinstance(event, PeerStateChanged) or event.new is not State.DEAD:
                    continue
                subject = by_id.get(event.node)
                if subject is None or not subject.up:
                    continue
                sides = self._sides
                if sides is not None and sides.get(event.node) != sides.get(observer.core.node_id):
                    continue  # across a partition a live node is rightly declared dead
                self.results.false_dead.add(event.node)

    def _views_agree(self) -> bool:
        live = self.net.live()
        truth = {n.core.node_id: n.core.manifests.own.version for n in live}
        for n in live:
            members = n.core.membership.members
            replicas = n.core.manifests.replicas
            for node_id, version in truth.items():
                m = members.get(node_id)
                if m is None or m.state is not State.ALIVE:
                    return False
                if node_id != n.core.node_id and (
                    node_id not in replicas or replicas[node_id].version != version
                ):
                    return False
        return True


class _Empty:
    entries: ClassVar[dict[str, Any]] = {}


_EMPTY = _Empty()

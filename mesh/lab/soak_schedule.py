"""The soak's schedule: what happens when, to which host, drawn from one seed. Pure.

A schedule names hosts by slot (0 .. hosts-1), never by name: a host replaced mid-run takes its
slot, so the same seed replays the same run. Events are spread over the duration with jitter;
the first faults are one of every kind in a shuffled order, so even a short run injects each.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

ACTIONS = ("build_classic", "build_buildkit", "push")
"""What the fleet does between faults: builds with each builder, and pushes to a node's registry."""

FAULTS = (
    "kill_node",  # SIGKILL the node; it starts again on its data dir
    "kill_engine",  # SIGKILL the host's dockerd; it starts again, the node stays
    "restart_engine",  # stop and start the host's dockerd
    "replace_host",  # SIGKILL node and dockerd, and a fresh host (new engine, no data) takes the slot
    "partition",  # a group of hosts cut off from the rest, then healed
    "netem",  # loss and delay on a host's link, then cleared
    "disk",  # an image larger than the small budget some nodes run with
    "upgrade",  # half the fleet restarted one by one (from the previous release if a wheel exists)
)

SETTLING = ("partition", "netem")
"""Faults that last: the mesh is expected to converge only once they end."""


@dataclass(frozen=True)
class Event:
    at: float  # seconds after the start
    kind: str  # one of ACTIONS or FAULTS
    slot: int  # the host it acts on
    lasts: float = 0.0  # for SETTLING faults: how long before it is undone
    size_mb: int = 0  # builds, pushes, disk: the image's payload
    group: tuple[int, ...] = ()  # partition: the slots cut off; upgrade: the slots restarted
    loss: float = 0.0  # netem: packet loss (%)
    delay_ms: int = 0  # netem: added one-way delay
    down: float = 0.0  # kill_node, kill_engine: seconds before it is started again


@dataclass(frozen=True)
class Plan:
    seed: int
    hosts: int
    duration: float
    events: list[Event] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for event in self.events:
            found[event.kind] = found.get(event.kind, 0) + 1
        return found


def budget_slots(hosts: int) -> list[int]:
    """The slots whose nodes run with a small --disk-budget: every third host, at least one."""
    return [s for s in range(hosts) if s % 3 == 2] or [hosts - 1]


def make_plan(seed: int, hosts: int, duration: float, every: float = 12.0, disk_mb: int = 40) -> Plan:
    """Events about every `every` seconds from 20 s in to 30 s before the end (the mesh then has
    that long to converge before the final check). About half are builds and pushes. `disk_mb`:
    the payload of a disk fault's image, more than the small budget."""
    if hosts < 3:
        raise ValueError("a soak needs at least 3 hosts (a partition needs a majority)")
    rng = random.Random(seed)
    start, end = 20.0, max(30.0, duration - 30.0)
    count = max(len(FAULTS) * 2, int((end - start) / every))
    step = (end - start) / count
    faults = list(FAULTS)
    rng.shuffle(faults)
    events: list[Event] = []
    for i in range(count):
        at = round(start + i * step + rng.uniform(0, step * 0.5), 1)
        if i % 2 == 0:
            kind = rng.choice(ACTIONS)
        elif faults:
            kind = faults.pop()  # one of each kind first
        else:
            kind = rng.choices(FAULTS, weights=(3, 2, 2, 2, 2, 2, 2, 1))[0]
        events.append(_event(rng, kind, at, hosts, min(step * 2, 45.0), disk_mb))
    return Plan(seed, hosts, duration, events)


def _event(rng: random.Random, kind: str, at: float, hosts: int, longest: float, disk_mb: int) -> Event:
    slot = rng.randrange(hosts)
    if kind in ("build_classic", "build_buildkit"):
        return Event(at, kind, slot, size_mb=rng.randint(1, 6))
    if kind == "push":
        return Event(at, kind, slot, size_mb=rng.randint(1, 3))
    if kind == "partition":
        cut = tuple(sorted(rng.sample(range(hosts), rng.randint(1, (hosts - 1) // 2))))
        return Event(at, kind, cut[0], lasts=round(rng.uniform(8, longest), 1), group=cut)
    if kind == "netem":
        return Event(
            at,
            kind,
            slot,
            lasts=round(rng.uniform(8, longest), 1),
            loss=round(rng.uniform(1, 8), 1),
            delay_ms=rng.randint(20, 150),
        )
    if kind in ("kill_node", "kill_engine"):
        return Event(at, kind, slot, down=round(rng.uniform(0, 4), 1))
    if kind == "disk":
        return Event(at, kind, slot, size_mb=disk_mb)
    if kind == "upgrade":
        return Event(at, kind, slot, group=tuple(sorted(rng.sample(range(hosts), hosts // 2))))
    return Event(at, kind, slot)

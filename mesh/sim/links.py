"""Bandwidth shared fairly between transfers: each node has an uplink and a downlink, and every
transfer in flight gets a max-min fair share of both (progressive filling, Bertsekas & Gallager,
Data Networks, 6.5.2). Pure.

A flow may also be bounded on its own (`cap`: it has nothing more to send for now) or tied to
another flow (`follows`): a relay that forwards an image while receiving it (cut-through) cannot
send faster than the image reaches it, so once its downstream has caught up with what it holds,
the downstream runs at most at the relay's own inflow rate.

This is a fluid model: no packets, no TCP dynamics, no slow start. A transfer of S bytes alone on
links of B bytes/s takes S/B (tests/test_fanout_sim.py).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

INF = float("inf")


@dataclass(eq=False, slots=True)
class Flow:
    src: str
    dst: str
    cap: float = INF
    """Bytes/s this flow cannot exceed whatever the links allow (0: stalled)."""
    follows: Flow | None = None
    """The flow whose rate bounds this one (its source's inflow, for a caught-up relay stream)."""
    rate: float = field(default=0.0, init=False)


def share(flows: Iterable[Flow], up: Mapping[str, float], down: Mapping[str, float]) -> None:
    """Set every flow's max-min fair `rate` under the nodes' uplink (`up`) and downlink (`down`)
    capacities in bytes/s, the flows' caps and their `follows` bounds.

    All flows not yet fixed rise together; the first resource to fill (or cap to be reached) fixes
    the flows it bounds at that level, and the rest go on rising. A flow that follows one being
    fixed is fixed with it: it can rise no further. A resource r fills at the level
    (capacity - what its fixed flows take) / (its rising flows), which changes only when one of
    its flows is fixed, so the next one to fill comes off a heap: O((flows + resources) log)."""
    flows = list(flows)
    index = {id(f): i for i, f in enumerate(flows)}
    capacity: dict[tuple[str, str], float] = {}
    members: dict[tuple[str, str], set[int]] = {}
    children: dict[int, list[int]] = {}
    rising: set[int] = set()
    for i, f in enumerate(flows):
        f.rate = 0.0
        if f.cap <= 0 or (f.follows is not None and id(f.follows) not in index):
            continue  # stalled, or following a flow that is not running: nothing moves
        rising.add(i)
        for key, cap in ((("up", f.src), up[f.src]), (("down", f.dst), down[f.dst])):
            capacity.setdefault(key, cap)
            members.setdefault(key, set()).add(i)
        if f.follows is not None:
            children.setdefault(index[id(f.follows)], []).append(i)
    fills: list[tuple[float, int, tuple[str, str]]] = []  # (level, version, resource)
    version: dict[tuple[str, str], int] = {}

    def push(key: tuple[str, str]) -> None:
        version[key] = version.get(key, 0) + 1
        if members[key]:
            heapq.heappush(fills, (capacity[key] / len(members[key]), version[key], key))

    def fix(i: int, rate: float) -> None:
        flows[i].rate = rate
        rising.discard(i)
        for key in (("up", flows[i].src), ("down", flows[i].dst)):
            if i in members.get(key, ()):
                members[key].discard(i)
                capacity[key] -= rate
                push(key)

    def fix_with_followers(start: list[int], rate: float) -> None:
        todo = [i for i in start if i in rising]
        for i in todo:
            rising.discard(i)  # claimed: a follower met twice is fixed once
        while todo:
            i = todo.pop()
            rising.add(i)
            fix(i, rate)
            for child in children.get(i, ()):
                if child in rising:
                    rising.discard(child)
                    todo.append(child)

    # a follower of a stalled flow is stalled too
    stalled = [i for i in range(len(flows)) if i not in rising]
    while stalled:
        for child in children.pop(stalled.pop(), []):
            if child in rising:
                fix(child, 0.0)
                stalled.append(child)
    for key in members:
        push(key)
    caps = [(flows[i].cap, i) for i in rising if flows[i].cap < INF]
    heapq.heapify(caps)
    while rising:
        while fills and (fills[0][1] != version[fills[0][2]] or not members[fills[0][2]]):
            heapq.heappop(fills)  # superseded by a later level of the same resource
        while caps and caps[0][1] not in rising:
            heapq.heappop(caps)
        fill_level = fills[0][0] if fills else INF
        if caps and caps[0][0] < fill_level:
            level, i = heapq.heappop(caps)
            fix_with_followers([i], level)
        elif fills:
            level, _, key = heapq.heappop(fills)
            fix_with_followers(sorted(members[key]), level)
        else:  # only unbounded flows on unbounded links: cannot happen with finite capacities
            raise ValueError("a flow with no finite bound")

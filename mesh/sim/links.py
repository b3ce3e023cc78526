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
    fixed is fixed with it: it can rise no further."""
    flows = list(flows)
    level = 0.0
    remaining: dict[tuple[str, str], float] = {}
    members: dict[tuple[str, str], set[int]] = {}
    children: dict[int, list[int]] = {}
    index = {id(f): i for i, f in enumerate(flows)}
    rising: set[int] = set()
    for i, f in enumerate(flows):
        f.rate = 0.0
        if f.cap <= 0 or (f.follows is not None and id(f.follows) not in index):
            continue  # stalled, or following a flow that is not running: nothing moves
        rising.add(i)
        for key, capacity in ((("up", f.src), up[f.src]), (("down", f.dst), down[f.dst])):
            remaining.setdefault(key, capacity)
            members.setdefault(key, set()).add(i)
        if f.follows is not None:
            children.setdefault(index[id(f.follows)], []).append(i)
    # a follower of a stalled flow is stalled too
    stalled = [i for i, f in enumerate(flows) if i not in rising]
    while stalled:
        for child in children.pop(stalled.pop(), []):
            if child in rising:
                _fix(child, 0.0, flows, rising, remaining, members, level)
                stalled.append(child)
    while rising:
        # the level at which the next resource fills, or the next cap is reached
        best, full = INF, []
        for key, flow_ids in members.items():
            if flow_ids:
                at = level + remaining[key] / len(flow_ids)
                if at < best - 1e-9 * max(1.0, best if best < INF else 1.0):
                    best, full = at, [key]
                elif abs(at - best) <= 1e-9 * max(1.0, best):
                    full.append(key)
        capped = min((flows[i].cap for i in rising), default=INF)
        if capped < best:
            best, full = capped, []
        fixed = {i for i in rising if flows[i].cap <= best}
        for key in full:
            fixed |= members[key]
        # followers cannot rise past what they follow
        todo = list(fixed)
        while todo:
            for child in children.get(todo.pop(), []):
                if child in rising and child not in fixed:
                    fixed.add(child)
                    todo.append(child)
        for i in fixed:
            _fix(i, best, flows, rising, remaining, members, level)
        # every flow still rising has taken (best - level) more of each resource it uses
        grow = best - level
        for key, flow_ids in members.items():
            if flow_ids:
                remaining[key] -= grow * len(flow_ids)
        level = best


def _fix(
    i: int,
    rate: float,
    flows: list[Flow],
    rising: set[int],
    remaining: dict[tuple[str, str], float],
    members: dict[tuple[str, str], set[int]],
    level: float,
) -> None:
    """Flow i stops rising at `rate`: it takes what it gained above `level` from its resources."""
    f = flows[i]
    f.rate = rate
    rising.discard(i)
    for key in (("up", f.src), ("down", f.dst)):
        if key in members and i in members[key]:
            members[key].discard(i)
            remaining[key] -= rate - level

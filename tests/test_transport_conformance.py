"""One scripted scenario over both transports: the simulated network (in memory) and real HTTP
between nodes (aiohttp, signed requests). Both must end in the same views: the same members in
the same states, and the same manifests (what each member holds, with its tags)."""

from __future__ import annotations

import asyncio

import pytest

from mesh.engine.fake import FakeEngine
from mesh.lab.poll import async_wait_until
from mesh.protocol.liveness import State
from mesh.protocol.timings import Timings
from mesh.protocol.wire import ImageMeta
from mesh.sim.simnet import SimNetwork
from tests.inproc import start_node

NAMES = ["n0", "n1", "n2"]


def view(cores) -> dict[str, object]:
    """Everything a node believes, by name: members' states and what each member holds."""
    out = {}
    for core in cores:
        names = {m.id: m.name for m in core.membership.members.values()}
        members = {names[i]: m.state.label for i, m in core.membership.members.items() if i != core.node_id}
        # Holdings as the node's view gives them: a node's status entry (zone, load) is no holding.
        holdings = {
            names.get(node, node): sorted(core.view.holdings(node).values())
            for node in core.manifests.replicas
            if node in names
        }
        out[core.membership.me.name] = (members, holdings)
    return out


def expected(left: str) -> dict[str, object]:
    out = {}
    for me in NAMES:
        if me == left:
            continue
        members = {n: ("left" if n == left else "alive") for n in NAMES if n != me}
        holdings = {n: [("img-" + n + ":1",)] for n in NAMES}
        out[me] = (members, holdings)
    return out


async def run_over_http(workdir) -> dict[str, object]:
    engines = {n: FakeEngine() for n in NAMES}
    # Each node shares, and wants, only its own image (--include), as the simulated cores, which run
    # no planner, do: so manifests can be compared exactly, not only membership.
    first = await start_node(workdir, "n0", engine=engines["n0"], include=("img-n0:*",))
    nodes = [first] + [
        await start_node(workdir, n, engine=engines[n], seeds=(first.peer_addr,), include=(f"img-{n}:*",))
        for n in NAMES[1:]
    ]
    try:
        await async_wait_until(lambda: all(len(n.core.membership.live_ids()) == 2 for n in nodes), 10)
        for name in NAMES:
            engines[name].build(f"img-{name}:1", [name.encode()])
        await async_wait_until(
            lambda: all(len(n.core.view.holdings(m.node_id)) == 1 for n in nodes for m in nodes),
            15,
            what="every node knows every node's image",
        )
        await nodes[2].stop()
        await async_wait_until(
            lambda: all(n.core.membership.members[nodes[2].node_id].state is State.LEFT for n in nodes[:2]), 5
        )
        return view([n.core for n in nodes[:2]])
    finally:
        for n in nodes[:2]:
            await n.stop()


def run_in_memory() -> dict[str, object]:
    net = SimNetwork(Timings.local(), seed=3, strict_wire=True)
    sims = [net.add_node() for _ in NAMES]
    for sim, name in zip(sims, NAMES, strict=True):
        sim.core.membership.me.name = name
    for _ in range(50):
        for sim in sims[1:]:
            sim.core.join([sims[0].addr], net.now)
            net.kick(sim)
        net.run_until(net.now + 0.1)
    for i, (sim, name) in enumerate(zip(sims, NAMES, strict=True)):
        meta = ImageMeta("sha256:" + f"{i + 1:064x}", "", ("sha256:" + f"{i + 100:064x}",), 1, 1)
        sim.core.set_local_images({meta.id: (f"img-{name}:1",)}, [meta], net.now)
        net.kick(sim)
    net.run_until(net.now + 10)
    sims[2].core.leave(net.now)
    net.kick(sims[2])
    net.run_until(net.now + 2)
    return view([s.core for s in sims[:2]])


@pytest.mark.parametrize("transport", ["memory", "http"])
async def test_the_same_scenario_ends_in_the_same_views(transport, workdir):
    if transport == "memory":
        result = await asyncio.to_thread(run_in_memory)
    else:
        result = await run_over_http(workdir)
    assert result == expected("n2")

"""Deterministic scenarios at small N: the real MeshCore over the simulated network."""

import pytest

from mesh.config import Config
from mesh.protocol import sources
from mesh.protocol.liveness import State
from mesh.protocol.timings import Timings
from mesh.protocol.wire import ImageMeta, Suspect
from mesh.sim.fanout import ONE_LAYER, FanoutParams, fanout_ratios, fanout_time
from mesh.sim.simnet import SimNetwork

LAN = Timings.lan()


def digest(n):
    return "sha256:" + f"{n:064x}"


def cluster(n, *, loss=0.0, seed=7):
    net = SimNetwork(LAN, seed=seed, loss=loss, strict_wire=True)
    nodes = [net.add_node() for _ in range(n)]

    def joined():
        # Like the node's discovery loop: keep contacting the seed until it is a live member.
        for node in nodes[1:]:
            node.core.join([nodes[0].addr], net.now)
            net.kick(node)
        return all(len(x.core.membership.live_ids()) == n - 1 for x in nodes)

    run_until(net, joined, 30)
    return net, nodes


def run_until(net, condition, limit, step=0.1):
    deadline = net.now + limit
    while net.now < deadline:
        if condition():
            return net.now
        net.run_until(net.now + step)
    raise AssertionError(f"condition not met within {limit} simulated seconds")


def state_of(observer, subject):
    member = observer.core.membership.members.get(subject.core.node_id)
    return None if member is None else member.state


def announce(net, node, n):
    meta = ImageMeta(digest(n), "", (digest(1000 + n),), 10, 100 + n)
    images = {**node.core.manifests.own.entries}
    current = {i: tags for i, (tags, _) in images.items()}
    current[meta.id] = (f"img{n}:latest",)
    node.core.set_local_images(current, [meta], net.now)
    net.kick(node)
    return meta.id


def known_everywhere(nodes, origin, image):
    return all(
        n is origin
        or image in n.core.manifests.replicas.get(origin.core.node_id, type("R", (), {"entries": {}})).entries
        for n in nodes
        if n.up
    )


def test_join_and_a_new_image_reaches_everyone_with_its_metadata():
    net, nodes = cluster(12)
    image = announce(net, nodes[3], 1)
    run_until(net, lambda: known_everywhere(nodes, nodes[3], image), 5)
    run_until(net, lambda: all(image in n.core.manifests.metas for n in nodes), 5)


def test_same_seed_same_run():
    def trace():
        net, nodes = cluster(10, loss=0.05, seed=3)
        announce(net, nodes[2], 5)
        net.run_until(net.now + 20)
        return [
            (n.core.incarnation, n.core.manifests.version_of(nodes[2].core.node_id)) for n in nodes
        ], net.traffic.messages

    assert trace() == trace()


def test_crash_is_detected_by_everyone_and_nobody_else_dies_under_loss():
    net, nodes = cluster(20, loss=0.05)
    victim = nodes[5]
    net.crash(victim.addr)
    crashed_at = net.now
    detected = run_until(net, lambda: all(state_of(n, victim) is State.DEAD for n in net.live()), 30)
    assert detected - crashed_at < 20
    net.run_until(net.now + 60)
    for observer in net.live():
        for subject in net.live():
            assert state_of(observer, subject) in (State.ALIVE, None if observer is subject else State.ALIVE)


def test_a_false_suspicion_is_refuted_with_a_higher_incarnation():
    net, nodes = cluster(8)
    accused = nodes[4]
    before = accused.core.incarnation
    nodes[0].core.receive(
        type("E", (), {})  # placeholder replaced below
        if False
        else __import__("mesh.protocol.wire", fromlist=["Envelope"]).Envelope(
            nodes[1].core.node_id,
            nodes[1].addr,
            (Suspect(accused.core.node_id, before, nodes[1].core.node_id),),
            1,
        ),
        net.now,
    )
    net.kick(nodes[0])
    assert state_of(nodes[0], accused) is State.SUSPECT
    run_until(net, lambda: all(state_of(n, accused) is State.ALIVE for n in nodes if n is not accused), 10)
    assert accused.core.incarnation > before
    assert all(
        n.core.membership.members[accused.core.node_id].incarnation > before
        for n in nodes
        if n is not accused
    )


def test_partition_then_heal_converges_members_and_manifests():
    net, nodes = cluster(16, loss=0.02)
    left, right = nodes[:8], nodes[8:]
    net.partition([[n.addr for n in left], [n.addr for n in right]])
    run_until(net, lambda: all(state_of(a, b) is State.DEAD for a in left for b in right), 90)
    image = announce(net, right[2], 9)  # changes on one side during the partition
    net.run_until(net.now + 10)
    assert not known_everywhere(nodes, right[2], image)
    net.heal()
    run_until(net, lambda: all(state_of(a, b) is State.ALIVE for a in nodes for b in nodes if a is not b), 30)
    run_until(net, lambda: known_everywhere(nodes, right[2], image), 30)


def test_a_crashed_node_rejoins_with_a_higher_incarnation_and_its_new_manifest():
    net, nodes = cluster(10)
    victim = nodes[3]
    old_inc = victim.core.incarnation
    net.crash(victim.addr)
    run_until(net, lambda: all(state_of(n, victim) is State.DEAD for n in net.live()), 40)
    back = net.restart(victim.addr, incarnation=old_inc + 1, manifest_version=10**9)
    back.core.join([nodes[0].addr], net.now)
    image = announce(net, back, 3)
    run_until(net, lambda: all(state_of(n, back) is State.ALIVE for n in net.live() if n is not back), 20)
    run_until(net, lambda: known_everywhere(net.live(), back, image), 20)


def test_leave_is_seen_at_once_and_during_a_partition_by_its_own_side():
    net, nodes = cluster(10)
    leaver = nodes[2]
    leaver.core.leave(net.now)
    net.kick(leaver)
    run_until(net, lambda: all(state_of(n, leaver) is State.LEFT for n in nodes if n is not leaver), 3)

    net2, nodes2 = cluster(10, seed=11)
    side_a, side_b = nodes2[:5], nodes2[5:]
    net2.partition([[n.addr for n in side_a], [n.addr for n in side_b]])
    leaver = side_a[1]
    leaver.core.leave(net2.now)
    net2.kick(leaver)
    run_until(net2, lambda: all(state_of(n, leaver) is State.LEFT for n in side_a if n is not leaver), 3)
    net2.crash(leaver.addr)
    net2.run_until(net2.now + 20)
    net2.heal()
    # After the heal both sides agree on every live member; the other side, which declared the
    # leaver dead during the partition, never resurrects it, and its own side still knows it left.
    run_until(
        net2,
        lambda: all(state_of(x, y) is State.ALIVE for x in net2.live() for y in net2.live() if x is not y),
        30,
    )
    net2.run_until(net2.now + 30)
    assert all(state_of(n, leaver) in (State.DEAD, State.LEFT) for n in side_b)
    assert all(state_of(n, leaver) is State.LEFT for n in side_a if n is not leaver)


def test_removed_images_leave_tombstones_that_spread():
    net, nodes = cluster(6)
    image = announce(net, nodes[1], 4)
    run_until(net, lambda: known_everywhere(nodes, nodes[1], image), 5)
    nodes[1].core.set_local_images({}, [], net.now)
    net.kick(nodes[1])
    run_until(
        net,
        lambda: all(
            image not in n.core.manifests.replicas[nodes[1].core.node_id].entries
            for n in nodes
            if n is not nodes[1]
        ),
        5,
    )


def test_a_joiner_into_a_busy_cluster_gets_every_manifest_by_delta():
    net, nodes = cluster(10)
    images = [announce(net, node, i) for i, node in enumerate(nodes)]
    net.run_until(net.now + 5)
    late = net.add_node()
    late.core.join([nodes[4].addr], net.now)
    net.kick(late)
    run_until(
        net,
        lambda: all(known_everywhere([late], node, image) for node, image in zip(nodes, images, strict=True)),
        15,
    )


@pytest.mark.slow
def test_simulator_at_200_nodes_meets_the_1000_node_bars():
    from mesh.sim.scenario import FleetScenario

    summary = FleetScenario(200, loss=0.05, seed=1, minutes=4).run().summary()
    assert summary["rounds_to_converge_p99"] <= 12
    assert summary["seconds_to_detect_failure_max"] <= 30
    assert summary["false_dead"] == 0
    assert summary["bytes_per_node_per_second_p99"] <= 10_240
    assert summary["seconds_to_converge_after_heal"] is not None
    assert summary["seconds_to_converge_after_heal"] <= 30
    assert summary["injections_not_converged"] == 0 and summary["crashes_not_detected"] == 0


def test_image_metadata_is_content_addressed_and_fetched_once_per_node():
    net, nodes = cluster(10)
    shared = [ImageMeta(digest(500 + i), "", (digest(600 + i),), 10, 1000 + i) for i in range(5)]
    for node in nodes:
        node.core.set_local_images({m.id: (f"shared{i}:1",) for i, m in enumerate(shared)}, shared, net.now)
        net.kick(node)
    net.run_until(net.now + 10)
    late = net.add_node()
    asked: list[str] = []

    def spy(src, dst, envelope):
        if src == late.addr:
            asked.extend(i for m in envelope.messages if type(m).__name__ == "MetaWant" for i in m.images)
        return False

    net.drop_hook = spy
    late.core.join([nodes[0].addr], net.now)
    net.kick(late)
    run_until(net, lambda: all(m.id in late.core.manifests.metas for m in shared), 15)
    net.run_until(net.now + 5)
    assert sorted(asked) == sorted(m.id for m in shared)  # 10 holders, each description fetched once


def test_large_state_is_split_into_messages_under_the_cap():
    from mesh.protocol import wire
    from mesh.protocol.core import MeshCore

    timings = LAN.replace(max_message_bytes=32 * 1024)  # the summary (~61 kB) cannot fit one
    core = MeshCore(timings, "me", "me", "10.0.0.1:1", now=0.0)
    for i in range(1500):
        address = f"10.1.{i // 250}.{i % 250}:7611"
        core.membership.on_alive(wire.Alive(f"node-{i:05d}", f"host-{i}", address, 1), 0.0)
    core.drain()
    core.receive(wire.Envelope("peer", "10.9.9.9:1", (wire.SyncDigest((0,) * 64),), 1), 1.0)
    out = core.drain()
    sizes = [len(wire.encode(o.envelope)) for o in out]
    summaries = [m for o in out for m in o.envelope.messages if isinstance(m, wire.SyncSummary)]
    assert len(out) > 1 and max(sizes) <= timings.max_message_bytes
    assert sum(len(s.entries) for s in summaries) == 1501


def test_the_incremental_digest_always_equals_a_full_recompute():
    from mesh.protocol.antientropy import compute_digest

    net, nodes = cluster(16, loss=0.05, seed=21)
    for i, node in enumerate(nodes[:6]):
        announce(net, node, 700 + i)
    net.crash(nodes[3].addr)
    net.partition([[n.addr for n in nodes[:8]], [n.addr for n in nodes[8:]]])
    for _ in range(4):
        net.run_until(net.now + 15)
        for node in net.live():
            core = node.core
            full = compute_digest(core.membership.members.values(), core.manifests.version_of)
            assert core._digest() == full
        net.heal()


def test_a_lost_metadata_reply_is_asked_for_again():
    net, nodes = cluster(6)
    dropped = []
    until = net.now + 6  # longer than the rumour lives, so only the re-ask can recover

    def drop_metas(src, dst, envelope):
        has_metas = any(type(m).__name__ == "Metas" for m in envelope.messages)
        if dst == nodes[5].addr and net.now < until and has_metas:
            dropped.append(src)
            return True
        return False

    net.drop_hook = drop_metas
    image = announce(net, nodes[0], 42)
    net.run_until(until)
    assert dropped and image not in nodes[5].core.manifests.metas
    run_until(net, lambda: image in nodes[5].core.manifests.metas, 10)


def test_the_bytes_breakdown_changes_no_figure_and_accounts_for_every_byte():
    from mesh.sim.scenario import FleetScenario

    plain = FleetScenario(30, loss=0.05, seed=2, minutes=2).run().summary()
    split = FleetScenario(30, loss=0.05, seed=2, minutes=2, breakdown=True).run().summary()
    shares = split.pop("busiest_1pct_seconds_by_kind")
    assert split == plain
    assert abs(sum(shares.values()) - 1) < 0.01 and any(kind.startswith("Ping") for kind in shares)


def test_fan_out_of_one_layer_to_10_100_and_1000_new_hosts_meets_the_targets():
    """One 64 MB one-layer image to N new hosts that hold none of it, at once, on equal
    200 Mbit/s links: the real planner picks the sources, the real hand-off rule
    (sources.relay_to) answers, receivers relay as they receive. Targets (issue 10): 100 hosts in
    at most 3x the time of one, 1,000 in at most 5x; ten, one chain, in little more than one.
    (Bursts with held sets: tests/test_fanout_held_sim.py.)"""
    ratios = fanout_ratios((10, 100, 1000), **ONE_LAYER)
    assert ratios["fanout_ratio_100"] <= 3.0, ratios
    assert ratios["fanout_ratio_1000"] <= 5.0, ratios
    assert ratios["fanout_ratio_10"] <= 1.5, ratios
    hundred = fanout_time(FanoutParams(100, **ONE_LAYER))
    # the first holder's uplink carried one copy, not a hundred; nobody was turned away
    assert hundred.sources["n0"] == 1 and hundred.busy == 0
    assert max(hundred.sources.values()) == sources.BRANCH
    # a chain of CHAIN_DEPTH hops, then 91 hosts in a binary tree: 2 + 4 + ... + 64, 6 levels
    assert hundred.depth <= sources.CHAIN_DEPTH + 7
    # without relaying, only whole copies serve: 4 streams at once from the first holder, and
    # later ones from hosts that already finished
    store_and_forward = fanout_ratios((100,), relay=False, **ONE_LAYER)
    assert store_and_forward["fanout_ratio_100"] > 20, store_and_forward


def test_a_chain_alone_misses_the_target_at_100_hosts(monkeypatch):
    # why the rule branches: with hand-offs only ever to the newest relay, the 33rd request
    # reaches the hop cap, and the relay there must serve every later one (4 at once, 32 queued,
    # the rest turned away and retried)
    monkeypatch.setattr(sources, "CHAIN_DEPTH", 10_000)
    chain = fanout_time(FanoutParams(100))
    assert chain.seconds / fanout_time(FanoutParams(1)).seconds > 5
    assert chain.busy > 0 and chain.depth > FanoutParams(1).max_handoffs


def test_the_simulator_mirrors_the_nodes_burst_constants():
    from mesh.net.server import BUSY_RETRY_AFTER
    from mesh.node.puller import FAILOVER_PAUSE, MAX_HANDOFFS

    p = FanoutParams(1)
    assert (p.max_handoffs, p.busy_retry_after, p.failover_pause) == (
        MAX_HANDOFFS,
        BUSY_RETRY_AFTER,
        FAILOVER_PAUSE,
    )
    assert (p.max_uploads, p.upload_queue) == (Config.lan().max_transfers_out, Config.lan().upload_queue)

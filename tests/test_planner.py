from typing import Any

from mesh.protocol.planner import Failure, Peer, plan, tag_allowed, winners
from mesh.protocol.tagsets import MAX_TAGSETS, TagSet
from mesh.protocol.wire import MAX_TAGS, ImageMeta


def d(n):
    return "sha256:" + f"{n:064x}"


BASE, MID, APP, APP2, OTHER = d(1), d(2), d(3), d(4), d(5)
METAS = {
    BASE: ImageMeta(BASE, "", (d(101),), 100, 1000),
    MID: ImageMeta(MID, BASE, (d(101), d(102)), 200, 1001),
    APP: ImageMeta(APP, MID, (d(101), d(102), d(103)), 300, 1002),
    APP2: ImageMeta(APP2, "", (d(104),), 400, 2000),
    OTHER: ImageMeta(OTHER, "", (d(105),), 50, 1500),
}
PEERS = {"a": Peer("a", True, 0.010), "b": Peer("b", True, 0.002), "c": Peer("c", False, 0.001)}


def run(local=None, remote=None, **kw):
    args = dict(
        local=local or {},
        remote=remote or {},
        metas=METAS,
        peers=PEERS,
        in_flight={},
        failures={},
        evicted={},
        max_pulls=2,
        max_attempts=3,
        now=100.0,
    )
    args.update(kw)
    return plan(**args)


def test_pulls_every_tagged_image_from_the_nearest_live_holder():
    remote = {
        "a": {BASE: ("base:1",), OTHER: ("tool:1",)},
        "b": {BASE: ("base:1",)},
        "c": {OTHER: ("tool:1",)},
    }
    p = run(remote=remote)
    assert [(x.image, x.source) for x in p.pulls] == [(BASE, "b"), (OTHER, "a")]  # b is nearer; c is dead
    assert p.missing == [BASE, OTHER] and not p.warm


def test_a_chain_pull_brings_its_ancestors_so_they_wait():
    remote = {"a": {BASE: ("base:1",), MID: (), APP: ("app:1",)}}
    p = run(remote=remote)
    assert [x.image for x in p.pulls] == [APP]
    assert set(p.missing) == {BASE, APP}


def test_ancestor_is_pulled_when_its_descendant_cannot_be():
    remote = {"a": {BASE: ("base:1",), MID: (), APP: ("app:1",)}}
    p = run(remote=remote, failures={APP: Failure(1, 500.0, {"a"})})
    assert [x.image for x in p.pulls] == [BASE]


def test_newest_image_wins_a_tag_and_local_tags_move():
    remote = {"a": {APP: ("app:latest",), APP2: ("app:latest",)}}
    assert winners(remote.values(), METAS, (), ()) == {"app:latest": APP2}
    p = run(local={APP2: ()}, remote=remote)
    assert [(t.image, t.tag) for t in p.tags] == [(APP2, "app:latest")]
    assert p.pulls == []


def test_a_rebuild_here_in_the_same_second_as_the_mesh_image_keeps_its_tag():
    # Creation times have one-second resolution: a code-only rebuild right after the shared build
    # ties with it, and the tie's ID order must not move the host's own build off its tag.
    first, rebuild = d(9), d(8)  # the mesh's image has the higher ID: it would win the tie
    metas = {
        **METAS,
        first: ImageMeta(first, "", (d(109),), 10, 3000),
        rebuild: ImageMeta(rebuild, "", (d(108),), 10, 3000),
    }
    remote = {"b": {first: ("app:latest",)}}
    p = run(local={rebuild: ("app:latest",), first: ()}, remote=remote, metas=metas, brought=set())
    assert p.tags == [] and p.kept == ["app:latest"]


def test_failed_images_back_off_then_prefer_another_source_and_stop_blocking_readiness():
    remote = {"a": {OTHER: ("tool:1",)}, "b": {OTHER: ("tool:1",)}}
    waiting = run(remote=remote, failures={OTHER: Failure(1, 200.0, {"b"})})
    assert waiting.pulls == [] and not waiting.warm
    retry = run(remote=remote, failures={OTHER: Failure(1, 50.0, {"b"})})
    assert [x.source for x in retry.pulls] == ["a"]
    given_up = run(remote=remote, failures={OTHER: Failure(3, 200.0, {"a", "b"})})
    assert given_up.given_up == [OTHER] and given_up.warm


def test_evicted_in_flight_filters_and_concurrency():
    remote = {"a": {BASE: ("base:1",), OTHER: ("tool:1",), APP2: ("app:2",)}}
    assert [x.image for x in run(remote=remote, evicted={OTHER: "tool:1"}).pulls] == [BASE, APP2]
    assert [x.image for x in run(remote=remote, in_flight={BASE: "a"}).pulls] == [OTHER]
    assert [x.image for x in run(remote=remote, exclude=("tool:*",)).pulls] == [BASE, APP2]
    assert [x.image for x in run(remote=remote, include=("app:*",)).pulls] == [APP2]


def test_an_evicted_image_the_engine_still_lists_is_not_tagged_back():
    remote = {"a": {OTHER: ("tool:1",)}}
    assert [(t.image, t.tag) for t in run(local={OTHER: ()}, remote=remote).tags] == [(OTHER, "tool:1")]
    evicting = run(local={OTHER: ()}, remote=remote, evicted={OTHER: "tool:1"})
    assert evicting.tags == [] and evicting.pulls == [] and evicting.missing == []


def test_an_image_its_pull_has_loaded_but_not_yet_checked_is_left_for_the_pull_to_tag():
    remote = {"a": {OTHER: ("tool:1",)}}
    loading = run(local={OTHER: ()}, remote=remote, in_flight={OTHER: "a"})
    assert loading.tags == [] and loading.pulls == [] and loading.missing == []
    done = run(local={OTHER: ()}, remote=remote)
    assert [(t.image, t.tag) for t in done.tags] == [(OTHER, "tool:1")]


def test_images_without_metadata_wait_and_held_images_make_a_node_warm():
    remote = {"a": {d(77): ("mystery:1",)}}
    assert run(remote=remote).pulls == []
    assert run(local={BASE: ("base:1",)}, remote={"a": {BASE: ("base:1",)}}).warm


def test_tag_filters():
    assert tag_allowed("app:1", (), ())
    assert not tag_allowed("app:1", (), ("app:*",))
    assert tag_allowed("app:1", ("app:*",), ())
    assert not tag_allowed("tool:1", ("app:*",), ())


def test_registry_entries_are_not_images():
    """Registry manifests ride in the manifest gossip (mesh/protocol/oci.py); the planner skips them."""
    from mesh.protocol import oci

    manifest = d(200)
    meta = oci.registry_meta(manifest, [d(201), d(202)], 300)
    remote = {"a": {meta.id: oci.announce(manifest, {"cache/app:ms": 5}), BASE: ("base:1",)}}
    result = run(remote=remote, metas={**METAS, meta.id: meta})
    assert [p.image for p in result.pulls] == [BASE]
    assert result.missing == [BASE]
    assert oci.holders(d(202), remote, {meta.id: meta}) == ["a"]
    assert oci.holders(manifest, remote, {}) == ["a"]
    assert oci.holders(d(203), remote, {meta.id: meta}) == []


# --- source choice: a tree, not a star (mesh.protocol.sources) --------------------------------

from mesh.protocol import nodestatus, sources  # noqa: E402
from mesh.protocol.sources import (  # noqa: E402
    BRANCH,
    CHAIN_DEPTH,
    Downstream,
    Penalty,
    penalise,
    relay_to,
    worth_relaying,
)


def source_of(peers, remote=None, **kw):
    remote = remote if remote is not None else {p: {OTHER: ("tool:1",)} for p in ("h1", "h2")}
    p = run(remote=remote, peers=peers, **kw)
    assert [x.image for x in p.pulls] == [OTHER]
    return p.pulls[0]


def test_a_busy_holder_loses_to_an_idle_one_even_if_nearer():
    peers = {"h1": Peer("h1", True, 0.001, uploads=2), "h2": Peer("h2", True, 0.004)}
    assert source_of(peers).source == "h2"
    # Equal load: RTT decides.
    peers = {"h1": Peer("h1", True, 0.001, uploads=1), "h2": Peer("h2", True, 0.004, uploads=1)}
    assert source_of(peers).source == "h1"


def test_same_zone_is_preferred_over_a_lighter_peer_elsewhere():
    peers = {"h1": Peer("h1", True, 0.001, zone="b"), "h2": Peer("h2", True, 0.001, zone="a", uploads=2)}
    assert source_of(peers, zone="a").source == "h2"
    # No zone here: zones do not matter, load does.
    assert source_of(peers).source == "h1"


def test_a_relay_is_chosen_when_the_holder_is_busy_and_only_for_its_own_store():
    remote = {"h1": {OTHER: ("tool:1",)}}
    peers = {
        "h1": Peer("h1", True, 0.001, uploads=1),
        "r1": Peer("r1", True, 0.001, receiving={OTHER: "graph"}),
    }
    pull = source_of(peers, remote, store="graph", me="me")
    assert (pull.source, pull.via_relay) == ("r1", True)
    # A relay streams for its own store: a containerd receiver goes to the holder.
    assert source_of(peers, remote, store="containerd").source == "h1"
    # An idle holder beats an idle relay (a relay may still fail).
    idle = {**peers, "h1": Peer("h1", True, 0.001)}
    assert source_of(idle, remote, store="graph").source == "h1"


def test_a_dead_relay_is_ignored():
    remote = {"h1": {OTHER: ("tool:1",)}}
    peers = {
        "h1": Peer("h1", True, 0.001, uploads=3),
        "r1": Peer("r1", False, 0.001, receiving={OTHER: "graph"}),
    }
    assert source_of(peers, remote, store="graph").source == "h1"


def test_pulls_of_one_plan_and_pulls_in_flight_count_as_load():
    remote = {p: {OTHER: ("tool:1",), APP2: ("app:2",), BASE: ("base:1",)} for p in ("h1", "h2")}
    peers = {"h1": Peer("h1", True, 0.001), "h2": Peer("h2", True, 0.001)}
    p = run(remote=remote, peers=peers, max_pulls=2)
    assert len(p.pulls) == 2 and p.pulls[0].source != p.pulls[1].source
    p = run(remote=remote, peers=peers, max_pulls=2, in_flight={BASE: "h1"})
    assert [x.source for x in p.pulls] == ["h2"]


def test_penalised_peers_lose_preference_until_the_penalty_expires():
    peers = {"h1": Peer("h1", True, 0.001), "h2": Peer("h2", True, 0.004, uploads=1)}
    assert source_of(peers).source == "h1"
    hurt = {"h1": Penalty(1, 150.0)}
    assert source_of(peers, penalties=hurt).source == "h2"
    assert source_of(peers, penalties={"h1": Penalty(1, 99.0)}).source == "h1"  # expired (now=100)


def test_penalties_grow_with_repeated_failures_and_reset_after_expiry():
    first = penalise(None, 100.0, 2.0, 60.0)
    assert first == Penalty(1, 102.0)
    second = penalise(first, 101.0, 2.0, 60.0)
    assert second == Penalty(2, 105.0)
    assert penalise(Penalty(9, 100.0), 101.0, 2.0, 60.0) == Penalty(1, 103.0)
    assert penalise(Penalty(20, 500.0), 101.0, 2.0, 60.0).until == 161.0


def test_receivers_deciding_together_spread_over_equal_sources():
    peers = {h: Peer(h, True, 0.001) for h in ("h1", "h2", "h3")}
    remote = {h: {OTHER: ("tool:1",)} for h in peers}
    chosen = {source_of(peers, remote, me=f"receiver-{n}").source for n in range(12)}
    assert chosen == {"h1", "h2", "h3"}
    # ... and one receiver decides the same way each time.
    assert len({source_of(peers, remote, me="receiver-0").source for _ in range(3)}) == 1


def handed_to(*args: Any, **kwargs: Any) -> str | None:
    """relay_to's answer as the peer the request is sent to (None: served here)."""
    chosen = relay_to(*args, **kwargs)
    return None if chosen is None else chosen.peer


def test_a_source_hands_a_burst_on_as_a_chain():
    sending = [Downstream("r1", OTHER, "graph", relays=True)]
    assert handed_to(OTHER, "graph", "r2", sending) == "r1"
    assert handed_to(OTHER, "containerd", "r2", sending) is None  # r1's stream is for another store
    assert handed_to(APP, "graph", "r2", sending) is None
    assert handed_to(OTHER, "graph", "r1", sending) is None  # never to itself
    assert handed_to(OTHER, "graph", "r2", [Downstream("r1", OTHER, "graph", relays=False)]) is None
    two = [*sending, Downstream("r3", OTHER, "graph", relays=True)]
    assert handed_to(OTHER, "graph", "r4", two) == "r3"


def relaying(*peers: str) -> list[Downstream]:
    return [Downstream(p, OTHER, "graph", relays=True) for p in peers]


def test_below_the_chain_depth_a_source_hands_on_to_its_newest_relay_whatever_it_routed():
    two = relaying("r1", "r2")
    busy = {two[1]: 50}
    for hops in range(CHAIN_DEPTH):
        assert handed_to(OTHER, "graph", "r9", two, hops=hops, routed=busy) == "r2"
    # a request that says nothing of hops (a node from before them) counts as a first request
    assert handed_to(OTHER, "graph", "r9", two, routed=busy) == "r2"


def test_from_the_chain_depth_on_a_source_serves_branch_relays_then_hands_on_to_the_least_routed():
    deep = CHAIN_DEPTH
    assert BRANCH == 2
    assert handed_to(OTHER, "graph", "r9", [], hops=deep) is None
    assert handed_to(OTHER, "graph", "r9", relaying("r1"), hops=deep) is None  # a second branch: here
    two = relaying("r1", "r2")
    assert handed_to(OTHER, "graph", "r9", two, hops=deep) == "r1"  # equal counts: the oldest
    assert handed_to(OTHER, "graph", "r9", two, hops=deep, routed={two[0]: 1}) == "r2"
    assert handed_to(OTHER, "graph", "r9", two, hops=deep + 7, routed={two[0]: 3, two[1]: 2}) == "r2"
    three = relaying("r1", "r2", "r3")
    assert handed_to(OTHER, "graph", "r9", three, hops=deep, routed={three[0]: 2, three[1]: 1}) == "r3"
    # only relaying streams of this image for this store are branches; never the requester itself
    assert handed_to(OTHER, "graph", "r1", two, hops=deep) is None
    mixed = [*relaying("r1"), Downstream("r2", OTHER, "containerd", relays=True)]
    assert handed_to(OTHER, "graph", "r9", mixed, hops=deep) is None
    plain = [*relaying("r1"), Downstream("r2", OTHER, "graph", relays=False)]
    assert handed_to(OTHER, "graph", "r9", plain, hops=deep) is None


def test_hand_offs_by_the_rule_make_a_chain_then_a_balanced_binary_tree_within_the_hop_cap():
    """1,000 requests, each walking the hand-offs from the first holder as the nodes answer
    them (counting `routed` as the peer API does), joining where it is served."""
    from mesh.node.puller import MAX_HANDOFFS

    sending: dict[str, list[Downstream]] = {"origin": []}
    routed: dict[str, dict[Downstream, int]] = {"origin": {}}
    depth = {"origin": 0}
    walked = []
    for n in range(1000):
        me, node, hops = f"r{n}", "origin", 0
        while chosen := relay_to(OTHER, "graph", me, sending[node], hops=hops, routed=routed[node]):
            routed[node][chosen] = routed[node].get(chosen, 0) + 1
            node, hops = chosen.peer, hops + 1
        walked.append(hops)
        sending[node].append(Downstream(me, OTHER, "graph", relays=True))
        sending[me], routed[me], depth[me] = [], {}, depth[node] + 1
    assert max(walked) < MAX_HANDOFFS
    # a chain down to the node a request reaches after CHAIN_DEPTH hand-offs ...
    assert [len(sending[f"r{n}"]) for n in range(CHAIN_DEPTH - 1)] == [1] * (CHAIN_DEPTH - 1)
    assert len(sending["origin"]) == 1
    # ... then at most BRANCH streams per node, balanced: 1,000 - CHAIN_DEPTH receivers in a
    # binary tree under that node are at most ceil(log2(1,000)) = 10 levels deep
    assert max(len(out) for out in sending.values()) == BRANCH
    assert max(depth.values()) <= CHAIN_DEPTH + 10


def test_a_pull_is_spooled_for_relaying_only_when_another_live_peer_lacks_the_image():
    # Two hosts: the source is the only other peer, so nobody could ask this node for the image.
    assert not worth_relaying(OTHER, "src", {"src": {OTHER}})
    # A third host that already holds it does not need a relay either.
    assert not worth_relaying(OTHER, "src", {"src": {OTHER}, "h3": {OTHER, APP}})
    # A third host that lacks it (a burst) may be handed on to this node.
    assert worth_relaying(OTHER, "src", {"src": {OTHER}, "h3": {APP}})
    assert worth_relaying(OTHER, "src", {"src": {OTHER}, "h3": set()})  # its manifest not known yet


def test_a_simulated_burst_of_receivers_forms_a_chain_not_a_star():
    """Four receivers decide one after another with fresh gossip: each takes the last relay."""
    remote = {"src": {OTHER: ("tool:1",)}}
    peers = {"src": Peer("src", True, 0.001)}
    parents = {}
    for n in range(1, 5):
        me = f"r{n}"
        pull = source_of({k: v for k, v in peers.items() if k != me}, remote, store="graph", me=me)
        parents[me] = pull.source
        src = peers[pull.source]
        peers[pull.source] = Peer(src.id, True, src.rtt, uploads=src.uploads + 1, receiving=src.receiving)
        peers[me] = Peer(me, True, 0.001, receiving={OTHER: "graph"})
    assert parents == {"r1": "src", "r2": "r1", "r3": "r2", "r4": "r3"}
    assert sources.RELAY_COST < 1  # an idle relay beats a holder with one upload


def test_node_status_round_trips_and_ignores_garbage():
    status = nodestatus.NodeStatus("eu-1", 3, {OTHER: "graph", APP: "containerd"})
    tags = nodestatus.announce(status)
    assert nodestatus.parse(tags) == status
    assert nodestatus.is_status_entry(tags) and not nodestatus.is_status_entry(("app:1",))
    assert nodestatus.parse(("app:1",)) is None
    odd = (*tags, "oci recv sha256:zz graph", "oci load x", "oci future thing")
    assert nodestatus.parse(odd) == status
    assert nodestatus.status_key("a") != nodestatus.status_key("b")


# --- tag sets: rollbacks (mesh.protocol.tagsets) -------------------------------------------------

OLD, NEW, NEWER = d(11), d(12), d(13)
ROLL_METAS = {
    **METAS,
    OLD: ImageMeta(OLD, "", (d(111),), 10, 3000),  # app:41
    NEW: ImageMeta(NEW, "", (d(112),), 10, 3100),  # app:42, the newest build
    NEWER: ImageMeta(NEWER, "", (d(113),), 10, 3300),  # built after the rollback
}
ROLLBACK = TagSet(OLD, 3200_000)  # app:latest set back to app:41 at t = 3200 s


def rolled_back(**kw):
    """Origin "a" moved app:latest from NEW to OLD; "b" still tags NEW as app:latest."""
    remote = {
        "a": {OLD: ("app:41", "app:latest"), NEW: ("app:42",)},
        "b": {OLD: ("app:41",), NEW: ("app:42", "app:latest")},
    }
    args = dict(remote=remote, metas=ROLL_METAS, remote_sets={"a": {"app:latest": ROLLBACK}})
    args.update(kw)
    return run(**args)


def test_a_rollback_on_its_origin_wins_over_the_newest_image_on_every_node():
    # A node holding the newest (brought by the mesh) moves its tag back.
    p = rolled_back(local={OLD: ("app:41",), NEW: ("app:42", "app:latest")}, brought={OLD, NEW})
    assert [(t.image, t.tag) for t in p.tags] == [(OLD, "app:latest")]
    assert p.tagsets == {"app:latest": ROLLBACK} and p.kept == []
    # A new node pulls the older image with the tag.
    fresh = rolled_back()
    assert {(x.image, "app:latest" in x.tags) for x in fresh.pulls} == {(OLD, True), (NEW, False)}
    # The origin itself, with its own set, keeps it, and so does a node that adopted the set.
    origin = run(
        local={OLD: ("app:41", "app:latest"), NEW: ("app:42",)},
        remote={"b": {OLD: ("app:41",), NEW: ("app:42", "app:latest")}},
        metas=ROLL_METAS,
        local_sets={"app:latest": ROLLBACK},
        brought=set(),
    )
    assert origin.tags == [] and origin.pulls == [] and origin.warm


def test_a_later_forward_move_beats_the_rollback():
    remote_c = {"c": {NEWER: ("app:latest",)}}
    p = rolled_back(local={OLD: ("app:41", "app:latest")}, local_sets={"app:latest": ROLLBACK}, brought={OLD})
    assert p.tags == []
    peers = {**PEERS, "c": Peer("c", True, 0.003)}
    p = rolled_back(
        local={OLD: ("app:41", "app:latest")},
        local_sets={"app:latest": ROLLBACK},
        brought={OLD},
        peers=peers,
        remote={**rolled_back_remote(), **remote_c},
    )
    assert [(x.image, x.tags) for x in p.pulls if x.image == NEWER] == [(NEWER, ("app:latest",))]
    assert p.tagsets == {}
    # A newer set (a roll forward to app:42 after the rollback) beats an older one.
    again = TagSet(NEW, 3250_000)
    p = rolled_back(
        local={OLD: ("app:41", "app:latest"), NEW: ("app:42",)},
        local_sets={"app:latest": ROLLBACK},
        brought={OLD, NEW},
        remote={"a": {OLD: ("app:41",), NEW: ("app:42", "app:latest")}},
        remote_sets={"a": {"app:latest": again}},
    )
    assert [(t.image, t.tag) for t in p.tags] == [(NEW, "app:latest")] and p.tagsets == {"app:latest": again}


def rolled_back_remote():
    return {
        "a": {OLD: ("app:41", "app:latest"), NEW: ("app:42",)},
        "b": {OLD: ("app:41",), NEW: ("app:42", "app:latest")},
    }


def test_a_newer_build_of_this_host_is_never_moved_by_a_rollback():
    mine = d(14)
    metas = {**ROLL_METAS, mine: ImageMeta(mine, "", (d(114),), 10, 3150)}  # built here, after app:41
    p = rolled_back(local={mine: ("app:latest",)}, metas=metas, brought=set())
    assert p.tags == [] and p.kept == ["app:latest"]
    assert all("app:latest" not in x.tags for x in p.pulls)
    # The same image brought by the mesh is not this host's: it moves.
    p = rolled_back(local={mine: ("app:latest",)}, metas=metas, brought={mine})
    assert p.kept == [] and any("app:latest" in x.tags for x in p.pulls)


def test_sets_from_nodes_that_no_longer_tag_the_image_and_garbage_are_ignored():
    # "b" announces a set for OLD but tags NEW as app:latest now: its set is stale.
    p = rolled_back(
        local={NEW: ("app:42", "app:latest")},
        brought={NEW},
        remote_sets={"b": {"app:latest": ROLLBACK}},
    )
    assert p.tags == [] and p.tagsets == {}
    # A set for an image no one knows, and a dead peer's set, decide nothing.
    unknown = TagSet(d(99), 9_999_999_999_999)
    p = rolled_back(local={NEW: ("app:42", "app:latest")}, remote_sets={"c": {"app:latest": ROLLBACK}})
    assert p.tagsets == {}
    p = rolled_back(local={NEW: ("app:42", "app:latest")}, remote_sets={"a": {"app:latest": unknown}})
    assert p.tagsets == {} and p.tags == []
    assert winners([{NEW: ("app:latest",)}], ROLL_METAS, (), (), [{"app:latest": unknown}]) == {
        "app:latest": NEW
    }
    # Excluded tags stay out, sets or not.
    p = rolled_back(local={NEW: ("app:42", "app:latest")}, exclude=("app:latest",))
    assert p.tagsets == {} and p.tags == []


def test_tag_sets_ride_the_status_entry_and_garbage_items_are_skipped():
    status = nodestatus.NodeStatus("", 0, {}, {"app:latest": ROLLBACK, "web:1": TagSet(NEW, 5)})
    tags = nodestatus.announce(status)
    assert f"oci tagset app:latest {OLD} 3200000" in tags
    assert nodestatus.parse(tags) == status
    garbage = (
        "oci tagset",
        "oci tagset app:x sha256:zz 5",
        f"oci tagset app:y {OLD} -5",
        f"oci tagset {OLD} 5",
    )
    assert nodestatus.parse((*tags, *garbage)) == status
    many = {f"t{i}": TagSet(OLD, i) for i in range(100)}
    long_tag = {"r" * 200: TagSet(OLD, 10_000)}
    announced = nodestatus.announce(nodestatus.NodeStatus(tagsets={**many, **long_tag}))
    parsed = nodestatus.parse(announced)
    assert parsed is not None and len(announced) <= MAX_TAGS
    assert set(parsed.tagsets) == {f"t{i}" for i in range(100 - MAX_TAGSETS, 100)}  # the most recent
    assert nodestatus.announce(nodestatus.NodeStatus(tagsets=many)) == nodestatus.announce(
        nodestatus.NodeStatus(tagsets=dict(reversed(many.items())))
    )  # the same sets always announce the same entry: no needless new version

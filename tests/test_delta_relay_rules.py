"""Relays for deltas, the pure rules: a relay whose stream leaves out its first `have` layers
serves only requesters that hold at least as many (mesh/protocol/sources.py, rule 3), in the
hand-off (relay_to), in the planner's relay candidates, and in the node status that announces it;
what a holder leaves out (left_out), and when it sends a relaying requester the image in full
(cut_for), so that a burst of mixed held sets costs it two copies, not one per held set."""

from __future__ import annotations

import pytest

from mesh.protocol import nodestatus
from mesh.protocol.planner import Peer, plan
from mesh.protocol.sources import (
    CHAIN_DEPTH,
    Downstream,
    LeftOut,
    common_prefix,
    covers,
    cut_for,
    left_out,
    relay_to,
    widen_for,
)
from mesh.protocol.wire import ImageMeta


def d(n: int) -> str:
    return "sha256:" + f"{n:064x}"


# app = base (1 layer) + deps + code: holding the base is have 1, an older build of app (same
# base and deps, other code) is have 2, nothing is have 0.
APP = d(3)
METAS = {APP: ImageMeta(APP, "", (d(101), d(102), d(103)), 300, 1000)}


@pytest.mark.parametrize(
    ("relay_have", "have", "ok"),
    [(0, 0, True), (0, 2, True), (1, 1, True), (1, 2, True), (1, 0, False), (2, 1, False)],
)
def test_a_relay_covers_a_requester_holding_at_least_the_layers_its_stream_leaves_out(relay_have, have, ok):
    assert covers(relay_have, have) is ok


def out(peer: str, have: int, store: str = "graph", relays: bool = True) -> Downstream:
    return Downstream(peer, APP, store, relays, have)


@pytest.mark.parametrize(
    ("sending", "have", "hops", "expected"),
    [
        # a chain (hops below CHAIN_DEPTH): the newest relay that covers the request
        ([out("full", 0)], 0, 0, "full"),
        ([out("full", 0)], 2, 0, "full"),  # a full stream serves anyone
        ([out("base", 1)], 1, 0, "base"),
        ([out("base", 1)], 2, 0, "base"),
        ([out("base", 1)], 0, 0, None),  # lacks the base layer the stream leaves out: served here
        ([out("old", 2)], 1, 0, None),
        ([out("full", 0), out("old", 2)], 1, 0, "full"),  # the newest that covers, not the newest
        ([out("full", 0), out("base", 1), out("old", 2)], 2, 0, "old"),
        ([out("full", 0), out("base", 1), out("old", 2)], 0, 0, "full"),
        ([out("base", 1, store="containerd")], 1, 0, None),  # another store, as before
        ([out("base", 1, relays=False)], 1, 0, None),
        # a tree (from CHAIN_DEPTH on): BRANCH covering relays before a hand-off
        ([out("a", 1), out("b", 1)], 1, CHAIN_DEPTH, "a"),
        ([out("a", 1), out("b", 1)], 0, CHAIN_DEPTH, None),
        ([out("a", 0), out("b", 2)], 1, CHAIN_DEPTH, None),  # one covering relay: a second branch here
        ([out("a", 0), out("b", 2), out("c", 1)], 1, CHAIN_DEPTH, "a"),
    ],
)
def test_a_source_hands_a_request_only_to_a_relay_whose_stream_covers_its_have(sending, have, hops, expected):
    chosen = relay_to(APP, "graph", "requester", sending, have=have, hops=hops)
    assert (chosen.peer if chosen else None) == expected


def test_a_request_that_says_nothing_of_have_is_a_full_one():
    assert relay_to(APP, "graph", "r", [out("base", 1)]) is None
    assert relay_to(APP, "graph", "r", [out("full", 0)]) == out("full", 0)
    assert Downstream("p", APP, "graph", True) == out("p", 0)  # an old-style downstream: full


def source_of(relays: dict[str, int], have: int | None, holder_uploads: int = 3) -> tuple[str, bool, int]:
    """The planner's choice for a pull of APP holding `have` layers (None: no `have` given), with
    a busy holder and idle relays that leave out `relays[peer]` layers."""
    peers = {"holder": Peer("holder", True, 0.001, uploads=holder_uploads)}
    for peer, relay_have in relays.items():
        peers[peer] = Peer(
            peer, True, 0.001, receiving={APP: "graph"}, relay_have={APP: relay_have} if relay_have else {}
        )
    p = plan(
        local={},
        remote={"holder": {APP: ("app:2",)}},
        metas=METAS,
        peers=peers,
        in_flight={},
        failures={},
        evicted={},
        max_pulls=1,
        max_attempts=3,
        now=100.0,
        me="me",
        store="graph",
        have={APP: have} if have is not None else None,
    )
    (pull,) = p.pulls
    return pull.source, pull.via_relay, pull.have


@pytest.mark.parametrize(
    ("relays", "have", "expected"),
    [
        ({"r": 0}, 0, ("r", True, 0)),  # a full relay serves a receiver that holds nothing
        ({"r": 0}, 2, ("r", True, 2)),
        ({"r": 1}, 1, ("r", True, 1)),  # a delta relay, for a receiver holding the base
        ({"r": 1}, 2, ("r", True, 2)),
        ({"r": 1}, 0, ("holder", False, 0)),  # not for one that holds nothing: the holder
        ({"r": 1}, None, ("holder", False, 0)),  # no `have` given: a full pull
        ({"r": 2}, 1, ("holder", False, 1)),
        ({"old": 2, "base": 1}, 1, ("base", True, 1)),
        ({"old": 2, "base": 1}, 0, ("holder", False, 0)),
    ],
)
def test_the_planner_takes_a_relay_only_if_it_covers_the_pulls_have_and_the_pull_carries_it(
    relays, have, expected
):
    assert source_of(relays, have) == expected


def test_an_old_node_s_relay_counts_as_a_full_stream():
    # A peer from before `have` gossips no relay_have: its spool is full (it relayed only those).
    assert source_of({"r": 0}, 0) == ("r", True, 0)


@pytest.mark.parametrize(
    "status",
    [
        nodestatus.NodeStatus("eu-1", 3, {APP: "graph"}),
        nodestatus.NodeStatus("eu-1", 3, {APP: "graph", d(4): "containerd"}, relay_have={APP: 2}),
        nodestatus.NodeStatus("", 0, {APP: "containerd", d(5): "blob"}, relay_have={APP: 127}),
    ],
)
def test_node_status_with_delta_relays_round_trips(status):
    assert nodestatus.parse(nodestatus.announce(status)) == status


def test_a_full_relay_is_announced_in_the_old_form_and_a_delta_one_with_its_have():
    tags = nodestatus.announce(
        nodestatus.NodeStatus("", 0, {APP: "graph", d(4): "graph"}, relay_have={d(4): 2})
    )
    assert f"oci recv {APP} graph" in tags and f"oci recv {d(4)} graph 2" in tags


@pytest.mark.parametrize(
    ("item", "receiving", "relay_have"),
    [
        (f"oci recv {APP} graph", {APP: "graph"}, {}),  # the old form: a full stream
        (f"oci recv {APP} containerd", {APP: "containerd"}, {}),
        (f"oci recv {APP} graph 2", {APP: "graph"}, {APP: 2}),
        (f"oci recv {APP} graph 0", {}, {}),  # never announced: 0 is the old form
        (f"oci recv {APP} graph -1", {}, {}),
        (f"oci recv {APP} graph 1001", {}, {}),
        (f"oci recv {APP} graph x", {}, {}),
        (f"oci recv {APP} graph \u0663", {}, {}),  # a non-ASCII digit
        (f"oci recv {APP} graph 2 more", {}, {}),
        (f"oci recv {APP} graph ", {}, {}),
        (f"oci recv {APP} blob 2", {}, {}),  # registry content has no `have`
        (f"oci recv {APP} other 2", {}, {}),
        ("oci recv sha256:zz graph 2", {}, {}),
    ],
)
def test_recv_items_are_read_strictly_and_garbage_is_skipped(item, receiving, relay_have):
    parsed = nodestatus.parse((nodestatus.MARK, "oci zone ", "oci load 0", item))
    assert parsed == nodestatus.NodeStatus("", 0, receiving, relay_have=relay_have)


def parse_before_have(tags: tuple[str, ...]) -> dict[str, str]:
    """`receiving` as every node before `have` reads it (nodestatus.parse as first released)."""
    receiving = {}
    for text in tags[1:]:
        kind, _, rest = text.removeprefix("oci ").partition(" ")
        if kind == "recv":
            image, _, store = rest.partition(" ")
            if image.startswith("sha256:") and len(image) == 71 and store in nodestatus.STORES:
                receiving[image] = store
    return receiving


def test_an_older_node_sees_full_relays_and_skips_delta_ones_rather_than_misread_their_store():
    status = nodestatus.NodeStatus("", 0, {APP: "graph", d(4): "containerd"}, relay_have={d(4): 1})
    assert parse_before_have(nodestatus.announce(status)) == {APP: "graph"}


L = (d(101), d(102), d(103))


@pytest.mark.parametrize(
    ("layers", "have", "possible", "drop", "left"),
    [
        (L, 0, True, set(), 0),
        (L, 1, True, {d(101)}, 1),
        (L, 2, True, {d(101), d(102)}, 2),
        (L, 2, False, set(), 0),  # a format that takes no delta: a full stream
        # a held layer that recurs above `have` stays in, and lowers `left`
        ((d(101), d(102), d(101)), 2, True, {d(102)}, 2),
        ((d(101), d(102), d(102)), 2, True, {d(101)}, 1),
    ],
)
def test_a_holder_leaves_out_held_layers_that_do_not_recur_and_says_what_it_left_out(
    layers, have, possible, drop, left
):
    assert left_out(layers, have, possible=possible) == LeftOut(frozenset(drop), left)


@pytest.mark.parametrize(
    ("sending", "have", "relays", "expected"),
    [
        ([], 1, True, 1),  # the first stream of a burst: the requester's own delta
        ([out("base", 1)], 1, True, 1),  # a relay that covers it exists (it was not handed on: hops)
        ([out("base", 1)], 2, True, 2),
        ([out("old", 2)], 1, True, 0),  # the relay so far cannot serve it: in full, to cover the rest
        ([out("base", 1)], 0, True, 0),
        ([out("old", 2)], 1, False, 1),  # a requester that does not relay: its own delta
        ([out("old", 2, relays=False)], 1, True, 1),  # a downstream that relays nothing
        ([out("old", 2, store="containerd")], 1, True, 1),  # another store's relay serves none here
        ([out("full", 0), out("old", 2)], 1, True, 0),
    ],
)
def test_a_holder_sends_in_full_a_relaying_requester_its_relays_cannot_serve(sending, have, relays, expected):
    assert cut_for(APP, "graph", have, relays=relays, sending=sending) == expected


def test_a_burst_of_falling_held_sets_costs_a_holder_two_copies_not_one_per_held_set():
    # older build, base, nothing, base, arriving in that order at the holder: each stream the
    # holder starts, and which requests the ones before could serve (relay_to is asked first)
    sending: list[Downstream] = []
    for peer, have in (("older", 2), ("base", 1), ("none", 0), ("base2", 1)):
        if relay_to(APP, "graph", peer, sending, have=have) is None:
            cut = cut_for(APP, "graph", have, relays=True, sending=sending)
            sending.append(out(peer, left_out(L, cut, possible=True).left))
    assert sending == [out("older", 2), out("base", 0)]


MB = 1_000_000
# An image of three layers: an 8 MB base, 48 MB, 16 MB; known prefixes: the base and the image.
PREFIX = {0: 0, 1: 8 * MB, 3: 72 * MB}


@pytest.mark.parametrize(
    ("have", "lacking", "prefix", "relays", "first", "expected"),
    [
        (1, [0, 1], PREFIX, True, True, 0),  # a peer holding nothing: the base goes in (8 of 64)
        (1, [1, 1], PREFIX, True, True, 1),  # every peer lacking it holds the base: nothing added
        (1, [], PREFIX, True, True, 1),  # nobody else lacks it
        (1, [0], PREFIX, False, True, 1),  # a requester that does not relay serves nobody
        (1, [0], PREFIX, True, False, 1),  # not the first stream: cut_for's rule, not this one
        (1, [0], {0: 0, 1: 40 * MB, 3: 72 * MB}, True, True, 1),  # a base of 40 MB on 32: too dear
        (1, [0], {0: 0, 3: 72 * MB}, True, True, 1),  # the base's size unknown: nothing widened
        (2, [0, 1], {0: 0, 1: 8 * MB, 2: 56 * MB, 3: 72 * MB}, True, True, 2),  # 48 MB on 16: no
        (2, [1], {0: 0, 1: 8 * MB, 2: 60 * MB, 3: 272 * MB}, True, True, 1),  # 52 on 212: yes
        (0, [0], PREFIX, True, True, 0),  # already full
    ],
)
def test_a_first_stream_is_widened_to_cover_the_peers_still_lacking_it_when_that_is_cheap(
    have, lacking, prefix, relays, first, expected
):
    assert widen_for(have, lacking, prefix, relays=relays, first=first) == expected


def test_what_a_peer_holds_of_an_image_is_the_layers_its_images_share_from_the_bottom():
    assert common_prefix(("a", "b", "c"), ("a", "b", "x")) == 2
    assert common_prefix(("a", "b"), ("a", "b", "c")) == 2
    assert common_prefix(("a",), ("b",)) == 0
    assert common_prefix((), ("a",)) == 0

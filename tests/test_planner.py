from mesh.protocol.planner import Failure, Peer, local_manifest, plan, tag_allowed, winners
from mesh.protocol.wire import ImageMeta


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


def test_images_without_metadata_wait_and_held_images_make_a_node_warm():
    remote = {"a": {d(77): ("mystery:1",)}}
    assert run(remote=remote).pulls == []
    assert run(local={BASE: ("base:1",)}, remote={"a": {BASE: ("base:1",)}}).warm


def test_local_manifest_shares_tagged_images_and_their_chains_only():
    images = [
        (METAS[APP], ("app:1",)),
        (METAS[MID], ()),
        (METAS[BASE], ()),
        (METAS[OTHER], ()),
        (METAS[APP2], ("secret:1",)),
    ]
    shared, metas = local_manifest(images, exclude=("secret:*",))
    assert shared == {APP: ("app:1",), MID: (), BASE: ()}
    assert set(metas) == set(shared)


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

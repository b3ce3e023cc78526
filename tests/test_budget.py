"""The disk budget's decisions (mesh.protocol.budget): what stays, what goes, what is not pulled."""

from __future__ import annotations

from mesh.protocol.budget import Item, built_on, fit, image_items, size_scale, watermark_budget
from mesh.protocol.wire import ImageMeta

MB = 1_000_000


def item(name: str, size: int, used: float, *, held: bool = True, **kw) -> Item:  # type: ignore[no-untyped-def]
    return Item(name, "image", {name: size}, used, held, **kw)


def test_most_recently_used_that_fits_is_kept_the_rest_evicted_or_not_pulled():
    items = [
        item("old", 40 * MB, 1),
        item("mid", 40 * MB, 2),
        item("new", 40 * MB, 3, held=False),
    ]
    result = fit(items, 100 * MB)
    assert result.keep == {"new", "mid"}
    assert [e.id for e in result.evict] == ["old"] and result.evict[0].bytes == 40 * MB
    assert result.skip == set()
    assert result.held_bytes == 80 * MB and result.kept_bytes == 80 * MB

    small = fit(items, 50 * MB)
    assert small.keep == {"new"} and {e.id for e in small.evict} == {"old", "mid"}
    # Steady state: the evicted are remembered (not wanted again), so the next round changes nothing.
    after = fit([item("new", 40 * MB, 3)], 50 * MB)
    assert after.keep == {"new"} and not after.evict and not after.skip


def test_a_wanted_image_that_does_not_fit_is_not_pulled_and_nothing_is_evicted_for_it():
    items = [item("held", 60 * MB, 5), item("older-wanted", 60 * MB, 4, held=False)]
    result = fit(items, 100 * MB)
    assert result.skip == {"older-wanted"} and not result.evict
    too_big = fit([item("huge", 200 * MB, 9, held=False)], 100 * MB)
    assert too_big.skip == {"huge"}


def test_pinned_items_stay_even_over_budget_and_what_they_need_stays_with_them():
    items = [
        item("base", 50 * MB, 1),
        item("app", 30 * MB, 2, needs=("base",), pinned="a container uses it"),
        item("other", 10 * MB, 3),
    ]
    result = fit(items, 60 * MB)
    assert {"base", "app"} <= result.keep and result.pinned_bytes == 80 * MB
    assert [e.id for e in result.evict] == ["other"]


def test_an_image_is_kept_with_the_image_it_is_built_on_and_shared_parts_count_once():
    items = [
        item("base", 50 * MB, 1),
        item("app", 10 * MB, 5, needs=("base",)),
        Item("m1", "manifest", {"blob-a": 20 * MB, "blob-b": 5 * MB}, 4, True),
        Item("m2", "manifest", {"blob-a": 20 * MB, "blob-c": 5 * MB}, 3, True),
    ]
    result = fit(items, 90 * MB)
    assert result.keep == {"base", "app", "m1", "m2"} and result.kept_bytes == 90 * MB
    tighter = fit(items, 85 * MB)
    assert tighter.keep == {"base", "app", "m1"}
    assert tighter.evict[0].id == "m2" and tighter.evict[0].bytes == 5 * MB  # blob-a stays for m1


def test_untagged_parents_are_kept_only_as_what_a_kept_image_needs():
    items = [item("parent", 5 * MB, 9, only_as_need=True), item("child", 5 * MB, 1, needs=("parent",))]
    assert fit(items, 100 * MB).keep == {"parent", "child"}
    assert {e.id for e in fit(items, 4 * MB).evict} == {"parent", "child"}


def meta(image: str, layers: str, size: int, created: int) -> ImageMeta:
    return ImageMeta(image, "", tuple(f"sha256:{ord(c):064x}" for c in layers), size, created)


def test_image_items_cost_what_an_image_adds_and_pin_what_local_builds_stand_on():
    base = meta("base", "b", 50 * MB, 1)
    app = meta("app", "bxy", 80 * MB, 2)
    mine = meta("mine", "bxyz", 81 * MB, 9)  # built here on app
    wanted = meta("next", "bx", 60 * MB, 5)  # a prefix of app, but app's layers are here already
    assert built_on([base, app, mine, wanted]) == {"base": "", "app": "next", "mine": "app", "next": "base"}
    items = {
        i.id: i
        for i in image_items(
            brought={"base": 100.0, "app": 100.0},
            wanted=["next"],
            metas={"next": wanted},
            local={"base": base, "app": app, "mine": mine},
            tagged={"base", "app", "mine"},
            pinned={},
        )
    }
    assert set(items) == {"base", "app", "next"}  # the local build is not the mesh's
    assert items["app"].pinned == "a local build is built on it" and items["app"].used == 9
    assert items["next"].parts == {"next": 10 * MB} and items["next"].needs == ("base",)
    assert not items["next"].held and items["app"].needs == ("base",)


def test_watermark_budget_frees_what_brings_the_filesystem_under_low():
    assert watermark_budget(used=90, total=100, low=0.7, mesh_bytes=50) == 30
    assert watermark_budget(used=90, total=100, low=0.7, mesh_bytes=10) == 0
    assert watermark_budget(used=60, total=100, low=0.7, mesh_bytes=10) == 10


def test_a_wanted_image_is_costed_in_this_stores_terms_so_it_is_not_pulled_to_be_evicted():
    # This engine (the containerd store) counts what it holds about twice what the graph driver
    # that announced it counted: base 4 MB to the mesh is 8 MB here, and so will the next image be.
    base_mesh, base_here = meta("base", "b", 4 * MB, 1), meta("base", "b", 8 * MB, 1)
    wanted = meta("next", "bx", 9 * MB, 5)  # 5 MB over base to the mesh: 10 MB here
    scale = size_scale({"base": base_here}, {"base": base_mesh, "next": wanted}, ["base"])
    assert scale == 2.0

    def costed(scale: float) -> Item:
        items = image_items(
            brought={"base": 100.0},
            wanted=["next"],
            metas={"base": base_mesh, "next": wanted},
            local={"base": base_here},
            tagged={"base"},
            pinned={},
            wanted_scale=scale,
        )
        return next(i for i in items if i.id == "next")

    assert costed(1.0).parts == {"next": 1 * MB}  # the mesh's 9 MB less the 8 MB base here
    assert costed(scale).parts == {"next": 10 * MB}
    assert fit([costed(scale), item("base", 8 * MB, 1)], 12 * MB).skip == {"next"}
    assert fit([costed(1.0), item("base", 8 * MB, 1)], 12 * MB).skip == set()


def test_the_size_scale_is_one_until_something_was_brought_and_never_below_one():
    small = meta("a", "a", 5 * MB, 1)
    assert size_scale({}, {}, []) == 1.0
    assert size_scale({"a": small}, {"a": meta("a", "a", 10 * MB, 1)}, ["a"]) == 1.0

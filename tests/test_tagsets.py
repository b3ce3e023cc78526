"""The rule that records tag sets (rollbacks) from what a node's engine shows, scan to scan."""

from mesh.node.persistence import NodeState
from mesh.protocol.tagsets import MAX_TAGSETS, TagSet, tag_map, update, valid


def d(n: int) -> str:
    return "sha256:" + f"{n:064x}"


OLD, NEW, NEWER = (d(1), 1000), (d(2), 2000), (d(3), 3000)  # (image, created in Unix seconds)
NOW = 2500_000  # ms


def scan(previous, current, known=None, winning=None, now_ms=NOW):  # type: ignore[no-untyped-def]
    return update(previous=previous, current=current, known=known or {}, winning=winning or {}, now_ms=now_ms)


def test_a_move_to_an_older_image_is_a_rollback_and_a_move_to_a_newer_one_is_not():
    assert scan({"app:latest": NEW}, {"app:latest": OLD}) == {"app:latest": TagSet(OLD[0], NOW)}
    assert scan({"app:latest": OLD}, {"app:latest": NEWER}) == {}
    assert scan({}, {"app:latest": OLD}) == {}  # a new tag (a build, a first scan): nothing to undo
    assert scan({"app:latest": NEW}, {"app:latest": NEW}) == {}


def test_a_set_holds_while_its_tag_points_at_its_image_and_goes_when_it_moves():
    mine = {"app:latest": TagSet(OLD[0], NOW)}
    assert scan({"app:latest": OLD}, {"app:latest": OLD, "x:1": NEW}, mine) == mine
    assert scan({"app:latest": OLD}, {"app:latest": NEWER}, mine) == {}  # a build after the rollback
    assert scan({"app:latest": OLD}, {}, mine) == {}  # untagged, or the image removed


def test_moving_back_forward_past_a_rollback_is_a_set_of_its_own():
    # app:42 (NEW) was made before the rollback at NOW: going back to it must beat the rollback.
    mine = {"app:latest": TagSet(OLD[0], NOW)}
    later = NOW + 60_000
    assert scan({"app:latest": OLD}, {"app:latest": NEW}, mine, now_ms=later) == {
        "app:latest": TagSet(NEW[0], later)
    }


def test_a_node_adopts_the_mesh_s_set_with_its_time_instead_of_making_one():
    won = {"app:latest": TagSet(OLD[0], 2200_000)}
    assert scan({"app:latest": NEW}, {"app:latest": OLD}, winning=won) == won
    assert scan({}, {"app:latest": OLD}, winning=won) == won  # pulled with the tag
    assert scan({"app:latest": NEW}, {"app:latest": NEW}, winning=won) == {}  # not given it (yet)


def test_only_the_most_recent_sets_are_kept():
    known = {f"t{i}": TagSet(OLD[0], i) for i in range(40)}
    current = {f"t{i}": OLD for i in range(40)}
    kept = scan(current, current, known)
    assert set(kept) == {f"t{i}" for i in range(40 - MAX_TAGSETS, 40)}


def test_valid_sets_are_those_whose_node_still_tags_the_image():
    sets = {"a:1": TagSet(OLD[0], 5), "b:1": TagSet(NEW[0], 5)}
    manifest = {OLD[0]: ("a:1",), NEW[0]: ("b:2",)}
    assert valid(sets, manifest) == {"a:1": sets["a:1"]}
    assert tag_map(manifest) == {"a:1": OLD[0], "b:2": NEW[0]}


def test_a_move_here_always_takes_even_with_a_clock_behind_the_claim_it_left():
    # A set from a host whose clock runs ahead (or a build in the same second as the rollback).
    ahead = {"app:latest": TagSet(OLD[0], NOW + 3600_000)}
    assert scan({"app:latest": OLD}, {"app:latest": NEWER}, winning=ahead, known=ahead) == {
        "app:latest": TagSet(NEWER[0], NOW + 3600_001)
    }
    assert scan({"app:latest": NEW}, {"app:latest": OLD}, now_ms=1) == {
        "app:latest": TagSet(OLD[0], 2000_001)
    }


def test_the_last_scan_and_the_sets_survive_a_restart_and_a_bad_file_loses_nothing_else(tmp_path):
    state = NodeState(str(tmp_path))
    assert state.tags() == ({}, {})
    scanned, sets = {"app:latest": OLD, "app:42": NEW}, {"app:latest": TagSet(OLD[0], NOW)}
    state.save_tags(scanned, sets)
    assert NodeState(str(tmp_path)).tags() == (scanned, sets)
    (tmp_path / "tags.json").write_text('{"scanned": [1, 2]}')
    assert state.tags() == ({}, {})  # unreadable: no sets, and the next scan starts afresh

"""Readiness is a pure function of a snapshot; the latch keeps a warm node ready."""

from dataclasses import replace

from mesh.node.readiness import ALONE, Readiness, ReadinessSnapshot, assess
from mesh.protocol.planner import Plan

WARM_PLAN = Plan(pulls=[], tags=[], missing=[], given_up=[])
READY = ReadinessSnapshot(
    engine_available=True,
    engine_error="",
    scanned=True,
    synced=True,
    has_leads=True,
    in_join_grace=False,
    manifest_pending="",
    metas_missing=False,
    plan=WARM_PLAN,
)


def test_each_cold_reason_in_order():
    cases = [
        (
            replace(READY, engine_available=False, engine_error="refused"),
            "Docker Engine unreachable: refused",
        ),
        (replace(READY, scanned=False), "scanning local images"),
        (replace(READY, synced=False, answered=True), "joining the mesh"),
        (replace(READY, synced=False, in_join_grace=True), "joining the mesh"),
        (replace(READY, synced=False, has_leads=False, in_join_grace=True), "looking for peers"),
        (replace(READY, manifest_pending="beta"), "fetching the manifest of beta"),
        (replace(READY, metas_missing=True), "fetching image metadata"),
        (replace(READY, plan=None), "planning"),
        (replace(READY, plan=Plan([], [], ["sha256:a", "sha256:b"], ["sha256:b"])), "pulling 1 image(s)"),
        (replace(READY, plan=Plan([], [], ["sha256:b"], ["sha256:b"])), "warm"),  # given up: no longer blocks
    ]
    for snapshot, reason in cases:
        assert assess(snapshot, warm=False)[1] == reason
    # alone, with no leads and the grace over, a node is ready without a sync
    assert assess(replace(READY, synced=False, has_leads=False), warm=False) == (True, ALONE)


def test_the_first_host_of_a_fleet_is_ready_when_its_seeds_do_not_answer_and_stays_ready():
    """Scaling from zero: the seeds name hosts that do not exist yet (or all are down). Waiting
    for them until --ready-timeout would stall the autoscaler on its first host."""
    snapshot = [replace(READY, synced=False, in_join_grace=True, plan=None)]
    readiness = Readiness(lambda: snapshot[0])
    assert readiness.check() == (False, "joining the mesh")
    snapshot[0] = replace(READY, synced=False, in_join_grace=False)
    assert readiness.check() == (True, ALONE)
    # A peer turns up later with images this node lacks: it stays in rotation (the latch).
    snapshot[0] = replace(READY, synced=False, answered=True, plan=Plan([], [], ["sha256:a"], []))
    assert readiness.check() == (True, "warm")
    # Honest while a peer answers: a node that hears from one within the window syncs first.
    fresh = Readiness(lambda: replace(READY, synced=False, answered=True, in_join_grace=False))
    assert fresh.check() == (False, "joining the mesh")


def test_the_latch_holds_while_new_images_arrive_but_not_through_an_engine_outage():
    snapshot = [READY]
    readiness = Readiness(lambda: snapshot[0])
    assert readiness.check() == (True, "warm")
    snapshot[0] = replace(READY, plan=Plan([], [], ["sha256:new"], []), manifest_pending="gamma")
    assert readiness.check() == (True, "warm")
    snapshot[0] = replace(READY, engine_available=False)
    assert readiness.check()[0] is False
    cold = Readiness(lambda: replace(READY, plan=Plan([], [], ["sha256:new"], [])))
    assert cold.check() == (False, "pulling 1 image(s)")


PULLING = replace(READY, plan=Plan([], [], ["sha256:a", "sha256:b"], []), ready_timeout=600.0)


def test_the_ready_timeout_makes_a_warming_node_ready_and_says_what_it_still_lacks():
    assert assess(replace(PULLING, since_start=599.9), warm=False) == (False, "pulling 2 image(s)")
    assert assess(replace(PULLING, since_start=600.0), warm=False) == (
        True,
        "ready-timeout 10m passed, still pulling 2 image(s)",
    )
    # off (0) waits however long the warm-up takes
    assert assess(replace(PULLING, ready_timeout=0.0, since_start=1e9), warm=False)[0] is False
    # a finished warm-up is plain warm, timeout or not
    assert assess(replace(READY, ready_timeout=600.0, since_start=700.0), warm=False) == (True, "warm")


def test_the_ready_timeout_never_hides_an_unreachable_engine():
    down = replace(PULLING, since_start=700.0, engine_available=False, engine_error="refused")
    assert assess(down, warm=False) == (False, "Docker Engine unreachable: refused")


def test_only_a_finished_warm_up_latches_a_node_ready_by_timeout_says_why_until_it_is_warm(caplog):
    snapshot = [replace(PULLING, since_start=10.0)]
    readiness = Readiness(lambda: snapshot[0])
    assert readiness.check() == (False, "pulling 2 image(s)")
    snapshot[0] = replace(PULLING, since_start=601.0, plan=Plan([], [], ["sha256:b"], []))
    with caplog.at_level("WARNING", logger="cachemesh.readiness"):
        assert readiness.check() == (True, "ready-timeout 10m passed, still pulling 1 image(s)")
        assert readiness.check()[0] is True
    assert [r.getMessage() for r in caplog.records] == [
        "reporting ready before the warm-up is done: ready-timeout 10m passed, still pulling 1 image(s)"
    ]  # logged once, not on every probe
    snapshot[0] = replace(READY, ready_timeout=600.0, since_start=602.0)
    assert readiness.check() == (True, "warm")
    # now latched: a new image arriving does not change the reason
    snapshot[0] = replace(PULLING, since_start=603.0)
    assert readiness.check() == (True, "warm")

"""Readiness is a pure function of a snapshot; the latch keeps a warm node ready."""

from dataclasses import replace

from mesh.node.readiness import Readiness, ReadinessSnapshot, assess
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
        (replace(READY, synced=False), "joining the mesh"),
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
    assert assess(replace(READY, synced=False, has_leads=False), warm=False) == (True, "warm")


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

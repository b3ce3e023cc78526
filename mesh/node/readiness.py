"""When a node is ready: it has joined, knows what the mesh holds, and holds what it should.

Readiness is a pure function of a snapshot (`assess`); the node takes the snapshot, and
`Readiness` only adds the latch: once warm, a node stays ready while new images arrive (an
autoscaler should not pull a serving build host out of rotation because someone pushed a new base
image), and only an unreachable engine takes it back out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mesh.protocol.planner import Plan


@dataclass(frozen=True, slots=True)
class ReadinessSnapshot:
    engine_available: bool
    engine_error: str  # the last engine error, "" if none
    scanned: bool  # the local images have been listed once
    synced: bool  # the core has synced with a peer (or found their views equal)
    has_leads: bool  # seeds are configured, or peers or mDNS candidates are known
    in_join_grace: bool  # with no leads, still within the time to wait for peers
    manifest_pending: str  # the name of a live peer whose manifest is not (fully) here, or ""
    metas_missing: bool  # a live peer holds an image whose metadata is neither learnt nor local
    plan: Plan | None  # the puller's last plan
    registry_pending: str = ""  # why --registry-warm is not satisfied yet, or ""


def assess(s: ReadinessSnapshot, *, warm: bool) -> tuple[bool, str]:
    """(ready, reason). `warm`: the node was ready before (the latch)."""
    if not s.engine_available:
        return False, f"Docker Engine unreachable: {s.engine_error or 'connecting'}"
    if warm:
        return True, "warm"
    if not s.scanned:
        return False, "scanning local images"
    if not s.synced:
        if s.has_leads:
            return False, "joining the mesh"
        if s.in_join_grace:
            return False, "looking for peers"
    if s.manifest_pending:
        return False, f"fetching the manifest of {s.manifest_pending}"
    if s.metas_missing:
        return False, "fetching image metadata"
    if s.registry_pending:
        return False, s.registry_pending
    if s.plan is None:
        return False, "planning"
    if not s.plan.warm:
        pending = [i for i in s.plan.missing if i not in s.plan.given_up]
        if pending:
            return False, f"pulling {len(pending)} image(s)"
        return False, f"tagging {len(s.plan.tags)} image(s)"
    return True, "warm"


class Readiness:
    """The latch around `assess`, fed snapshots by `snapshot`."""

    def __init__(self, snapshot: Callable[[], ReadinessSnapshot]) -> None:
        self._snapshot = snapshot
        self._warm = False

    @property
    def ready(self) -> bool:
        return self.check()[0]

    def check(self) -> tuple[bool, str]:
        ready, reason = assess(self._snapshot(), warm=self._warm)
        self._warm = self._warm or ready
        return ready, reason

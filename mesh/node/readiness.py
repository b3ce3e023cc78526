"""When a node is ready: it has joined, knows what the mesh holds, and holds what it should.

Readiness is a pure function of a snapshot (`assess`); the node takes the snapshot, and
`Readiness` only adds the latch: once warm, a node stays ready while new images arrive (an
autoscaler should not pull a serving build host out of rotation because someone pushed a new base
image), and only an unreachable engine takes it back out.

`--ready-timeout` bounds the warm-up: once that long has passed since the node started, it is
ready even if the warm-up is not done, and the reason says so and what is still missing. The
cache only makes builds faster, so a host that cannot warm up in time (a huge mesh, a slow link)
should take builds rather than hold an autoscaler forever. The timeout never overrides an
unreachable engine: without one the host cannot build at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from mesh.protocol.planner import Plan
from mesh.values import format_duration

log = logging.getLogger("cachemesh.readiness")

TIMED_OUT = "ready-timeout"
"""How a reason given by the timeout starts, so tools can tell it from a finished warm-up."""
ALONE = "no peer answered: nothing to warm"
"""The reason of a node that no peer answered within the join window: ready, and latched."""


@dataclass(frozen=True, slots=True)
class ReadinessSnapshot:
    engine_available: bool
    engine_error: str  # the last engine error, "" if none
    scanned: bool  # the local images have been listed once
    synced: bool  # the core has synced with a peer (or found their views equal)
    has_leads: bool  # seeds are configured, or mDNS found candidates
    in_join_grace: bool  # still within the join window (--join-grace) since the start
    manifest_pending: str  # the name of a live peer whose manifest is not (fully) here, or ""
    metas_missing: bool  # a live peer holds an image whose metadata is neither learnt nor local
    plan: Plan | None  # the puller's last plan
    answered: bool = False  # a peer is a live member now: it answered, so sync with it first
    registry_pending: str = ""  # why --registry-warm is not satisfied yet, or ""
    since_start: float = 0.0  # seconds since the node started
    ready_timeout: float = 0.0  # --ready-timeout in seconds; 0: none


def warming(s: ReadinessSnapshot) -> str:
    """What the warm-up still waits for, or "" when it is done (the engine aside)."""
    if not s.scanned:
        return "scanning local images"
    if not s.synced:
        # Seeds nobody answers are no reason to wait: the first host of a fleet scaling from zero
        # has seeds (its future peers) and nothing to warm from. Past the join window, only a
        # peer that answered keeps a node waiting for a sync.
        if s.answered:
            return "joining the mesh"
        if s.in_join_grace:
            return "joining the mesh" if s.has_leads else "looking for peers"
    if s.manifest_pending:
        return f"fetching the manifest of {s.manifest_pending}"
    if s.metas_missing:
        return "fetching image metadata"
    if s.registry_pending:
        return s.registry_pending
    if s.plan is None:
        return "planning"
    if not s.plan.warm:
        pending = [i for i in s.plan.missing if i not in s.plan.given_up]
        if pending:
            return f"pulling {len(pending)} image(s)"
        return f"tagging {len(s.plan.tags)} image(s)"
    return ""


def timed_out(s: ReadinessSnapshot) -> bool:
    return s.ready_timeout > 0 and s.since_start >= s.ready_timeout


def assess(s: ReadinessSnapshot, *, warm: bool) -> tuple[bool, str]:
    """(ready, reason). `warm`: the node was ready before (the latch)."""
    if not s.engine_available:
        return False, f"Docker Engine unreachable: {s.engine_error or 'connecting'}"
    done = "warm" if s.synced or s.answered else ALONE
    if warm:
        return True, done
    pending = warming(s)
    if not pending:
        return True, done
    if timed_out(s):
        return True, f"{TIMED_OUT} {format_duration(s.ready_timeout)} passed, still {pending}"
    return False, pending


class Readiness:
    """The latch around `assess`, fed snapshots by `snapshot`. Only a finished warm-up latches:
    a node ready by the timeout keeps saying what it still lacks until it has it."""

    def __init__(self, snapshot: Callable[[], ReadinessSnapshot]) -> None:
        self._snapshot = snapshot
        self._warm = False
        self._timeout_logged = False

    @property
    def ready(self) -> bool:
        return self.check()[0]

    def check(self) -> tuple[bool, str]:
        ready, reason = assess(self._snapshot(), warm=self._warm)
        self._warm = self._warm or (ready and reason in ("warm", ALONE))
        if ready and reason.startswith(TIMED_OUT) and not self._timeout_logged:
            self._timeout_logged = True
            log.warning("reporting ready before the warm-up is done: %s", reason)
        return ready, reason

"""When a node is ready: it has joined, knows what the mesh holds, and holds what it should.

Readiness latches: once warm, a node stays ready while new images arrive (an autoscaler should
not pull a serving build host out of rotation because someone pushed a new base image), and only
an unreachable engine takes it back out.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from mesh.protocol.liveness import State

if TYPE_CHECKING:
    from mesh.node.node import Node


class Readiness:
    def __init__(self, node: Node) -> None:
        self._node = node
        self._warm = False

    @property
    def ready(self) -> bool:
        return self.check()[0]

    def check(self) -> tuple[bool, str]:
        node = self._node
        if not node.local.available:
            return False, f"Docker Engine unreachable: {node.local.last_error or 'connecting'}"
        if self._warm:
            return True, "warm"
        reason = self._cold_reason()
        if reason:
            return False, reason
        self._warm = True
        return True, "warm"

    def _cold_reason(self) -> str:
        node = self._node
        core = node.core
        if not node.local.scanned:
            return "scanning local images"
        live = core.membership.live_ids()
        if not core.synced_with_peer:
            if node.config.seeds or live or node.candidates:
                return "joining the mesh"
            if time.time() - node.started < node.config.join_grace:
                return "looking for peers"
        replicas = core.manifests.replicas
        for peer in live:
            member = core.membership.members[peer]
            replica = replicas.get(peer)
            if member.state is State.ALIVE and (replica is None or replica.version == 0 or replica.heard):
                return f"fetching the manifest of {member.name}"
        metas = core.manifests.metas
        local = node.local.images
        for peer in live:
            replica = replicas.get(peer)
            if replica is not None and any(i not in metas and i not in local for i in replica.entries):
                return "fetching image metadata"
        plan = node.puller.plan
        if plan is None:
            return "planning"
        if not plan.warm:
            pending = [i for i in plan.missing if i not in plan.given_up]
            return f"pulling {len(pending)} image(s)" if pending else f"tagging {len(plan.tags)} image(s)"
        return ""

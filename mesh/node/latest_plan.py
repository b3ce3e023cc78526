"""The puller's last plan, where parts made before the puller read it (the engine watcher asks
which tag set decided each tag, to tell the mesh's rollback from an older image here)."""

from __future__ import annotations

from mesh.protocol.planner import Plan
from mesh.protocol.tagsets import TagSet


class LatestPlan:
    def __init__(self) -> None:
        self.plan: Plan | None = None

    def tagsets(self) -> dict[str, TagSet]:
        return self.plan.tagsets if self.plan is not None else {}

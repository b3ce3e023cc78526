"""A member's liveness, as SWIM defines it (alive, suspect, dead) plus a graceful leave."""

from __future__ import annotations

from enum import IntEnum


class State(IntEnum):
    """A member's liveness as this node sees it. Values travel on the wire (summary entries)."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3

    @property
    def label(self) -> str:
        return self.name.lower()

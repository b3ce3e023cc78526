"""Events the pure core emits for the node (planner, metrics, logs). Small dataclasses, no behaviour."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from mesh.protocol.liveness import State


@dataclass(frozen=True, slots=True)
class PeerJoined:
    node: str


@dataclass(frozen=True, slots=True)
class PeerStateChanged:
    node: str
    old: State
    new: State


@dataclass(frozen=True, slots=True)
class PeerForgotten:
    """A dead or left member was reaped from the table."""

    node: str


@dataclass(frozen=True, slots=True)
class ManifestChanged:
    """What `node` holds changed in this node's view."""

    node: str


@dataclass(frozen=True, slots=True)
class MetaLearned:
    image: str


Event: TypeAlias = PeerJoined | PeerStateChanged | PeerForgotten | ManifestChanged | MetaLearned

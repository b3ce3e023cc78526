"""Where parts tell the node that something it announces changed.

Parts made early in the assembly (the engine watcher, relays, the registry, the peer API) ring
here; the node's loop then publishes and pokes the parts made after them. That keeps the assembly
one pass: nobody needs a reference to a part that is built later.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass(frozen=True)
class Rung:
    engine: bool  # the engine's shared images changed: publish, then replan and recheck the disk
    manifest: bool  # the registry's announcement changed: publish
    status: bool  # uploads or relays changed: publish soon (debounced)


class Changes:
    def __init__(self) -> None:
        self._rung = asyncio.Event()
        self._engine = self._manifest = self._status = False

    def engine_changed(self) -> None:
        self._engine = True
        self._rung.set()

    def manifest_changed(self) -> None:
        self._manifest = True
        self._rung.set()

    def status_changed(self) -> None:
        self._status = True
        self._rung.set()

    async def next(self) -> Rung:
        """What rang since the last call, once anything did."""
        await self._rung.wait()
        self._rung.clear()
        rung = Rung(self._engine, self._manifest, self._status)
        self._engine = self._manifest = self._status = False
        return rung

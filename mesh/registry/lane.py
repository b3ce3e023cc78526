"""One large body at a time from each source, most wanted first.

Clients ask for several layers at once (Docker three, containerd all of them) but unpack them one
after another, in the manifest's order. Fetched side by side, the layers share the link and all
arrive late together; the first unpack, and every one after it, waits for the slowest. Fetched one
at a time in the manifest's order, the first layer arrives at the link's full speed and the rest
arrive while it unpacks. The requests arrive in any order, so a body that holds the turn gives way,
between two pieces, to a more wanted one that came after it (it closes its answer, and asks
for the rest from where it stopped when its turn comes again).
(bench_registry, Engine 20.10: the first layer reached the engine after 1.39 s side by side, 0.67 s
in order, against 0.84 s from the reference registry.)
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

Key = tuple[float, ...]


class Turn:
    """The right to read a body from the lane's source, held inside `Lane.turn`."""

    def __init__(self, lane: Lane, key: Key) -> None:
        self._lane = lane
        self.key = key
        self.held = False

    def wanted_elsewhere(self) -> bool:
        """A more wanted body (lower key) waits for the turn."""
        best = self._lane.best_waiting()
        return best is not None and best < self.key

    async def give_way(self) -> None:
        """Between two pieces: if a more wanted body waits, let it go first and wait for the turn
        again."""
        if not self.wanted_elsewhere():
            return
        self.held = False
        self._lane.release()
        await self._lane.acquire(self.key)
        self.held = True


class Lane:
    """A lock whose waiters go in order of their key (lowest first), then of arrival."""

    def __init__(self) -> None:
        self._busy = False
        self._waiting: list[tuple[Key, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    @asynccontextmanager
    async def turn(self, key: Key) -> AsyncIterator[Turn]:
        turn = Turn(self, key)
        await self.acquire(key)
        turn.held = True
        try:
            yield turn
        finally:
            if turn.held:
                self.release()

    async def acquire(self, key: Key) -> None:
        if not self._busy:
            self._busy = True
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (key, next(self._arrivals), turn))
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.release()  # handed the turn as it was cancelled: pass it on
            raise

    def release(self) -> None:
        while self._waiting:
            _, _, turn = heapq.heappop(self._waiting)
            if not turn.done():  # a cancelled waiter's future is done
                turn.set_result(None)
                return  # still busy: the turn passed straight on
        self._busy = False

    @property
    def busy(self) -> bool:
        return self._busy

    def best_waiting(self) -> Key | None:
        while self._waiting and self._waiting[0][2].done():
            heapq.heappop(self._waiting)
        return self._waiting[0][0] if self._waiting else None

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, turn in self._waiting if not turn.done())

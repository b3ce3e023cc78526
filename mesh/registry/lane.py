"""One large body at a time from each source, most wanted first.

Clients ask for several layers at once (Docker three, containerd and BuildKit more) but unpack
them one after another, in the manifest's order. Fetched side by side, the layers share the link
and all arrive late together; the first unpack, and every one after it, waits for the slowest.
Fetched one at a time in the manifest's order, the first layer arrives at the link's full speed
and the rest arrive while it unpacks. (bench_registry on Engine 20.10: the first layer reached
the engine after 1.39 s side by side, against 0.84 s from the reference registry.)
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Lane:
    """A lock whose waiters go in order of their key (lowest first), then of arrival."""

    def __init__(self) -> None:
        self._busy = False
        self._waiting: list[tuple[tuple[float, ...], int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    @asynccontextmanager
    async def turn(self, key: tuple[float, ...]) -> AsyncIterator[None]:
        if self._busy:
            turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiting, (key, next(self._arrivals), turn))
            try:
                await turn
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    self._next()  # handed the turn as it was cancelled: pass it on
                raise
        self._busy = True
        try:
            yield
        finally:
            self._next()

    def _next(self) -> None:
        while self._waiting:
            _, _, turn = heapq.heappop(self._waiting)
            if not turn.done():  # a cancelled waiter's future is done
                turn.set_result(None)
                return  # still busy: the turn passed straight on
        self._busy = False

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, turn in self._waiting if not turn.done())

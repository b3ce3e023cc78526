"""Relay while receiving (cut-through): the incoming save stream is teed to a spool file that
peers can read as it grows.

The rule (docs/protocol.md, "Relays"): the relay passes bytes on as they arrive, before it has
verified anything. The end-to-end check stays where it is today, at every final receiver: its
engine verifies each layer against the image config and the receiver checks it got the image
key it asked for, so a tampered or truncated stream is refused there and nothing is tagged.
Waiting for the relay's own check instead would cost a whole image time per hop, which is the
star's cost again.

- A spool is served only to receivers of the same image store, which get exactly the bytes the
  origin would have sent this node. A spool is tagged with the `have` its pull asked with (the
  leading layers, by chain ID, its stream may leave out: a delta), and is served only to
  receivers whose own `have` is at least that (mesh.protocol.sources.covers), which hold every
  layer left out; any other is refused (mesh/node/peer_api.py), never sent a stream it cannot
  load. A receiver that holds more layers than the spool leaves out gets those again: such a
  stream loads, it is only larger. A full spool (`have` 0) serves anyone.
- When the relay's upstream breaks, or its own load fails, the spool fails: every reader gets an
  error after the bytes already passed on, the peer server aborts the connection, and the
  downstream engine sees a truncated tar and loads nothing.
- The spool file is removed when the pull ends; readers that still have it open finish from
  their open file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from mesh.engine.base import EngineError

log = logging.getLogger("cachemesh.relay")


class RelayBroken(EngineError):
    """The relay's own upstream broke or its load failed: its readers' streams are cut short."""


class Spool:
    """One image being received and relayed: a file that grows, and readers waiting on it."""

    def __init__(
        self,
        directory: Path,
        image: str,
        store: str,
        on_change: Callable[[], None] = lambda: None,
        have: int = 0,
    ) -> None:
        self.image = image
        self._on_change = on_change
        self.store = store
        self.have = have
        """The leading layers the pull asked to be left out: readers must hold at least as many."""
        self.chain: list[str] = []
        self.path = directory / f"relay-{image[7:23]}-{os.getpid()}-{id(self):x}.tar"
        directory.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "wb")  # noqa: SIM115 - closed in finish()
        self.written = 0
        self.ended = False
        self.error = ""
        self.readers = 0
        self._changed = asyncio.Event()
        self._started = asyncio.Event()

    def start(self, chain: list[str], have: int | None = None) -> None:
        """The upstream answered: its chain header is what readers are told too, and `have`
        (when it said) how many leading layers its stream may leave out, which readers must hold."""
        self.chain = list(chain)
        if have is not None:
            self.have = have
        self._started.set()
        self._wake()
        self._on_change()

    def append(self, chunk: bytes) -> None:
        if self.ended:
            return
        # Chunks are up to 1 MiB and go to the page cache: fast enough for the event loop.
        self._fh.write(chunk)
        self._fh.flush()
        self.written += len(chunk)
        self._wake()

    def finish(self, error: str = "") -> None:
        """The stream ended (`error` empty) or broke; wakes every reader either way. Idempotent."""
        if self.ended:
            return
        self.ended, self.error = True, error
        self._started.set()
        with contextlib.suppress(OSError):
            self._fh.close()
        self._wake()
        self._on_change()

    def discard(self) -> None:
        """Remove the file; open readers keep reading their copy (POSIX unlink semantics)."""
        self.finish(self.error or "the relay's pull ended")
        with contextlib.suppress(OSError):
            self.path.unlink()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_started(self, timeout: float) -> None:
        """Until the upstream answered (the chain is known). Raises RelayBroken if it never does."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._started.wait()
        if not self._started.is_set():
            raise RelayBroken(f"the relay's upstream for {self.image[:19]} did not answer in {timeout:.0f}s")
        if self.ended and self.error and not self.written:
            raise RelayBroken(f"the relay's pull of {self.image[:19]} failed: {self.error}")

    async def read(self, chunk_bytes: int) -> AsyncIterator[bytes]:
        """The spool from its start, following it as it grows; raises RelayBroken if it breaks."""
        self.readers += 1
        try:
            with open(self.path, "rb") as fh:  # noqa: ASYNC230 - a local file, opened once
                pos = 0
                while True:
                    if pos < self.written:
                        data = fh.read(min(chunk_bytes, self.written - pos))
                        pos += len(data)
                        yield data
                        continue
                    if self.ended:
                        if self.error:
                            raise RelayBroken(f"the relay's upstream broke: {self.error}")
                        return
                    await self._changed.wait()
        finally:
            self.readers -= 1


class Relays:
    """The spools of pulls under way on this node, by image."""

    def __init__(self, directory: Path, on_change: Callable[[], None]) -> None:
        self.directory = directory
        self.on_change = on_change  # what this node relays changed: announce it
        self.spools: dict[str, Spool] = {}
        self._clear_leftovers()

    def _clear_leftovers(self) -> None:
        # A node killed mid-pull leaves its spool behind; nothing reads it after a restart.
        with contextlib.suppress(OSError):
            for path in self.directory.glob("relay-*.tar"):
                path.unlink()

    def open(self, image: str, store: str, have: int = 0) -> Spool:
        previous = self.spools.get(image)
        if previous is not None:
            self.close(previous)
        spool = Spool(self.directory, image, store, lambda: self.on_change(), have)
        self.spools[image] = spool
        return spool

    def close(self, spool: Spool) -> None:
        if self.spools.get(spool.image) is spool:
            del self.spools[spool.image]
        spool.discard()

    def receiving(self) -> dict[str, str]:
        """image -> store of the spools growing now (the upstream answered, the stream has not
        ended): what this node announces it relays."""
        return {i: s.store for i, s in self._growing()}

    def relay_have(self) -> dict[str, int]:
        """image -> `have` of the growing spools that are deltas (the rest are full streams)."""
        return {i: s.have for i, s in self._growing() if s.have}

    def _growing(self) -> list[tuple[str, Spool]]:
        return [(i, s) for i, s in self.spools.items() if s.chain and not s.ended]

"""Finds peers to join: the seed list (resolved again every round, a DNS name may change) and,
where multicast passes, mDNS. The core skips addresses that are already live members and retries
the others at most every reconnect_interval."""

from __future__ import annotations

import asyncio
import logging
import time

from mesh.discovery.mdns import MdnsDiscovery, mdns_usable
from mesh.discovery.seeds import resolve_seeds
from mesh.protocol.core import MeshCore

log = logging.getLogger("cachemesh.node")


class PeerFinder:
    def __init__(
        self,
        core: MeshCore,
        wake: asyncio.Event,
        *,
        cluster: str,
        name: str,
        advertise: str,
        seeds: tuple[str, ...],
        mdns: bool,
        interval: float,
    ) -> None:
        """`wake`: the core loop's, set after a join so the core dials at once; `interval`:
        seconds between rounds (--reconnect-interval)."""
        self._core = core
        self._wake = wake
        self.advertise = advertise
        self.seeds = seeds
        self._interval = interval
        self.candidates: set[str] = set()  # addresses found by mDNS
        self.mdns = (
            MdnsDiscovery(cluster, core.node_id, name, advertise, self._found)
            if mdns and mdns_usable(advertise)
            else None
        )

    @property
    def has_leads(self) -> bool:
        """Seeds to dial or peers mDNS found: somebody may answer."""
        return bool(self.seeds or self.candidates)

    async def start(self) -> None:
        if self.mdns is None:
            return
        try:
            await self.mdns.start()
        except (OSError, ValueError) as exc:
            log.warning("mDNS unavailable (%s): finding peers through --seeds only", exc)
            self.mdns = None

    async def stop(self) -> None:
        if self.mdns is not None:
            await self.mdns.stop()  # an mDNS goodbye: other browsers drop this node at once

    def _found(self, addr: str) -> None:
        """mDNS saw a peer: join it now, and keep it as a candidate like a seed."""
        if addr != self.advertise:
            self.candidates.add(addr)
            self._core.join([addr], time.monotonic())
            self._wake.set()

    async def run(self) -> None:
        while True:
            addrs = await resolve_seeds(self.seeds) if self.seeds else []
            addrs += sorted(self.candidates)
            if addrs:
                self._core.join([a for a in addrs if a != self.advertise], time.monotonic())
                self._wake.set()
            await asyncio.sleep(self._interval)

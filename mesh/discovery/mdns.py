"""Peer discovery on the local link by multicast DNS (RFC 6762 / DNS-SD, RFC 6763), via zeroconf.

Each node registers `<node-id>._cachemesh._tcp.local.` with its peer address and a TXT record
naming its cluster, and browses for the others. What it finds goes to the core as join candidates,
exactly like seeds; a peer of another cluster is skipped, and a forged announcement gets nowhere
because every peer request is authenticated with the cluster secret. On shutdown the registration
is withdrawn (an mDNS goodbye), which other nodes' browsers see at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Callable

from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from mesh.hostport import format_hostport, parse_hostport

SERVICE_TYPE = "_cachemesh._tcp.local."
log = logging.getLogger("cachemesh.mdns")


class MdnsDiscovery:
    def __init__(
        self, cluster: str, node_id: str, name: str, advertise: str, on_found: Callable[[str], None]
    ) -> None:
        self.cluster = cluster
        self.node_id = node_id
        self.name = name
        self.advertise = advertise
        self._on_found = on_found
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.found: dict[str, str] = {}  # node ID -> address, for the status page and tests

    async def start(self) -> None:
        host, port = parse_hostport(self.advertise)
        address = ipaddress.ip_address(host)
        version = IPVersion.V6Only if address.version == 6 else IPVersion.V4Only
        self._zc = AsyncZeroconf(ip_version=version)
        self._info = AsyncServiceInfo(
            SERVICE_TYPE,
            f"{self.node_id}.{SERVICE_TYPE}",
            addresses=[address.packed],
            port=port,
            properties={"cluster": self.cluster, "node": self.node_id, "name": self.name[:63], "proto": "1"},
            server=f"cachemesh-{self.node_id}.local.",
        )
        await self._zc.async_register_service(self._info)
        self._browser = AsyncServiceBrowser(self._zc.zeroconf, SERVICE_TYPE, handlers=[self._on_change])
        log.info("mDNS: announcing %s as %s, browsing for peers", self.advertise, self._info.name)

    def _on_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is ServiceStateChange.Removed or name.startswith(f"{self.node_id}."):
            return
        task = asyncio.get_running_loop().create_task(self._resolve(name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, name: str) -> None:
        if self._zc is None:
            return
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if not await info.async_request(self._zc.zeroconf, 3000):
            return
        props = {k.decode(): (v or b"").decode(errors="replace") for k, v in (info.properties or {}).items()}
        if props.get("cluster") != self.cluster or props.get("node") in (None, self.node_id) or not info.port:
            return
        for address in info.parsed_addresses():
            text = format_hostport(address, info.port)
            if self.found.get(props["node"]) != text:
                log.info("mDNS: found %s (%s) at %s", props.get("name", "?"), props["node"], text)
            self.found[props["node"]] = text
            self._on_found(text)
            break

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._browser is not None:
            await self._browser.async_cancel()
        if self._zc is not None:
            with contextlib.suppress(Exception):
                if self._info is not None:
                    await self._zc.async_unregister_service(self._info)
            await self._zc.async_close()
        self._zc = None


def mdns_usable(advertise: str) -> bool:
    """mDNS only makes sense for an address on a local link (not loopback)."""
    host, _ = parse_hostport(advertise)
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

"""The local manifest: what this node announces to the mesh.

It holds the engine's shared images, the registry's held manifests (IDs of their own namespace,
see mesh/protocol/oci.py) and this node's transfer status (zone, load figure, images it relays:
mesh/protocol/nodestatus.py).
"""

from __future__ import annotations

import asyncio
import time

from mesh.node.local_images import LocalImages
from mesh.node.peer_api import PeerApi
from mesh.node.relay import Relays
from mesh.protocol.core import MeshCore
from mesh.protocol.nodestatus import NodeStatus, announce, status_key, status_meta
from mesh.registry.service import Registry

STATUS_INTERVAL = 0.5  # seconds between announcements of this node's transfer status, at most


class Announcer:
    def __init__(
        self,
        core: MeshCore,
        wake: asyncio.Event,
        *,
        zone: str,
        local: LocalImages,
        registry: Registry,
        relays: Relays,
        peer_api: PeerApi,
    ) -> None:
        """`wake`: the core loop's, set when the manifest changed so it goes out at once."""
        self._core = core
        self._wake = wake
        self._zone = zone
        self._local = local
        self._registry = registry
        self._relays = relays
        self._peer_api = peer_api
        self._status_due: asyncio.TimerHandle | None = None
        self._status_at = float("-inf")
        self._stopped = False

    def publish(self) -> None:
        if self._stopped:
            return
        node_id = self._core.node_id
        entries, metas = self._registry.announcement()
        receiving = {**self._relays.receiving(), **dict.fromkeys(self._registry.relaying(), "blob")}
        status = NodeStatus(
            self._zone, self._peer_api.uploads, receiving, self._local.tagsets, self._relays.relay_have()
        )
        shared = {**self._local.shared, **entries, status_key(node_id): announce(status)}
        all_metas = [*self._local.shared_metas.values(), *metas, status_meta(node_id)]
        if self._core.set_local_images(shared, all_metas, time.monotonic()):
            self._wake.set()

    def status_changed(self) -> None:
        """Uploads or relays changed: announce the status, at most every STATUS_INTERVAL (a burst
        starts and ends many streams a second; peers need the gist, not every step)."""
        if self._status_due is not None:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, self._status_at + STATUS_INTERVAL - loop.time())
        self._status_due = loop.call_later(delay, self._publish_status)

    def _publish_status(self) -> None:
        self._status_due = None
        self._status_at = asyncio.get_running_loop().time()
        self.publish()

    def stop(self) -> None:
        self._stopped = True
        if self._status_due is not None:
            self._status_due.cancel()

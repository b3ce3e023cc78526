"""No engine at all (`--engine off`): a node that serves only the registry endpoint.

Some build hosts have no Docker Engine the node may use: BuildKit's docker-container driver keeps
its own store and reaches the mesh through the registry endpoint, and engine-less runners (kaniko,
buildah, a remote BuildKit) only push and pull. Such a node holds no images and loads none; this
engine says so, without a socket to dial, so the parts above it need no special case: the image
list is empty, and anything that would write to an engine fails with a message that names the mode.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

from mesh.engine.base import EngineError, EngineInfo, LoadResult, LocalImage
from mesh.protocol.share import Step

OFF = "off"
"""What the status page shows as the engine of such a node."""


class NoEngine:
    def __init__(self) -> None:
        self._closed = asyncio.Event()

    async def info(self) -> EngineInfo:
        return EngineInfo(version=OFF, containerd_store=False, oci_save=False)

    async def images(self) -> list[LocalImage]:
        return []

    async def history(self, image_id: str) -> list[Step]:
        return []

    async def containers(self) -> set[str]:
        return set()

    async def save(self, image_ids: Iterable[str]) -> AsyncIterator[bytes]:
        for _ in ():  # an async generator, as the interface says, that fails when first read
            yield b""
        raise EngineError("this node runs with --engine off: it holds no images to send")

    async def load(self, chunks: AsyncIterator[bytes]) -> LoadResult:
        raise EngineError("this node runs with --engine off: it cannot load images")

    async def tag(self, image_id: str, ref: str) -> None:
        raise EngineError("this node runs with --engine off: it cannot tag images")

    async def remove(self, image_id: str) -> None:
        raise EngineError("this node runs with --engine off: it holds no images")

    async def evict(self, image_id: str) -> None:
        raise EngineError("this node runs with --engine off: it holds no images")

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        # Nothing ever happens here: wait until closed, so a watcher neither spins nor sees an outage.
        await self._closed.wait()
        for _ in ():
            yield {}

    async def close(self) -> None:
        self._closed.set()

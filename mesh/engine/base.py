"""The local Docker Engine as the node sees it: one small interface, with a real implementation
(mesh.engine.docker_api, the Engine API) and an in-memory one (mesh.engine.fake).
tests/test_engine_conformance.py runs one suite against both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from mesh.protocol.wire import ImageMeta


class EngineError(Exception):
    """The engine refused or failed a call. The message is the engine's own."""


class EngineUnavailable(EngineError):
    """The engine cannot be reached (socket missing, daemon restarting)."""


@dataclass(frozen=True, slots=True)
class LocalImage:
    meta: ImageMeta
    tags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LoadResult:
    loaded: tuple[str, ...]
    """Image IDs the engine reported loading."""


class Engine(Protocol):
    async def images(self) -> list[LocalImage]:
        """Every image, tagged or not, with its parent and layers."""
        ...

    def save(self, image_ids: Iterable[str]) -> AsyncIterator[bytes]:
        """A `docker save` tar of these images (by ID, so it carries no tags), streamed."""
        ...

    async def load(self, chunks: AsyncIterator[bytes]) -> LoadResult:
        """Stream a tar into `docker load`. Raises EngineError if the engine refuses it."""
        ...

    async def tag(self, image_id: str, ref: str) -> None: ...

    async def remove(self, image_id: str) -> None:
        """Remove an untagged image (only used to clean up what a failed transfer loaded)."""
        ...

    def events(self) -> AsyncIterator[dict[str, Any]]:
        """Image events (tag, untag, delete, load, import, pull) as the engine reports them."""
        ...

    async def close(self) -> None: ...


def split_ref(ref: str) -> tuple[str, str]:
    """'repo:tag' -> ('repo', 'tag'); the colon of a registry port is not a tag separator."""
    repo, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:
        return ref, "latest"
    return repo, tag

"""The local Docker Engine as the node sees it: one small interface, with a real implementation
(mesh.engine.docker_api, the Engine API) and an in-memory one (mesh.engine.fake).
tests/test_engine_conformance.py runs one suite against both.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from mesh.protocol.share import Step
from mesh.protocol.wire import ImageMeta


class EngineError(Exception):
    """The engine refused or failed a call. The message is the engine's own."""


class EngineUnavailable(EngineError):
    """The engine cannot be reached (socket missing, daemon restarting)."""


@dataclass(frozen=True, slots=True)
class LocalImage:
    meta: ImageMeta
    """`meta.id` is the mesh's key for the image (see image_key), the same on every store."""
    tags: tuple[str, ...]
    engine_id: str = ""
    """The engine's own ID: the config digest on a graph driver, the manifest or index digest on
    the containerd image store. "" where it equals meta.id."""

    labels: Mapping[str, str] = field(default_factory=dict)
    """The image config's labels (`cachemesh.share=false` keeps an image local)."""

    @property
    def native(self) -> str:
        return self.engine_id or self.meta.id


@dataclass(frozen=True, slots=True)
class EngineInfo:
    version: str
    """The engine's version, e.g. '28.5.2'."""
    containerd_store: bool
    """The containerd image store (Engine 29's default) rather than a graph driver (overlay2)."""
    oci_save: bool
    """`docker save` writes an OCI layout beside manifest.json (Engine 25 and later)."""
    data_root: str = ""
    """The engine's data root (`docker info` DockerRootDir), where its images live; "" if unknown."""

    @property
    def store(self) -> str:
        return "containerd" if self.containerd_store else "graph"


@dataclass(frozen=True, slots=True)
class LoadResult:
    loaded: tuple[str, ...]
    """Image IDs the engine reported loading."""


class Engine(Protocol):
    async def info(self) -> EngineInfo:
        """What kind of engine and image store this is."""
        ...

    async def images(self) -> list[LocalImage]:
        """Every image, tagged or not, with its parent and layers."""
        ...

    async def history(self, image_id: str) -> list[Step]:
        """The image's history, oldest step first (`docker history`, reversed): each step's command,
        the size of the layer it made, and the image it produced where the engine names one."""
        ...

    async def containers(self) -> set[str]:
        """Mesh keys of the images that containers (running or stopped) were created from."""
        ...

    def save(self, image_ids: Iterable[str]) -> AsyncIterator[bytes]:
        """A `docker save` tar of these images (by mesh key, so it carries no tags), streamed."""
        ...

    async def load(self, chunks: AsyncIterator[bytes]) -> LoadResult:
        """Stream a tar into `docker load`. Raises EngineError if the engine refuses it."""
        ...

    async def tag(self, image_id: str, ref: str) -> None: ...

    async def remove(self, image_id: str) -> None:
        """Remove an untagged image by mesh key (only to clean up what a failed transfer loaded)."""
        ...

    async def evict(self, image_id: str) -> None:
        """Untag and remove an image, and the untagged parents nothing else needs. Never forced:
        the engine refuses (EngineError) while a container uses it or another image builds on it."""
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


def image_key(created: str, architecture: str, os: str, diff_ids: Sequence[str]) -> str:
    """The mesh's name for an image, the same on every engine and image store.

    The engines disagree on image IDs: a graph driver names an image by its config's digest, the
    containerd image store by its manifest's or index's digest, and buildx adds an attestation
    manifest that changes the index digest. Neither is visible on the other store. What both
    report alike, from the config, is when the image was made (to the nanosecond), its platform and
    its layers' diff IDs, and a config with those the same is the same image for a build cache.
    """
    material = json.dumps([created, architecture, os, list(diff_ids)], separators=(",", ":"))
    return "sha256:" + hashlib.sha256(material.encode()).hexdigest()


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """The chain ID of each prefix of a layer list (the OCI image spec's ChainID): what both a
    graph driver's layer store and containerd's snapshotter key an unpacked layer by. Holding the
    chain ID of layers[:n] means holding all of those n layers in that order."""
    out: list[str] = []
    for diff_id in diff_ids:
        chain = (
            diff_id if not out else "sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest()
        )
        out.append(chain)
    return out


def held_prefix(diff_ids: Sequence[str], held: Container[str]) -> int:
    """How many leading layers of an image an engine holding these chain IDs has already: the
    `have` a pull asks with (the node's puller, and the simulator's receivers)."""
    return prefix_held(chain_ids(diff_ids), held)


def prefix_held(chains: Sequence[str], held: Container[str]) -> int:
    """`held_prefix` from the image's chain IDs (a caller that keeps them): the longest chain ID
    held names a whole prefix, so it is the count."""
    return next((n for n in range(len(chains), 0, -1) if chains[n - 1] in held), 0)

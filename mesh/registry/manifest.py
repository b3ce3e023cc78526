"""What a manifest references: the checks a PUT makes, and the closure the mesh gossips."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from mesh.registry.errors import RegistryError
from mesh.registry.names import valid_digest

MAX_MANIFEST = 4 * 1024 * 1024

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
BUILDKIT_CACHE_CONFIG = "application/vnd.buildkit.cacheconfig.v0"
INDEXES = {OCI_INDEX, DOCKER_LIST}
MANIFESTS = {OCI_MANIFEST, DOCKER_MANIFEST}
# What a client gets when it accepts anything: every manifest type this registry stores.
KNOWN = INDEXES | MANIFESTS
# Layers that are never pushed to a registry: clients fetch them from the descriptor's `urls`
# (image-spec "Non-distributable layers"; Docker's foreign layers). A manifest may name them
# without the registry holding them, and a node needs none of them to hold the manifest whole.
NONDISTRIBUTABLE = (
    "application/vnd.oci.image.layer.nondistributable.",
    "application/vnd.docker.image.rootfs.foreign.",
)


@dataclass(frozen=True, slots=True)
class Parsed:
    media_type: str
    blobs: tuple[str, ...]  # config and layers
    children: tuple[str, ...]  # manifests an index names


def _digest_of(descriptor: object, what: str) -> str:
    if not isinstance(descriptor, dict) or not isinstance(descriptor.get("digest"), str):
        raise RegistryError("MANIFEST_INVALID", f"{what}: a descriptor without a digest")
    digest: str = descriptor["digest"]
    if not valid_digest(digest):
        raise RegistryError("MANIFEST_INVALID", f"{what}: unsupported digest {digest[:80]!r}")
    return digest


def _nondistributable(descriptor: object) -> bool:
    media_type = descriptor.get("mediaType") if isinstance(descriptor, dict) else None
    return isinstance(media_type, str) and media_type.startswith(NONDISTRIBUTABLE)


def parse(data: bytes, content_type: str | None) -> Parsed:
    """Check a manifest's shape and list what it references. The media type is the request's
    Content-Type, else the document's `mediaType`; the two must agree when both are given."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise RegistryError("MANIFEST_INVALID", "the manifest is not JSON") from None
    if not isinstance(doc, dict):
        raise RegistryError("MANIFEST_INVALID", "the manifest is not a JSON object")
    declared = doc.get("mediaType")
    media_type = (content_type or "").split(";")[0].strip() or declared
    if declared and media_type and declared != media_type:
        raise RegistryError(
            "MANIFEST_INVALID", f"Content-Type {media_type} does not match mediaType {declared}"
        )
    if not isinstance(media_type, str) or not media_type:
        media_type = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    if "manifests" in doc:
        items = doc["manifests"]
        if not isinstance(items, list):
            raise RegistryError("MANIFEST_INVALID", "manifests is not a list")
        children = tuple(_digest_of(d, "manifests") for d in items)
        return Parsed(media_type, (), children)
    blobs: list[str] = []
    if "config" in doc:
        blobs.append(_digest_of(doc["config"], "config"))
    layers = doc.get("layers", [])
    if not isinstance(layers, list):
        raise RegistryError("MANIFEST_INVALID", "layers is not a list")
    blobs += [_digest_of(d, "layers") for d in layers if not _nondistributable(d)]
    if not blobs and "schemaVersion" not in doc:
        raise RegistryError("MANIFEST_INVALID", "neither an image manifest nor an index")
    return Parsed(media_type, tuple(blobs), ())


def closure(
    digest: str, read: Callable[[str], Parsed | None], *, limit: int = 10_000
) -> tuple[list[str], list[str]] | None:
    """Every digest `digest` needs (children manifests and blobs, depth first) and those of them
    whose content `read` could not parse because it is not held. None if `digest` itself is not."""
    root = read(digest)
    if root is None:
        return None
    needed: list[str] = []
    missing: list[str] = []
    stack = [root]
    seen = {digest}
    while stack and len(needed) < limit:
        parsed = stack.pop()
        for blob in parsed.blobs:
            if blob not in seen:
                seen.add(blob)
                needed.append(blob)
        for child in parsed.children:
            if child in seen:
                continue
            seen.add(child)
            needed.append(child)
            sub = read(child)
            if sub is None:
                missing.append(child)
            else:
                stack.append(sub)
    return needed, missing

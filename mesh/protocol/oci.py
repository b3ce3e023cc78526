"""Registry content in the manifest gossip: a namespace of its own beside images. Pure.

Each node's manifest maps an ID to tags. The registry reuses it rather than adding messages: a
registry manifest this node holds *completely* (the manifest and every blob it references) is
announced as one entry whose ID is derived from the manifest digest (so it never collides with an
image ID, even on the containerd store, where image IDs are manifest digests) and whose "tags" say
what it is:

    ("oci sha256:<manifest digest>", "oci <repo>:<tag> <pushed_ms>", ...)

A space never occurs in a Docker reference, so no image tag can look like one of these, and the
image planner skips every entry that carries them (`is_registry_entry`). The entry's metadata is an
ordinary `ImageMeta` whose `layers` list every blob the manifest references (config, layers, and
for an index its child manifests and their blobs), so any node knows which peers hold a blob
without fetching the manifest first, and whose `size` is the total bytes.

Tags resolve the same everywhere: the newest push wins (push time in milliseconds, ties broken by
the higher manifest digest), the same rule as image tags (newest creation time, then the ID).
Version stamps, tombstones, rumours and anti-entropy all come with the manifest gossip.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from mesh.protocol.wire import MAX_LAYERS, MAX_NAME, MAX_TAGS, ImageMeta, Tags

PREFIX = "oci "
KEY_SALT = b"cachemesh/registry-manifest\0"
MAX_TAGS_PER_MANIFEST = MAX_TAGS - 1  # one slot holds the digest


@dataclass(frozen=True, slots=True, order=True)
class TagState:
    """Where a tag points, and when that push happened. Orders by (pushed_ms, digest): newest wins."""

    pushed_ms: int
    digest: str


def entry_key(manifest_digest: str) -> str:
    """The manifest-gossip ID of a registry manifest: sha256 over a salt and the digest."""
    return "sha256:" + hashlib.sha256(KEY_SALT + manifest_digest.encode()).hexdigest()


def tag_text(ref: str, pushed_ms: int) -> str:
    return f"{PREFIX}{ref} {pushed_ms}"


def tag_fits(ref: str) -> bool:
    """Whether `repo:tag` fits a gossip tag string (256 characters with prefix and time)."""
    return len(tag_text(ref, 10**13)) <= MAX_NAME


def announce(manifest_digest: str, tags: Mapping[str, int]) -> Tags:
    """The entry's tags for a held manifest: its digest, then `repo:tag` -> push time, sorted."""
    items = sorted(tag_text(ref, ms) for ref, ms in tags.items() if tag_fits(ref))
    return (PREFIX + manifest_digest, *items[:MAX_TAGS_PER_MANIFEST])


def is_registry_entry(tags: Tags | None) -> bool:
    return bool(tags) and tags[0].startswith(PREFIX)  # type: ignore[index]


def parse(tags: Tags | None) -> tuple[str, dict[str, int]] | None:
    """(manifest digest, {repo:tag: pushed_ms}) from an entry's tags; None if not a registry entry
    or malformed (a newer peer's extension, or garbage: ignored, never fatal)."""
    if not tags or not tags[0].startswith(PREFIX):
        return None
    digest = tags[0][len(PREFIX) :]
    if not digest.startswith("sha256:") or len(digest) != 71:
        return None
    refs: dict[str, int] = {}
    for text in tags[1:]:
        body = text[len(PREFIX) :] if text.startswith(PREFIX) else ""
        ref, _, ms = body.rpartition(" ")
        if ref and ms.isdigit():
            refs[ref] = int(ms)
    return digest, refs


def resolve(announcements: Iterable[Mapping[str, Tags]]) -> dict[str, TagState]:
    """repo:tag -> the TagState every node agrees on, from every node's manifest entries."""
    best: dict[str, TagState] = {}
    for manifest in announcements:
        for tags in manifest.values():
            parsed = parse(tags)
            if parsed is None:
                continue
            digest, refs = parsed
            for ref, ms in refs.items():
                state = TagState(ms, digest)
                current = best.get(ref)
                if current is None or state > current:
                    best[ref] = state
    return best


def registry_meta(manifest_digest: str, blobs: Iterable[str], size: int) -> ImageMeta:
    """The metadata gossiped with an announced manifest: the blobs it references and total bytes."""
    unique = list(dict.fromkeys(blobs))[:MAX_LAYERS]
    return ImageMeta(entry_key(manifest_digest), "", tuple(unique), size, 0)


def holders(
    digest: str,
    manifests: Mapping[str, Mapping[str, Tags]],
    metas: Mapping[str, ImageMeta],
) -> list[str]:
    """Nodes that hold `digest`: as an announced manifest, or as a blob one of them references.

    manifests: node -> its manifest entries (live peers only, by the caller's choice)."""
    key = entry_key(digest)
    found = []
    for node, entries in manifests.items():
        for entry_id, tags in entries.items():
            if not is_registry_entry(tags):
                continue
            meta = metas.get(entry_id)
            if entry_id == key or (meta is not None and digest in meta.layers):
                found.append(node)
                break
    return found

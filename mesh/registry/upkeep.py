"""The registry store under the disk budget: what each held manifest costs and when it was last
used, and evicting one (mesh.node.disk decides which, with mesh.protocol.budget).

A manifest's cost is its own bytes and those of everything it references (child manifests of an
index, configs and layers); blobs shared by several manifests count once, and stay while any kept
manifest references them. A blob that no held manifest references (an upload whose manifest never
came, a layer fetched on its own) is an item of its own. Last use is the manifest file's mtime:
set when it is stored, and again each time a client reads it.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from mesh.protocol.budget import Item
from mesh.registry.manifest import Parsed, closure
from mesh.registry.store import Store


def disk_items(store: Store, read: Callable[[str], Parsed | None]) -> list[Item]:
    items: list[Item] = []
    referenced: set[str] = set()
    manifests = set(store.manifests())
    children: set[str] = set()
    for digest in manifests:
        found = closure(digest, read)
        needed = found[0] if found else []
        referenced.update(needed)
        children.update(n for n in needed if n in manifests)
    for digest in manifests:
        found = closure(digest, read)
        needed = found[0] if found else []
        parts = {d: size for d in [digest, *needed] if (size := store.size(d)) is not None}
        items.append(
            Item(
                id=digest,
                kind="manifest",
                parts=parts,
                used=_mtime(store, digest),
                held=True,
                needs=tuple(n for n in needed if n in manifests),
                # An index's platform manifests go with it; on their own they are ranked like any.
                only_as_need=False,
            )
        )
    for digest in store.digests():
        if digest not in manifests and digest not in referenced:
            size = store.size(digest)
            if size is not None:
                items.append(Item(digest, "blob", {digest: size}, _mtime(store, digest), True))
    return items


def evict(store: Store, digest: str, read: Callable[[str], Parsed | None], keep: set[str]) -> int:
    """Remove a manifest (or an unreferenced blob) and every blob of it no kept item needs; the
    bytes freed. A reader holding a file open keeps reading it (the inode lives until closed)."""
    found = closure(digest, read)
    freed = 0
    for target in [digest, *(found[0] if found else [])]:
        if target in keep and target != digest:
            continue
        size = store.size(target)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(store.path(target))
            freed += size or 0
        with contextlib.suppress(FileNotFoundError):
            os.unlink(store.types / target[7:])
    return freed


def touch(store: Store, digest: str) -> None:
    """A client read the manifest: it was used now."""
    with contextlib.suppress(OSError):
        os.utime(store.path(digest))


def _mtime(store: Store, digest: str) -> float:
    try:
        return store.path(digest).stat().st_mtime
    except OSError:
        return 0.0


def load_evicted(store: Store) -> set[str]:
    """Manifests evicted for space, remembered across restarts (so warm-up does not fetch them)."""
    with contextlib.suppress(OSError, ValueError, TypeError):
        return {str(d) for d in json.loads((store.root / "evicted.json").read_text())}
    return set()


def save_evicted(store: Store, evicted: set[str]) -> None:
    path: Path = store.root / "evicted.json"
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps(sorted(evicted)))
    os.replace(temp, path)

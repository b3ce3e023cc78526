"""Leave out of a `docker save` stream the layers the receiver already holds.

Both image stores load a tar that lacks the files of layers whose chain they hold: a graph driver
(overlay2) skips a layer whose chain ID is present before it opens the layer's file, and the
containerd image store accepts an OCI layout without the blobs of layers it has unpacked. The
containerd store refuses a legacy-format tar with a layer missing, so a sender whose engine writes
only the legacy format (before Engine 25) sends that store everything.

The hard part is knowing which file in the stream is which layer: `docker save` writes its index
(manifest.json, index.json) last, after every layer. So:
- an OCI blob from a graph driver is an uncompressed layer named by its digest, its diff ID;
- otherwise the file's name is looked up in `LayerNames`, which every save stream teaches at its
  end (manifest.json pairs each layer file with the config's diff ID at the same position). Blob
  names are content digests and legacy layer directories are derived from chain IDs, so what one
  save teaches holds for the next image built on the same layers;
- a legacy `layer.tar` still unknown while a layer to leave out is unaccounted for is spooled to
  disk while hashed (its sha256 is its diff ID), then sent or dropped. Disk holds one layer at a
  time; memory holds one chunk.
A file that stays unknown is sent: the worst case of a wrong guess is a full transfer, never a
broken one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mesh.engine.tarstream import BLOB, MAX_CONFIG_BYTES, MAX_INDEX_BYTES, TarEntry, TarReader, TarStreamError

SPOOL_CHUNK = 1 << 20


class LayerNames:
    """File name in a save stream -> the diff ID of the layer it holds. Bounded, least recent out."""

    def __init__(self, limit: int = 100_000) -> None:
        self._names: OrderedDict[str, str] = OrderedDict()
        self._limit = limit

    def get(self, name: str) -> str | None:
        diff_id = self._names.get(name)
        if diff_id is not None:
            self._names.move_to_end(name)
        return diff_id

    def learn(self, name: str, diff_id: str) -> None:
        self._names[name] = diff_id
        self._names.move_to_end(name)
        while len(self._names) > self._limit:
            self._names.popitem(last=False)

    def learn_from(self, manifest: bytes, small: dict[str, bytes]) -> None:
        """Pair each layer file of manifest.json with its config's diff ID at the same position."""
        try:
            entries = json.loads(manifest)
            for entry in entries:
                config = json.loads(small[entry["Config"]])
                for name, diff_id in zip(entry["Layers"], config["rootfs"]["diff_ids"], strict=False):
                    self.learn(str(name), str(diff_id))
        except (ValueError, KeyError, TypeError):
            return  # an index we cannot read teaches nothing; the stream itself is the engine's


@dataclass
class DeltaReport:
    dropped: list[str] = field(default_factory=list)
    """Diff IDs of the layers left out."""
    dropped_bytes: int = 0
    spooled: int = 0
    """Layer files that had to be hashed on disk to be recognised."""


def _layer_file(name: str) -> bool:
    return name.endswith("/layer.tar") or BLOB.fullmatch(name) is not None


async def without_layers(
    source: AsyncIterator[bytes],
    layers: Iterable[str],
    names: LayerNames,
    report: DeltaReport,
    *,
    spool_dir: Path | None = None,
) -> AsyncIterator[bytes]:
    """Pass a save tar through, leaving out the files of the layers in `layers` (diff IDs)."""
    drop = set(layers)
    unaccounted = set(drop)
    reader = TarReader(source)
    small: dict[str, bytes] = {}
    manifest: bytes | None = None
    while (entry := await reader.next()) is not None:
        if entry.regular and entry.name == "manifest.json" and entry.size <= MAX_INDEX_BYTES:
            manifest = await reader.body(entry)
            yield entry.whole(manifest)
            continue
        if entry.regular and _layer_file(entry.name):
            diff_id = names.get(entry.name)
            if diff_id is None and entry.name.startswith("blobs/sha256/"):
                candidate = "sha256:" + entry.name[-64:]
                diff_id = candidate if candidate in unaccounted else None
            if diff_id is not None:
                unaccounted.discard(diff_id)
                if diff_id in drop:
                    await reader.skip(entry)
                    report.dropped.append(diff_id)
                    report.dropped_bytes += entry.size
                    continue
            elif unaccounted and entry.name.endswith("/layer.tar") and entry.size > MAX_CONFIG_BYTES:
                async for chunk in _spooled(reader, entry, unaccounted, names, report, spool_dir):
                    yield chunk
                continue
        if entry.regular and entry.size <= MAX_CONFIG_BYTES and len(small) < 4096:
            body = await reader.body(entry)
            small[entry.name] = body
            yield entry.whole(body)
            continue
        yield entry.headers
        async for chunk in reader.stream(entry):
            yield chunk
    for block in reader.trailer:
        yield block
    if manifest is not None:
        names.learn_from(manifest, small)


async def _spooled(
    reader: TarReader,
    entry: TarEntry,
    unaccounted: set[str],
    names: LayerNames,
    report: DeltaReport,
    spool_dir: Path | None,
) -> AsyncIterator[bytes]:
    """Hash an unknown legacy layer file on disk; drop it if it is a held layer, else send it."""
    report.spooled += 1
    digest = hashlib.sha256()
    fd, path = tempfile.mkstemp(prefix="cachemesh-layer-", dir=spool_dir)
    try:
        with os.fdopen(fd, "w+b") as spool:
            remaining = entry.size
            async for chunk in reader.stream(entry):
                body = chunk[:remaining] if remaining < len(chunk) else chunk
                remaining -= len(body)
                digest.update(body)
                spool.write(chunk)
            diff_id = "sha256:" + digest.hexdigest()
            names.learn(entry.name, diff_id)
            if diff_id in unaccounted:
                unaccounted.discard(diff_id)
                report.dropped.append(diff_id)
                report.dropped_bytes += entry.size
                return
            yield entry.headers
            spool.seek(0)
            while block := spool.read(SPOOL_CHUNK):
                yield block
    finally:
        os.unlink(path)


__all__ = ["DeltaReport", "LayerNames", "TarStreamError", "without_layers"]

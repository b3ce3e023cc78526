"""Streaming filter for `docker save` tars on their way into `docker load`.

It makes sure a load tags nothing: tags are applied by the receiver through the API only after
it has checked the loaded image ID. So a tampered or truncated stream can never move a tag. The
filter passes layer data through untouched and rewrites only the small index files:

- legacy format (Engine < 25): `manifest.json` keeps Config/Layers/Parent, loses RepoTags;
  `repositories` is dropped;
- OCI layout (Engine >= 25): `index.json` loses the image-name annotations.

It also records the config digests named in `manifest.json` (the image IDs the tar claims to carry).
Parsing uses the stdlib's tarfile header code; only the streaming is ours, because tarfile cannot
read from an async source.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import tarfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from mesh.engine.base import image_key

BLOCK = 512
INDEX_FILES = {"manifest.json", "repositories", "index.json"}
MAX_INDEX_BYTES = 16 << 20
BLOB = re.compile(r"blobs/sha256/[0-9a-f]{64}")
MAX_CONFIG_BYTES = 1 << 20
THREAD_HASH_BYTES = 256 << 10  # image configs are a few kB; BuildKit's registry cache caps them at 1 MiB
NAME_ANNOTATIONS = ("io.containerd.image.name", "org.opencontainers.image.ref.name")


class TarStreamError(ValueError):
    """The stream is not a well-formed image tar."""


@dataclass
class TarReport:
    configs: list[str] = field(default_factory=list)
    """Image IDs (config digests) named by manifest.json."""
    keys: set[str] = field(default_factory=set)
    """Mesh keys of the image configs the tar carries: what a failed load may have left behind."""
    chain: list[str] = field(default_factory=list)
    """The chain the sender said the tar carries (child first)."""


class _Buffer:
    def __init__(self, source: AsyncIterator[bytes]) -> None:
        self._source = source
        self._data = bytearray()
        self._done = False

    async def read_exact(self, n: int) -> bytes | None:
        while len(self._data) < n and not self._done:
            try:
                chunk = await self._source.__anext__()
            except StopAsyncIteration:
                self._done = True
                break
            self._data += chunk
        if len(self._data) < n:
            return None
        out = bytes(self._data[:n])
        del self._data[:n]
        return out

    async def stream(self, n: int) -> AsyncIterator[bytes]:
        """Yield exactly n bytes, as they arrive (zero-copy for big layer tars)."""
        while n > 0:
            if not self._data:
                try:
                    chunk = await self._source.__anext__()
                except StopAsyncIteration:
                    raise TarStreamError("stream ended inside a file (truncated transfer)") from None
                if len(chunk) <= n:  # the common case inside a layer: pass the chunk on as is
                    n -= len(chunk)
                    yield chunk
                    continue
                self._data += chunk
            take = min(n, len(self._data))
            out = bytes(self._data[:take])
            del self._data[:take]
            n -= take
            yield out


def _padding(size: int) -> int:
    return (BLOCK - size % BLOCK) % BLOCK


def strip_tags(manifest: bytes, name: str, report: TarReport) -> bytes | None:
    """Rewrite one index file so that loading it tags nothing; None drops the file."""
    if name == "repositories":
        return None
    try:
        doc = json.loads(manifest)
    except ValueError:
        raise TarStreamError(f"{name} is not JSON") from None
    if name == "manifest.json":
        if not isinstance(doc, list):
            raise TarStreamError("manifest.json is not a list")
        for item in doc:
            if not isinstance(item, dict) or not isinstance(item.get("Config"), str):
                raise TarStreamError("manifest.json entry without Config")
            item["RepoTags"] = None
            config = item["Config"].rsplit("/", 1)[-1].removesuffix(".json")
            report.configs.append("sha256:" + config)
    elif name == "index.json":
        for descriptor in doc.get("manifests") or []:
            annotations = descriptor.get("annotations") or {}
            for key in NAME_ANNOTATIONS:
                annotations.pop(key, None)
    return json.dumps(doc, separators=(",", ":")).encode()


def _header(name: str, size: int, template: tarfile.TarInfo) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = template.mode
    info.mtime = template.mtime
    return info.tobuf(format=tarfile.USTAR_FORMAT)


@dataclass
class TarEntry:
    name: str
    """The path, with pax or GNU long names applied and a leading './' removed."""
    info: tarfile.TarInfo
    headers: bytes
    """Every header block of the entry as it arrived (extended headers first)."""
    size: int
    padded: int

    @property
    def regular(self) -> bool:
        return self.info.type in (tarfile.REGTYPE, tarfile.AREGTYPE)

    def whole(self, body: bytes) -> bytes:
        """The entry as it arrived, from its headers and its body read whole."""
        return self.headers + body + b"\0" * (self.padded - self.size)


class TarReader:
    """Walks a tar arriving as chunks: each entry's headers, then its body read whole (small files)
    or streamed through (layers), never the whole archive at once."""

    def __init__(self, source: AsyncIterator[bytes]) -> None:
        self._buffer = _Buffer(source)
        self.trailer: list[bytes] = []

    async def next(self) -> TarEntry | None:
        """The next entry; None at the end-of-archive marker (then `trailer` holds what followed)."""
        pending: list[bytes] = []  # pax / GNU long-name headers that belong to the next entry
        long_name: str | None = None
        while True:
            header = await self._buffer.read_exact(BLOCK)
            if header is None:
                raise TarStreamError("stream ended before the end-of-archive marker (truncated transfer)")
            if header == b"\0" * BLOCK:
                self.trailer = [header]
                while (rest := await self._buffer.read_exact(BLOCK)) is not None:
                    self.trailer.append(rest)
                return None
            try:
                info = tarfile.TarInfo.frombuf(header, tarfile.ENCODING, "surrogateescape")
            except tarfile.HeaderError as exc:
                raise TarStreamError(f"bad tar header: {exc}") from None
            size = info.size if info.type not in (tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE) else 0
            padded = size + _padding(size)
            if info.type in (tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.XGLTYPE):
                if padded > MAX_INDEX_BYTES:
                    raise TarStreamError("oversized extended header")
                body = await self._buffer.read_exact(padded)
                if body is None:
                    raise TarStreamError("stream ended inside a tar header")
                if info.type == tarfile.GNUTYPE_LONGNAME:
                    long_name = body[:size].rstrip(b"\0").decode(errors="surrogateescape")
                elif info.type == tarfile.XHDTYPE:
                    for record in body[:size].split(b"\n"):
                        if b" path=" in record:
                            long_name = record.split(b" path=", 1)[1].decode(errors="surrogateescape")
                pending.append(header + body)
                continue
            name = (long_name or info.name).removeprefix("./")
            return TarEntry(name, info, b"".join([*pending, header]), size, padded)

    async def body(self, entry: TarEntry) -> bytes:
        """The whole body of a small entry, without its padding."""
        data = await self._buffer.read_exact(entry.padded)
        if data is None:
            raise TarStreamError(f"stream ended inside {entry.name} (truncated transfer)")
        return data[: entry.size]

    def stream(self, entry: TarEntry) -> AsyncIterator[bytes]:
        """The body and its padding, as it arrives."""
        return self._buffer.stream(entry.padded)

    async def skip(self, entry: TarEntry) -> None:
        async for _ in self._buffer.stream(entry.padded):
            pass


def small_file(data: bytes, name: str, template: tarfile.TarInfo) -> bytes:
    """A regular-file entry with a fresh, plain header."""
    return _header(name, len(data), template) + data + b"\0" * _padding(len(data))


def config_key(data: bytes) -> str | None:
    """The mesh key of an image config (mesh.engine.base.image_key), None if `data` is not one."""
    if not data.startswith(b"{"):
        return None
    try:
        doc = json.loads(data)
        diff_ids = doc["rootfs"]["diff_ids"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(diff_ids, list):
        return None
    return image_key(str(doc.get("created") or ""), str(doc.get("architecture") or ""),
                     str(doc.get("os") or ""), [str(d) for d in diff_ids])  # fmt: skip


async def untagged(
    source: AsyncIterator[bytes], report: TarReport, *, verify_blobs: bool = True
) -> AsyncIterator[bytes]:
    """Pass an image tar through, stripping every tag it would apply on load, and note the mesh
    key of every image config it carries. With `verify_blobs`, check each OCI blob against the
    digest in its name: the containerd store does not as it loads (a graph driver checks every
    layer against the config's diff IDs itself, so a receiver on one can skip the hashing)."""
    reader = TarReader(source)
    while (entry := await reader.next()) is not None:
        if entry.regular and entry.name in INDEX_FILES:
            if entry.size > MAX_INDEX_BYTES:
                raise TarStreamError(f"{entry.name} is larger than {MAX_INDEX_BYTES} bytes")
            rewritten = strip_tags(await reader.body(entry), entry.name, report)
            if rewritten is not None:
                yield small_file(rewritten, entry.name, entry.info)
            continue
        if entry.regular and entry.size <= MAX_CONFIG_BYTES:
            body = await reader.body(entry)
            if (
                verify_blobs
                and BLOB.fullmatch(entry.name)
                and hashlib.sha256(body).hexdigest() != entry.name[-64:]
            ):
                raise TarStreamError(f"{entry.name} does not match its digest (tampered or corrupt)")
            key = config_key(body)
            if key is not None:
                report.keys.add(key)
            yield entry.whole(body)
            continue
        yield entry.headers
        if verify_blobs and entry.regular and BLOB.fullmatch(entry.name):
            async for chunk in _verified(reader.stream(entry), entry):
                yield chunk
            continue
        async for chunk in reader.stream(entry):
            yield chunk
    for block in reader.trailer:
        yield block


async def _verified(chunks: AsyncIterator[bytes], entry: TarEntry) -> AsyncIterator[bytes]:
    """Pass an OCI blob through, holding back its last piece until its digest matches its name:
    a blob that does not match never arrives whole, so the engine loads nothing from the tar."""
    digest = hashlib.sha256()
    remaining = entry.size
    held = b""
    async for chunk in chunks:
        if held:
            yield held
        body = chunk[:remaining] if remaining < len(chunk) else chunk
        remaining -= len(body)
        if len(body) >= THREAD_HASH_BYTES:
            # hashlib lets go of the GIL on big buffers: hash on the other core, off the loop
            await asyncio.to_thread(digest.update, body)
        else:
            digest.update(body)
        held = chunk
    if digest.hexdigest() != entry.name[-64:]:
        raise TarStreamError(f"{entry.name} does not match its digest (tampered or corrupt)")
    if held:
        yield held

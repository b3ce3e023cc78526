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

import json
import tarfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

BLOCK = 512
INDEX_FILES = {"manifest.json", "repositories", "index.json"}
MAX_INDEX_BYTES = 16 << 20
NAME_ANNOTATIONS = ("io.containerd.image.name", "org.opencontainers.image.ref.name")


class TarStreamError(ValueError):
    """The stream is not a well-formed image tar."""


@dataclass
class TarReport:
    configs: list[str] = field(default_factory=list)
    """Image IDs (config digests) named by manifest.json."""


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


async def untagged(source: AsyncIterator[bytes], report: TarReport) -> AsyncIterator[bytes]:
    """Pass an image tar through, stripping every tag it would apply on load."""
    buffer = _Buffer(source)
    pending_ext: list[bytes] = []  # pax / GNU long-name headers that belong to the next entry
    long_name: str | None = None
    while True:
        header = await buffer.read_exact(BLOCK)
        if header is None:
            raise TarStreamError("stream ended before the end-of-archive marker (truncated transfer)")
        if header == b"\0" * BLOCK:
            # End of archive: two zero blocks. Pass them on and drain the rest (trailing padding).
            yield header
            while (rest := await buffer.read_exact(BLOCK)) is not None:
                yield rest
            return
        try:
            info = tarfile.TarInfo.frombuf(header, tarfile.ENCODING, "surrogateescape")
        except tarfile.HeaderError as exc:
            raise TarStreamError(f"bad tar header: {exc}") from None
        size = info.size if info.type not in (tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE) else 0
        padded = size + _padding(size)
        if info.type in (tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.XGLTYPE):
            if padded > MAX_INDEX_BYTES:
                raise TarStreamError("oversized extended header")
            body = await buffer.read_exact(padded)
            if body is None:
                raise TarStreamError("stream ended inside a tar header")
            if info.type == tarfile.GNUTYPE_LONGNAME:
                long_name = body[:size].rstrip(b"\0").decode(errors="surrogateescape")
            elif info.type == tarfile.XHDTYPE:
                for record in body[:size].split(b"\n"):
                    if b" path=" in record:
                        long_name = record.split(b" path=", 1)[1].decode(errors="surrogateescape")
            pending_ext.append(header + body)
            continue
        name = (long_name or info.name).lstrip("./")
        long_name = None
        if name in INDEX_FILES and info.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
            if size > MAX_INDEX_BYTES:
                raise TarStreamError(f"{name} is larger than {MAX_INDEX_BYTES} bytes")
            body = await buffer.read_exact(padded)
            if body is None:
                raise TarStreamError(f"stream ended inside {name} (truncated transfer)")
            pending_ext.clear()  # the rewritten entry gets a fresh, plain header
            rewritten = strip_tags(body[:size], name, report)
            if rewritten is not None:
                yield _header(name, len(rewritten), info) + rewritten + b"\0" * _padding(len(rewritten))
            continue
        for ext in pending_ext:
            yield ext
        pending_ext.clear()
        yield header
        async for chunk in buffer.stream(padded):
            yield chunk

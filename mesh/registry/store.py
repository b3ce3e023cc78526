"""A content-addressed store under the data dir. It knows digests and files, nothing of HTTP or peers.

Layout (under `<data dir>/registry/`):
    blobs/sha256/<hex>      content: layers, configs and manifests alike, only ever complete
    types/sha256/<hex>      a manifest's media type (its presence marks the blob as a manifest)
    tags/<quoted repo>/<tag> {"digest": ..., "pushed_ms": ...}
    uploads/<id>            uploads in progress; wiped at start (their hash state lived in memory)
    tmp/                    partial writes and mesh fetches; wiped at start

Every write goes to a file under uploads/ or tmp/, is hashed as it is written, fsynced, checked
against its digest, and only then renamed under blobs/ (then the directory is fsynced): a crash
leaves a blob whole or absent, never partial. Content is streamed in chunks, never held whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from mesh.protocol.oci import TagState
from mesh.registry.errors import RegistryError
from mesh.registry.names import valid_digest, valid_tag

CHUNK = 1024 * 1024
# An upload no request has used for this long is abandoned (the reference registry purges after a
# week; a build's cache push finishes in minutes).
UPLOAD_IDLE_SECONDS = 24 * 3600.0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Upload:
    """One upload session: bytes appended in order, hashed as they arrive."""

    id: str
    name: str
    path: Path
    size: int = 0
    hasher: Any = field(default_factory=hashlib.sha256)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    touched: float = field(default_factory=time.time)  # when a request last used it


class Store:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs" / "sha256"
        self.types = self.root / "types" / "sha256"
        self.tag_root = self.root / "tags"
        self.uploads_dir = self.root / "uploads"
        self.tmp = self.root / "tmp"
        for directory in (self.blobs, self.types, self.tag_root):
            directory.mkdir(parents=True, exist_ok=True)
        for scratch in (self.uploads_dir, self.tmp):
            shutil.rmtree(scratch, ignore_errors=True)  # leftovers of a crash: never visible content
            scratch.mkdir(parents=True)
        self.uploads: dict[str, Upload] = {}

    # --- content -------------------------------------------------------------------------------

    def path(self, digest: str) -> Path:
        if not valid_digest(digest):
            raise RegistryError("DIGEST_INVALID", f"unsupported or malformed digest {digest[:80]!r}")
        return self.blobs / digest[7:]

    def size(self, digest: str) -> int | None:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def has(self, digest: str) -> bool:
        return self.size(digest) is not None

    def media_type(self, digest: str) -> str | None:
        """The manifest media type, or None if `digest` is not a manifest held here."""
        try:
            return (self.types / digest[7:]).read_text().strip() if self.has(digest) else None
        except FileNotFoundError:
            return None

    def read(self, digest: str, limit: int) -> bytes:
        """A small blob (a manifest or config) whole. Refuses anything over `limit`."""
        path = self.path(digest)
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
        if len(data) > limit:
            raise RegistryError("SIZE_INVALID", f"{digest} is larger than {limit} bytes")
        return data

    def chunks(self, digest: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The bytes [start, end) of a held blob, in chunks."""
        with open(self.path(digest), "rb") as fh:
            yield from read_range(fh, start, end)

    def digests(self) -> list[str]:
        return ["sha256:" + p.name for p in self.blobs.iterdir()]

    def manifests(self) -> list[str]:
        return ["sha256:" + p.name for p in self.types.iterdir() if (self.blobs / p.name).exists()]

    def bytes_held(self) -> int:
        return sum(p.stat().st_size for p in self.blobs.iterdir())

    # --- writes ------------------------------------------------------------------------------

    def temp_path(self) -> Path:
        return self.tmp / uuid.uuid4().hex

    async def commit_file(self, temp: Path, digest: str, hasher: Any, fh: IO[bytes] | None = None) -> None:
        """Make a fully written temp file visible as `digest`, if its hash matches; else delete it.
        The fsync runs in a thread: a large blob's fsync can take seconds."""
        target = self.path(digest)
        actual = "sha256:" + hasher.hexdigest()
        if actual != digest:
            if fh is not None:
                fh.close()
            temp.unlink(missing_ok=True)
            raise RegistryError("DIGEST_INVALID", f"content is {actual}, not {digest}", detail=digest)

        def finish() -> None:
            if fh is not None:
                fh.flush()
                os.fsync(fh.fileno())
                fh.close()
            if target.exists():
                temp.unlink(missing_ok=True)  # content-addressed: the same bytes are already there
                return
            os.replace(temp, target)
            _fsync_dir(self.blobs)

        await asyncio.to_thread(finish)

    async def put_bytes(self, digest: str, data: bytes, media_type: str | None = None) -> None:
        """Store small content (a manifest) under its digest, verified; record its media type."""
        temp = self.temp_path()
        hasher = hashlib.sha256(data)
        fh = open(temp, "wb")
        fh.write(data)
        await self.commit_file(temp, digest, hasher, fh)
        if media_type is not None:
            await self.set_media_type(digest, media_type)

    async def set_media_type(self, digest: str, media_type: str) -> None:
        await asyncio.to_thread(self._write_small, self.types / digest[7:], media_type.encode())

    def _write_small(self, path: Path, data: bytes) -> None:
        temp = self.temp_path()
        with open(temp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, path)
        _fsync_dir(path.parent)

    # --- uploads -----------------------------------------------------------------------------

    def start_upload(self, name: str) -> Upload:
        self.expire_uploads(time.time())
        upload_id = uuid.uuid4().hex
        upload = Upload(upload_id, name, self.uploads_dir / upload_id)
        upload.path.touch()
        self.uploads[upload_id] = upload
        return upload

    def upload(self, upload_id: str, name: str) -> Upload:
        upload = self.uploads.get(upload_id)
        if upload is None or upload.name != name:
            raise RegistryError("BLOB_UPLOAD_UNKNOWN", f"no upload {upload_id[:64]!r} in {name}")
        upload.touched = time.time()
        return upload

    def expire_uploads(self, now: float) -> list[str]:
        """Drop uploads no request has used for UPLOAD_IDLE_SECONDS (a client gone mid-upload, or
        one that never sent its final PUT), files and all; the IDs dropped. An upload a request
        is using now is kept. Run as each upload starts, so abandoned ones cannot pile up."""
        expired = [
            u for u in self.uploads.values() if now - u.touched > UPLOAD_IDLE_SECONDS and not u.lock.locked()
        ]
        for upload in expired:
            self.cancel_upload(upload)
        return [u.id for u in expired]

    async def append(self, upload: Upload, chunks: AsyncIterator[bytes]) -> int:
        """Append a request body to an upload. A body cut short keeps what arrived (the client may
        resume from the reported offset); nothing becomes visible until the final PUT."""
        # Unbuffered: after a failed write, no buffer is left to reach the file later.
        with open(upload.path, "ab", buffering=0) as fh:
            async for chunk in chunks:
                try:
                    write_all(fh, chunk)
                except OSError as exc:
                    # This node's disk (full, failing): part of the chunk may be in the file, never
                    # in the hash. Cut the file back to what the hash saw: a retry appends in place.
                    with contextlib.suppress(OSError):
                        os.truncate(upload.path, upload.size)
                    raise RegistryError(
                        "BLOB_UPLOAD_INVALID", f"this node could not store the upload: {exc}", status=500
                    ) from None
                upload.hasher.update(chunk)
                upload.size += len(chunk)
                upload.touched = time.time()
        return upload.size

    async def finish_upload(self, upload: Upload, digest: str) -> None:
        """Verify and publish an upload under `digest`; on a mismatch nothing is stored."""
        self.uploads.pop(upload.id, None)
        fh = open(upload.path, "ab")
        await self.commit_file(upload.path, digest, upload.hasher, fh)

    def cancel_upload(self, upload: Upload) -> None:
        self.uploads.pop(upload.id, None)
        upload.path.unlink(missing_ok=True)

    # --- tags --------------------------------------------------------------------------------

    def _repo_dir(self, name: str) -> Path:
        return self.tag_root / urllib.parse.quote(name, safe="")

    def tags(self, name: str) -> dict[str, TagState]:
        out: dict[str, TagState] = {}
        directory = self._repo_dir(name)
        if not directory.is_dir():
            return out
        for path in directory.iterdir():
            state = _read_tag(path)
            if state is not None and valid_tag(path.name):
                out[path.name] = state
        return out

    def all_tags(self) -> dict[str, TagState]:
        """`repo:tag` -> state, over every repository."""
        out: dict[str, TagState] = {}
        for directory in self.tag_root.iterdir():
            name = urllib.parse.unquote(directory.name)
            for tag, state in self.tags(name).items():
                out[f"{name}:{tag}"] = state
        return out

    def tag(self, name: str, tag: str) -> TagState | None:
        if not valid_tag(tag):
            return None
        return _read_tag(self._repo_dir(name) / tag)

    async def set_tag(self, name: str, tag: str, state: TagState) -> None:
        directory = self._repo_dir(name)
        directory.mkdir(exist_ok=True)
        data = json.dumps({"digest": state.digest, "pushed_ms": state.pushed_ms}).encode()
        await asyncio.to_thread(self._write_small, directory / tag, data)

    def repositories(self) -> list[str]:
        return sorted(urllib.parse.unquote(d.name) for d in self.tag_root.iterdir() if any(d.iterdir()))


def _read_tag(path: Path) -> TagState | None:
    with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
        doc = json.loads(path.read_bytes())
        if valid_digest(doc["digest"]):
            return TagState(int(doc["pushed_ms"]), doc["digest"])
    return None


def write_all(fh: IO[bytes], data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = fh.write(view) or 0
        view = view[written:]


def read_range(fh: IO[bytes], start: int, end: int | None) -> Iterator[bytes]:
    fh.seek(start)
    remaining = None if end is None else end - start
    while remaining is None or remaining > 0:
        chunk = fh.read(CHUNK if remaining is None else min(CHUNK, remaining))
        if not chunk:
            return
        if remaining is not None:
            remaining -= len(chunk)
        yield chunk

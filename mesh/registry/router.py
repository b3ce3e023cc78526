"""The OCI distribution API (`/v2/`), as a small router over the registry.

The path is parsed once into (name, kind, reference); HEAD and GET share one handler that differs
only in whether the body is written. Errors go out in the spec's JSON shape from one helper.
Routes follow the distribution spec (opencontainers/distribution-spec, spec.md, "Endpoints").
The router knows the registry only as `RegistryApi` (below): what it calls, never the store behind it.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import IO, NoReturn, Protocol
from urllib.parse import quote

from aiohttp import web

from mesh.net.body import read_capped
from mesh.net.sendfile import send_file
from mesh.protocol.oci import TagState
from mesh.registry.errors import RegistryError, error_response
from mesh.registry.fetch import Fetch
from mesh.registry.manifest import MAX_MANIFEST, Parsed, parse
from mesh.registry.names import (
    DIGEST,
    NAME,
    BadName,
    Kind,
    Route,
    is_digest,
    parse_path,
    valid_digest,
    valid_tag,
)
from mesh.registry.push_auth import PushAuth
from mesh.registry.store import Upload

log = logging.getLogger("cachemesh.registry")

API_HEADERS = {"Docker-Distribution-API-Version": "registry/2.0"}
RANGE = re.compile(r"bytes=(\d*)-(\d*)")
CONTENT_RANGE = re.compile(r"(?:bytes )?(\d+)-(\d+)(?:/\d+|/\*)?")

Handler = Callable[[web.Request, Route], Awaitable[web.StreamResponse]]


class RegistryApi(Protocol):
    """What the router asks of the registry (mesh.registry.service.Registry)."""

    def count_request(self, method: str, outcome: str) -> None: ...

    def resolve(self) -> Mapping[str, TagState]:
        """repo:tag -> state, across the mesh."""
        ...

    def tag(self, name: str, tag: str) -> TagState | None: ...

    # blobs
    def holds(self, digest: str) -> bool: ...

    async def sized(self, digest: str) -> tuple[int, Fetch | None]:
        """(size, running fetch) of a blob held here or coming from the mesh."""
        ...

    def windows(
        self, digest: str, fetch: Fetch | None, start: int, end: int
    ) -> AsyncIterator[tuple[IO[bytes], int, int]]:
        """(file, offset, count) windows of bytes [start, end) of a blob, as they are here."""
        ...

    # uploads
    def start_upload(self, name: str) -> Upload: ...

    def upload(self, upload_id: str, name: str) -> Upload: ...

    async def append_upload(self, upload: Upload, chunks: AsyncIterator[bytes]) -> None: ...

    async def finish_upload(self, upload: Upload, digest: str) -> None: ...

    def cancel_upload(self, upload: Upload) -> None: ...

    # manifests
    async def manifest(self, digest: str) -> tuple[bytes, str]:
        """(bytes, media type) of a manifest held here or fetched from the mesh."""
        ...

    async def put_manifest(self, digest: str, data: bytes, parsed: Parsed) -> None: ...

    async def push_tag(self, name: str, tag: str, digest: str) -> None: ...

    def may_push(self, ref: str) -> bool:
        """Whether a push to `repo:tag` may be taken here (not a protected name on an untrusted
        host: mesh.protocol.trust)."""
        ...


PUSHES = {(Kind.UPLOAD, "POST"), (Kind.UPLOAD, "PATCH"), (Kind.UPLOAD, "PUT"), (Kind.MANIFEST, "PUT")}
"""Requests that write: with a push token, only these need it (uploads' status and cancel
name an upload a push started, so they need none of their own)."""


def registry_app(registry: RegistryApi, auth: PushAuth | None = None) -> web.Application:
    """`auth`: pushes need the token it holds (--registry-push-token-file); None: open."""
    app = web.Application(client_max_size=MAX_MANIFEST)
    router = Router(registry, auth)
    if auth is not None:
        app.router.add_route("GET", "/v2/token", auth.token)
        app.router.add_route("POST", "/v2/token", auth.token)
    app.router.add_route("*", "/v2", router.handle)
    app.router.add_route("*", "/v2/{tail:.*}", router.handle)
    return app


class _Refused(Exception):
    """An answer refused without a spec error code (416): `Router.handle` sends it as it is."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def raise_416(headers: dict[str, str]) -> NoReturn:
    """Refuse a range or chunk with 416 and `headers` (no body, no spec error code)."""
    raise _Refused(web.Response(status=416, headers=headers))


def _check_digest(digest: str, code: str = "DIGEST_INVALID") -> str:
    if not DIGEST.fullmatch(digest):
        raise RegistryError("DIGEST_INVALID", f"malformed digest {digest[:80]!r}")
    if not valid_digest(digest):
        raise RegistryError(code, f"{digest[:80]}: only sha256 digests are stored here")
    return digest


class Router:
    def __init__(self, registry: RegistryApi, auth: PushAuth | None = None) -> None:
        self.registry = registry
        self.auth = auth
        self.routes: dict[tuple[Kind, str], Handler] = {
            (Kind.BASE, "GET"): self.base,
            (Kind.CATALOG, "GET"): self.catalog,
            (Kind.BLOB, "GET"): self.blob,
            (Kind.BLOB, "DELETE"): self.unsupported,
            (Kind.UPLOAD, "POST"): self.upload_start,
            (Kind.UPLOAD, "PATCH"): self.upload_patch,
            (Kind.UPLOAD, "PUT"): self.upload_put,
            (Kind.UPLOAD, "GET"): self.upload_status,
            (Kind.UPLOAD, "DELETE"): self.upload_cancel,
            (Kind.MANIFEST, "GET"): self.manifest_get,
            (Kind.MANIFEST, "PUT"): self.manifest_put,
            (Kind.MANIFEST, "DELETE"): self.unsupported,
            (Kind.TAGS, "GET"): self.tags,
            (Kind.REFERRERS, "GET"): self.referrers,
        }

    async def handle(self, request: web.Request) -> web.StreamResponse:
        method = "GET" if request.method == "HEAD" else request.method
        head = request.method == "HEAD"
        try:
            try:
                route = parse_path(request.match_info.get("tail", ""))
            except BadName as exc:
                raise RegistryError("NAME_INVALID", f"invalid repository name {str(exc)[:100]!r}") from None
            if route is None:
                raise RegistryError("NAME_UNKNOWN", f"no such endpoint: {request.path[:200]}", status=404)
            handler = self.routes.get((route.kind, method))
            if handler is None:
                raise RegistryError("UNSUPPORTED", f"{request.method} is not supported here")
            if (route.kind, method) in PUSHES:
                self._check_push(request, route)
            response = await handler(request, route)
        except _Refused as refused:
            response = refused.response
        except RegistryError as exc:
            self.registry.count_request(request.method, exc.code.lower())
            return error_response(exc, head=head)
        # Answers refused without a spec error code (an unsatisfiable Range, an out-of-order
        # chunk: 416) count by their status, so that "ok" means served.
        outcome = "ok" if response.status < 400 else str(response.status)
        self.registry.count_request(request.method, outcome)
        return response

    # --- base ------------------------------------------------------------------------------------

    async def base(self, request: web.Request, route: Route) -> web.StreamResponse:
        auth = self.auth
        if auth is not None and not auth.knows(request):
            # What a token-auth registry answers, so that docker login and docker pull learn the
            # token endpoint (pulls then go with an anonymous token, which this registry ignores).
            raise RegistryError(
                "UNAUTHORIZED",
                "this registry takes pushes with a token; pulls need none",
                headers={"WWW-Authenticate": auth.challenge(request)},
            )
        return web.json_response({}, headers=API_HEADERS)

    def _check_push(self, request: web.Request, route: Route) -> None:
        auth = self.auth
        if auth is not None and not auth.may_push(request):
            raise RegistryError(
                "UNAUTHORIZED",
                f"pushing to {route.name} on this node needs its push token "
                f"(--registry-push-token-file): docker login {request.host} -u cachemesh "
                "--password-stdin < TOKEN_FILE, or Basic auth with the token as the password",
                headers={"WWW-Authenticate": auth.challenge(request, f"repository:{route.name}:pull,push")},
            )
        if route.kind is Kind.MANIFEST and not is_digest(route.reference):
            ref = f"{route.name}:{route.reference}"
            if not self.registry.may_push(ref):
                raise RegistryError(
                    "DENIED",
                    f"{ref[:200]} is a protected name (--protect): only trusted hosts publish it, and "
                    "this host holds no trust key, so no host would believe this push. Push to "
                    "another tag (a branch's own), or publish from a trusted host",
                )

    async def unsupported(self, request: web.Request, route: Route) -> web.StreamResponse:
        raise RegistryError("UNSUPPORTED", "deletion is not supported: the mesh keeps content by digest")

    async def catalog(self, request: web.Request, route: Route) -> web.StreamResponse:
        names = sorted({ref.rpartition(":")[0] for ref in self.registry.resolve()})
        return web.json_response({"repositories": names}, headers=API_HEADERS)

    async def referrers(self, request: web.Request, route: Route) -> web.StreamResponse:
        raise RegistryError("UNSUPPORTED", "the referrers API is not supported", status=404)

    # --- blobs -----------------------------------------------------------------------------------

    async def blob(self, request: web.Request, route: Route) -> web.StreamResponse:
        digest = _check_digest(route.reference, "BLOB_UNKNOWN")
        size, fetch = await self.registry.sized(digest)
        headers = {
            **API_HEADERS,
            "Docker-Content-Digest": digest,
            "Accept-Ranges": "bytes",
            "ETag": f'"{digest}"',
        }
        start, end, status = 0, size, 200
        wanted = request.headers.get("Range")
        if wanted:
            match = RANGE.fullmatch(wanted.strip())
            if match and (match.group(1) or match.group(2)):
                first, last = match.groups()
                if first:
                    start = int(first)
                    end = min(size, int(last) + 1) if last else size
                else:  # a suffix: the last N bytes
                    start = max(0, size - int(last))
                if start >= size or end <= start:
                    headers["Content-Range"] = f"bytes */{size}"
                    raise_416(headers)
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        response = web.StreamResponse(status=status, headers=headers)
        response.content_type = "application/octet-stream"
        response.content_length = end - start
        if request.method == "HEAD":
            return response
        await response.prepare(request)
        try:
            async for fh, offset, count in self.registry.windows(digest, fetch, start, end):
                await send_file(request, response, fh, offset, count)
            await response.write_eof()
        except (RegistryError, OSError, ConnectionError) as exc:
            # The status line is gone: cut the connection so the client sees a short body.
            log.warning("blob %s cut off: %s", digest[:19], exc)
            if request.transport is not None:
                request.transport.abort()
        return response

    # --- uploads ----------------------------------------------------------------------------------

    def _upload_headers(self, name: str, upload: Upload) -> dict[str, str]:
        return {
            **API_HEADERS,
            "Location": f"/v2/{name}/blobs/uploads/{upload.id}",
            "Range": f"0-{max(upload.size - 1, 0)}",
            "Docker-Upload-UUID": upload.id,
        }

    def _created(self, name: str, digest: str) -> web.Response:
        headers = {**API_HEADERS, "Location": f"/v2/{name}/blobs/{digest}", "Docker-Content-Digest": digest}
        return web.Response(status=201, headers=headers)

    async def upload_start(self, request: web.Request, route: Route) -> web.StreamResponse:
        if route.reference:
            raise RegistryError("UNSUPPORTED", "POST goes to .../blobs/uploads/", status=404)
        mount = request.query.get("mount")
        if mount is not None:
            source = request.query.get("from", "")
            if valid_digest(mount) and self.registry.holds(mount) and (not source or NAME.fullmatch(source)):
                return self._created(route.name, mount)  # content-addressed: held is held
        digest = request.query.get("digest")
        upload = self.registry.start_upload(route.name)
        if digest is not None:  # a monolithic upload in one POST
            return await self._finish(request, route.name, upload, digest)
        return web.Response(status=202, headers=self._upload_headers(route.name, upload))

    def _upload(self, route: Route) -> Upload:
        return self.registry.upload(route.reference, route.name)

    def _check_in_order(self, request: web.Request, name: str, upload: Upload) -> None:
        """A chunk (PATCH, or the final PUT's body) whose `Content-Range` does not start where the
        upload stands gets 416 with the upload's `Range`, and is not appended."""
        given = request.headers.get("Content-Range")
        if given:
            match = CONTENT_RANGE.fullmatch(given.strip())
            if not match or int(match.group(1)) != upload.size:
                raise_416(self._upload_headers(name, upload))

    async def upload_patch(self, request: web.Request, route: Route) -> web.StreamResponse:
        upload = self._upload(route)
        async with upload.lock:
            self._check_in_order(request, route.name, upload)
            await self.registry.append_upload(upload, request.content.iter_any())
        return web.Response(status=202, headers=self._upload_headers(route.name, upload))

    async def upload_put(self, request: web.Request, route: Route) -> web.StreamResponse:
        upload = self._upload(route)
        digest = request.query.get("digest")
        if digest is None:
            raise RegistryError("DIGEST_INVALID", "the final PUT needs ?digest=")
        return await self._finish(request, route.name, upload, digest)

    async def _finish(self, request: web.Request, name: str, upload: Upload, digest: str) -> web.Response:
        async with upload.lock:
            # Refused (416), the upload stays as it was: the client may send the chunk again.
            self._check_in_order(request, name, upload)
            try:
                _check_digest(digest)
                await self.registry.append_upload(upload, request.content.iter_any())
                length = request.content_length
                if length is not None and request.method == "POST" and upload.size != length:
                    raise RegistryError("SIZE_INVALID", f"got {upload.size} bytes of {length}")
                await self.registry.finish_upload(upload, digest)
            except RegistryError:
                self.registry.cancel_upload(upload)
                raise
        return self._created(name, digest)

    async def upload_status(self, request: web.Request, route: Route) -> web.StreamResponse:
        upload = self._upload(route)
        return web.Response(status=204, headers=self._upload_headers(route.name, upload))

    async def upload_cancel(self, request: web.Request, route: Route) -> web.StreamResponse:
        self.registry.cancel_upload(self._upload(route))
        return web.Response(status=204, headers=API_HEADERS)

    # --- manifests --------------------------------------------------------------------------------

    async def manifest_get(self, request: web.Request, route: Route) -> web.StreamResponse:
        reference = route.reference
        if is_digest(reference):
            digest = _check_digest(reference, "MANIFEST_UNKNOWN")
        else:
            state = self.registry.tag(route.name, reference) if valid_tag(reference) else None
            if state is None:
                raise RegistryError("MANIFEST_UNKNOWN", f"{route.name}:{reference[:128]} is not known")
            digest = state.digest
        data, media_type = await self.registry.manifest(digest)
        headers = {**API_HEADERS, "Docker-Content-Digest": digest, "ETag": f'"{digest}"'}
        if request.method == "HEAD":
            response = web.StreamResponse(headers=headers)
            response.content_type = media_type
            response.content_length = len(data)
            return response
        response = web.Response(body=data, headers=headers)
        response.content_type = media_type
        return response

    async def manifest_put(self, request: web.Request, route: Route) -> web.StreamResponse:
        length = request.content_length
        if length is not None and length > MAX_MANIFEST:
            raise RegistryError("SIZE_INVALID", f"manifests are limited to {MAX_MANIFEST} bytes", status=413)
        data = await read_capped(request.content, MAX_MANIFEST)
        if len(data) > MAX_MANIFEST:
            raise RegistryError("SIZE_INVALID", f"manifests are limited to {MAX_MANIFEST} bytes", status=413)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        reference = route.reference
        if is_digest(reference):
            _check_digest(reference)
            if reference != digest:
                raise RegistryError("DIGEST_INVALID", f"the manifest's digest is {digest}, not {reference}")
        elif not valid_tag(reference):
            raise RegistryError("MANIFEST_INVALID", f"invalid tag {reference[:128]!r}")
        parsed = parse(data, request.headers.get("Content-Type"))
        await self.registry.put_manifest(digest, data, parsed)
        if not is_digest(reference):
            await self.registry.push_tag(route.name, reference, digest)
        headers = {
            **API_HEADERS,
            "Location": f"/v2/{route.name}/manifests/{digest}",
            "Docker-Content-Digest": digest,
        }
        # No `OCI-Subject` for a manifest with a subject: the referrers API is left out, and that
        # header would tell the client its referrer is indexed, so it would skip the fallback tag.
        return web.Response(status=201, headers=headers)

    # --- tags --------------------------------------------------------------------------------------

    async def tags(self, request: web.Request, route: Route) -> web.StreamResponse:
        prefix = route.name + ":"
        names = sorted(ref[len(prefix) :] for ref in self.registry.resolve() if ref.startswith(prefix))
        if not names:
            raise RegistryError("NAME_UNKNOWN", f"no tags in {route.name}")
        last = request.query.get("last")
        if last:
            names = [t for t in names if t > last]
        headers = dict(API_HEADERS)
        n = request.query.get("n")
        if n is not None:
            try:
                count = max(0, int(n))
            except ValueError:
                raise RegistryError("UNSUPPORTED", "n must be a number", status=400) from None
            if len(names) > count:
                names = names[:count]
                if names:
                    headers["Link"] = (
                        f'</v2/{route.name}/tags/list?n={count}&last={quote(names[-1])}>; rel="next"'
                    )
        return web.json_response({"name": route.name, "tags": names}, headers=headers)

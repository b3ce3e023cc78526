"""The server half of the peer API (`/v1/`), with its defences.

Every request is read under a size cap and a time limit, then authenticated, then decoded:
- body larger than the cap: 413, refused from Content-Length before reading, or as soon as a
  chunked body passes the cap;
- body not complete within `request_timeout`: 408 (a slow client holds one coroutine, nothing more);
- unsigned, forged, stale or replayed: 401;
- signed but malformed: 400 with the reason;
- `POST /v1/save` when `max_transfers_out` saves are running waits in a queue of at most
  `upload_queue` requests (first come, first served); past that, 503 with Retry-After, so the
  puller backs off or tries another peer instead of storming this one;
- a save, or registry content, the node hands on to a relay (mesh.protocol.sources.relay_to):
  503, Retry-After: 0 and the relay's node ID in X-Cachemesh-Relay;
- a connection that has not delivered its first request's headers within `request_timeout` is
  closed by a sweeper (aiohttp times out idle keep-alive connections, but not a client stuck in its
  first request line, so half-open connections would otherwise pile up until file descriptors run out).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager
from typing import Any, Protocol

import msgpack
from aiohttp import web

from mesh.engine.base import EngineError
from mesh.net.auth import HEADER_NONCE, AuthError, ReplayGuard, Signer, verify_request
from mesh.net.body import read_capped
from mesh.net.contract import (
    CHAIN_HEADER,
    CONTENT_PATH,
    GOSSIP_PATH,
    HAVE_HEADER,
    MEDIA_TYPE_HEADER,
    MSGPACK,
    OCTET_STREAM,
    RELAY_HEADER,
    SAVE_PATH,
    SAVE_REQUEST_MAX,
    SIZE_HEADER,
    TAR,
    UNKNOWN_PATHS,
    ContentStream,
    SaveRequest,
    SaveStream,
    error_body,
)
from mesh.net.sendfile import send_file
from mesh.net.tls_peers import TLSObserver, connection_tls
from mesh.protocol import wire

log = logging.getLogger("cachemesh.peer")


MAX_LAYERS = 1000  # an image has at most 127 layers on overlay2; a chain repeats them
MAX_HOPS = 1000  # hand-offs a save request may say it followed (the puller stops at 32)


BUSY_RETRY_AFTER = 2  # seconds a requester turned away by a full queue is asked to wait


class SaveRefused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class PeerHandler(Protocol):
    def on_envelope(self, envelope: wire.Envelope) -> wire.Envelope | None: ...

    def handoff(self, request: SaveRequest) -> str:
        """The relay to send this requester to instead of serving it here, or ""."""

    async def open_save(self, request: SaveRequest) -> SaveStream: ...

    def uploads_changed(self, uploads: int) -> None:
        """Saves in flight plus queued changed: the load figure this node gossips."""

    def count_request(self, endpoint: str, status: int) -> None: ...

    def count_bytes_out(self, n: int) -> None: ...

    def save_finished(self, image: str, ok: bool) -> None: ...


class ContentSource(Protocol):
    """Registry content this node serves to peers (`POST /v1/content`)."""

    def open_content(self, digest: str, offset: int) -> ContentStream | None: ...

    def handoff_content(self, digest: str, requester: str, hops: int) -> str:
        """A peer this node streams `digest` to now, to send this requester to instead, or ""."""
        ...

    def streaming(self, digest: str, requester: str) -> AbstractContextManager[None]:
        """Around a whole-rest answer: while it lasts, `requester` is a downstream of `digest`
        (it fetches it into a file it relays from as the bytes arrive)."""
        ...


def _handed_on(relay_id: str, what: str) -> web.Response:
    """A hand-off (saves and content alike): ask `relay_id`, which receives `what` and relays it."""
    headers = {RELAY_HEADER: relay_id, "Retry-After": "0"}
    return _error(503, f"handed on: {relay_id} relays {what[:19]}", headers)


def _sha256(value: object, field: str) -> str:
    """A request's `sha256:<64 hex>` field, or ValueError saying which field is wrong."""
    if not wire.is_sha256(value):
        raise ValueError(f"{field} must be a sha256 digest (sha256: and 64 lowercase hex digits)")
    return value


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=error_body(message), content_type=MSGPACK, headers=headers)


class PeerServer:
    def __init__(
        self,
        handler: PeerHandler,
        signer: Signer,
        *,
        max_body: int,
        request_timeout: float,
        auth_window: float,
        max_saves: int,
        upload_queue: int = 32,
        tls: TLSObserver | None = None,
        content: ContentSource | None = None,
    ) -> None:
        self._handler = handler
        self._tls = tls
        self._signer = signer
        self._max_body = max_body
        self._request_timeout = request_timeout
        self._auth_window = auth_window
        self._replay = ReplayGuard(auth_window)
        self._saves = asyncio.Semaphore(max_saves)
        self._upload_queue = upload_queue
        self.saving = 0
        self.queued = 0
        self.closed_half_open = 0
        self.app = web.Application(client_max_size=max_body)
        self.app.router.add_post(GOSSIP_PATH, self._gossip)
        self.app.router.add_post(SAVE_PATH, self._save)
        self._content = content
        if content is not None:
            self.app.router.add_post(CONTENT_PATH, self._serve_content)
        self.app.router.add_route("*", UNKNOWN_PATHS, self._unknown)

    async def sweep(self, server: web.Server) -> None:
        """Close connections stuck before their first request's headers (slowloris, half-open)."""
        first_seen: dict[object, float] = {}
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(1.0, self._request_timeout / 4))
            now = loop.time()
            connections = server.connections
            # aiohttp's handlers have __slots__ without __weakref__: keep a plain dict, pruned each pass.
            first_seen = {h: first_seen.get(h, now) for h in connections}
            for handler in connections:
                seen = first_seen[handler]
                # _request_count is aiohttp's count of requests parsed on this connection; without it
                # (a future aiohttp), fall back to treating every connection as past its headers.
                if getattr(handler, "_request_count", 1) == 0 and now - seen > self._request_timeout:
                    handler.force_close()
                    self.closed_half_open += 1

    async def _read_signed(self, request: web.Request, limit: int) -> tuple[bytes, str] | web.Response:
        length = request.content_length
        if length is not None and length > limit:
            return _error(413, f"body of {length} bytes exceeds the {limit}-byte limit")
        try:
            async with asyncio.timeout(self._request_timeout):
                body = await read_capped(request.content, limit)
        except TimeoutError:
            return _error(408, f"request body not received within {self._request_timeout:.0f}s")
        if len(body) > limit:
            return _error(413, f"body exceeds the {limit}-byte limit")
        try:
            sender = verify_request(
                self._signer.keys,
                self._signer.cluster,
                request.method,
                request.path_qs,
                request.headers,
                body,
                time.time(),
                self._auth_window,
                self._replay,
            )
        except AuthError as exc:
            return _error(401, str(exc))
        if self._tls is not None and self._tls.tls is not None:
            # Who speaks: the certificate's node ID must be the signed sender's.
            conn = connection_tls(request.transport)
            if conn is None:
                return _error(403, "this node requires TLS")
            if conn.cert is not None and conn.cert.node_id is not None and conn.cert.node_id != sender:
                return _error(
                    403,
                    f"certificate is for node {conn.cert.node_id[:64]!r}, request signed as {sender[:64]!r}",
                )
            self._tls.seen(sender, None, conn, time.time())
        return body, sender

    async def _gossip(self, request: web.Request) -> web.StreamResponse:
        signed = await self._read_signed(request, self._max_body)
        if isinstance(signed, web.Response):
            self._handler.count_request("gossip", signed.status)
            return signed
        body, sender = signed
        try:
            envelope = wire.decode(body, max_bytes=self._max_body)
        except wire.WireError as exc:
            self._handler.count_request("gossip", 400)
            return _error(400, f"malformed gossip: {exc}")
        if envelope.sender != sender:
            self._handler.count_request("gossip", 403)
            return _error(
                403, f"envelope sender {envelope.sender[:64]!r} is not the signed sender {sender[:64]!r}"
            )
        reply = self._handler.on_envelope(envelope)
        self._handler.count_request("gossip", 200)
        payload = wire.encode(reply) if reply is not None else b""
        status = 200 if reply is not None else 204
        headers = self._signer.sign_response(request.headers[HEADER_NONCE], status, payload)
        return web.Response(status=status, body=payload or None, headers=headers, content_type=MSGPACK)

    async def _read_request(self, request: web.Request, endpoint: str) -> tuple[Any, str] | web.Response:
        """A small signed msgpack request (save, content): (its document, the requester), or the
        refusal to send back, already counted."""
        signed = await self._read_signed(request, SAVE_REQUEST_MAX)
        if isinstance(signed, web.Response):
            self._handler.count_request(endpoint, signed.status)
            return signed
        body, requester = signed
        try:
            return msgpack.unpackb(body, raw=False), requester
        except Exception as exc:
            self._handler.count_request(endpoint, 400)
            return _error(400, f"malformed {endpoint} request: {exc}")

    async def _save(self, request: web.Request) -> web.StreamResponse:
        read = await self._read_request(request, "save")
        if isinstance(read, web.Response):
            return read
        doc, requester = read
        try:
            image = _sha256(doc["image"], "image")
            have = doc.get("have", 0)
            store = doc.get("store", "graph")
            relay, handoff = doc.get("relay", False), doc.get("handoff", False)
            hops = doc.get("hops", 0)  # absent from nodes that predate it: a first request
            if not isinstance(have, int) or not 0 <= have <= MAX_LAYERS:
                raise ValueError(f"have must be a layer count from 0 to {MAX_LAYERS}")
            if store not in ("graph", "containerd"):
                raise ValueError("store must be 'graph' or 'containerd'")
            if type(relay) is not bool or type(handoff) is not bool:
                raise ValueError("relay and handoff must be booleans")
            if type(hops) is not int or not 0 <= hops <= MAX_HOPS:
                raise ValueError(f"hops must be a count from 0 to {MAX_HOPS}")
        except Exception as exc:
            self._handler.count_request("save", 400)
            return _error(400, f"malformed save request: {exc}")
        # `relay` with `have` > 0 (a delta relay) comes from nodes that tag their spool with it;
        # older ones never send both.
        save_request = SaveRequest(image, requester, have, store, relay, handoff, hops)
        relay_id = self._handler.handoff(save_request) if handoff else ""
        if relay_id:
            self._handler.count_request("save", 503)
            return _handed_on(relay_id, image)
        if self._saves.locked() and self.queued >= self._upload_queue:
            self._handler.count_request("save", 503)
            return _error(
                503,
                f"busy: {self.saving} uploads running and {self.queued} queued; retry later or elsewhere",
                {"Retry-After": str(BUSY_RETRY_AFTER)},
            )
        self._set_load(queued=+1)
        try:
            await self._saves.acquire()
        finally:
            self._set_load(queued=-1)
        self._set_load(saving=+1)
        try:
            try:
                served = await self._handler.open_save(save_request)
            except SaveRefused as exc:
                self._handler.count_request("save", exc.status)
                return _error(exc.status, str(exc))
            headers = {CHAIN_HEADER: ",".join(served.chain)}
            if served.have is not None:
                headers[HAVE_HEADER] = str(served.have)
            response = web.StreamResponse(headers=headers)
            response.content_type = TAR
            response.enable_chunked_encoding()
            await response.prepare(request)
            ok = False
            try:
                async for chunk in served.chunks:
                    await response.write(chunk)
                    self._handler.count_bytes_out(len(chunk))
                await response.write_eof()
                ok = True
            except (EngineError, OSError, ConnectionError) as exc:
                # Abort the connection rather than end the chunked body: the receiver sees a broken
                # transfer at once, its load sees a truncated tar, and nothing is loaded.
                log.warning("save of %s to %s aborted: %s", image[:19], requester, exc)
                if request.transport is not None:
                    request.transport.abort()
            finally:
                self._handler.save_finished(image, ok)
                self._handler.count_request("save", 200 if ok else 500)
            return response
        finally:
            self._saves.release()
            self._set_load(saving=-1)

    def _set_load(self, *, saving: int = 0, queued: int = 0) -> None:
        self.saving += saving
        self.queued += queued
        self._handler.uploads_changed(self.saving + self.queued)

    async def _serve_content(self, request: web.Request) -> web.StreamResponse:
        """Registry content by digest, from an offset (a fetch resumed from another holder)."""
        assert self._content is not None
        read = await self._read_request(request, "content")
        if isinstance(read, web.Response):
            return read
        doc, requester = read
        try:
            digest, offset, limit = _sha256(doc["digest"], "digest"), doc["offset"], doc.get("limit")
            if type(offset) is not int or offset < 0:
                raise ValueError("offset must be a non-negative integer")
            if limit is not None and (type(limit) is not int or limit < 0):
                raise ValueError("limit must be a non-negative integer")
            handoff, hops = doc.get("handoff", False), doc.get("hops", 0)
            if type(handoff) is not bool:
                raise ValueError("handoff must be a boolean")
            if type(hops) is not int or not 0 <= hops <= MAX_HOPS:
                raise ValueError(f"hops must be a count from 0 to {MAX_HOPS}")
        except Exception as exc:
            self._handler.count_request("content", 400)
            return _error(400, f"malformed content request: {exc}")
        relay_id = self._content.handoff_content(digest, requester, hops) if handoff else ""
        if relay_id:
            self._handler.count_request("content", 503)
            return _handed_on(relay_id, digest)
        stream = self._content.open_content(digest, offset)
        if stream is None:
            self._handler.count_request("content", 404)
            return _error(404, f"{digest[:19]} is not held here")
        if offset > stream.size:
            self._handler.count_request("content", 416)
            return _error(416, f"offset {offset} is past the end ({stream.size} bytes)")
        headers = {SIZE_HEADER: str(stream.size), MEDIA_TYPE_HEADER: stream.media_type}
        response = web.StreamResponse(headers=headers)
        response.content_type = OCTET_STREAM
        # `limit` caps the bytes sent (a fetch that must wait for its turn asks for a first part;
        # 0 brings the headers alone).
        count = stream.size - offset if limit is None else min(limit, stream.size - offset)
        response.content_length = count
        # A downstream from before the first await: a request arriving meanwhile is handed on to
        # it, not sent a second copy. A first part (`limit`) is none: it stops early, asks again.
        downstream = contextlib.ExitStack()
        if limit is None:
            downstream.enter_context(self._content.streaming(digest, requester))
        try:
            await response.prepare(request)
        except BaseException:
            downstream.close()
            raise
        status = 500
        try:
            with downstream:
                await self._send_content(request, response, stream, offset, count)
            await response.write_eof()
            status = 200
        except (ConnectionResetError, BrokenPipeError) as exc:
            # The asker closed it: a fetch giving way to a more wanted body (it asks again from
            # where it stopped), or a node gone. Not this node's failure.
            log.debug("content %s to %s closed by the asker: %s", digest[:19], requester, exc)
            status = 499
            if request.transport is not None:
                request.transport.abort()
        except (OSError, ConnectionError) as exc:
            log.warning("content %s to %s aborted: %s", digest[:19], requester, exc)
            if request.transport is not None:
                request.transport.abort()
        finally:
            self._handler.count_request("content", status)
        return response

    async def _send_content(
        self,
        request: web.Request,
        response: web.StreamResponse,
        stream: ContentStream,
        offset: int,
        count: int,
    ) -> None:
        if not count:
            return
        if stream.path and request.transport is not None:
            with open(stream.path, "rb") as fh:
                await send_file(request, response, fh, offset, count)
            self._handler.count_bytes_out(count)
        else:
            await self._relay(response, stream.chunks, count)

    async def _relay(self, response: web.StreamResponse, chunks: AsyncIterator[bytes], count: int) -> None:
        """The first `count` bytes of content still arriving (mesh.registry.fetch.windows)."""
        sent = 0
        try:
            async for chunk in chunks:
                piece = chunk if len(chunk) <= count - sent else chunk[: count - sent]
                await response.write(piece)
                self._handler.count_bytes_out(len(piece))
                sent += len(piece)
                if sent >= count:
                    return
        finally:
            close = getattr(chunks, "aclose", None)
            if close is not None:
                await close()  # its open file and its wait on the fetch end here, not at collection

    async def _unknown(self, request: web.Request) -> web.Response:
        self._handler.count_request("unknown", 404)
        return _error(404, f"no such endpoint: {request.method} {request.path}")

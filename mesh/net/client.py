"""The client half of the peer API: signed gossip exchanges and image save streams."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import msgpack

from mesh.net.auth import HEADER_NONCE, AuthError, Signer
from mesh.net.contract import (
    CHAIN_HEADER,
    CONTENT_PATH,
    GOSSIP_PATH,
    MEDIA_TYPE_HEADER,
    MSGPACK,
    SAVE_PATH,
    SIZE_HEADER,
    ContentStream,
    SaveStream,
    error_text,
    peer_url,
)
from mesh.net.tls import TLSClient
from mesh.protocol import wire


class PeerError(Exception):
    """A peer refused a request or broke the protocol. The message says which and why."""


class PeerClient:
    def __init__(
        self, signer: Signer, *, max_message_bytes: int, timeout: float, tls: TLSClient | None = None
    ) -> None:
        self._tls = tls  # every request of the session goes over it, checked (mesh.net.tls)
        self._signer = signer
        self._max = max_message_bytes
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            # Keep-alive connections per peer: a probe then costs one round trip, not a handshake.
            connector = aiohttp.TCPConnector(
                limit=0, limit_per_host=8, keepalive_timeout=30, ssl=self._tls.context if self._tls else True
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                **(self._tls.session_options() if self._tls else {}),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def exchange(self, addr: str, envelope: wire.Envelope) -> wire.Envelope | None:
        """POST one envelope; return the peer's reply envelope (None when it has nothing to say)."""
        body = wire.encode(envelope)
        headers = self._signer.sign_request("POST", GOSSIP_PATH, body, time.time())
        headers["Content-Type"] = MSGPACK
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        async with self._http().post(
            peer_url(addr, GOSSIP_PATH), data=body, headers=headers, timeout=timeout
        ) as r:
            payload = await r.content.read(self._max + 1)
            if r.status == 204:
                return None
            if r.status != 200:
                raise PeerError(f"{addr}: {r.status} {error_text(payload)}")
            if len(payload) > self._max:
                raise PeerError(f"{addr}: reply larger than {self._max} bytes")
            try:
                self._signer.verify_response(headers[HEADER_NONCE], r.status, r.headers, payload)
            except AuthError as exc:
                raise PeerError(f"{addr}: {exc}") from None
            try:
                reply = wire.decode(payload, max_bytes=self._max)
            except wire.WireError as exc:
                raise PeerError(f"{addr}: malformed reply: {exc}") from None
            if self._tls is not None:
                self._tls.check_sender(r, reply.sender)
            return reply

    @asynccontextmanager
    async def save(
        self,
        addr: str,
        image: str,
        *,
        have: int = 0,
        store: str = "graph",
        chunk_bytes: int,
        idle_timeout: float,
    ) -> AsyncIterator[SaveStream]:
        """Open a `docker save` stream of `image` and its parent chain from a peer. `have`: how
        many leading layers of the image this side holds, to be left out; `store`: this side's
        image store ("graph" or "containerd"), which decides the formats it can take a delta in."""
        body: bytes = msgpack.packb({"image": image, "have": have, "store": store})
        headers = self._signer.sign_request("POST", SAVE_PATH, body, time.time())
        headers["Content-Type"] = MSGPACK
        # No total timeout (a large image takes minutes); a stalled stream is cut by the idle timeout.
        timeout = aiohttp.ClientTimeout(total=None, connect=self._timeout, sock_read=idle_timeout)
        async with self._http().post(
            peer_url(addr, SAVE_PATH), data=body, headers=headers, timeout=timeout
        ) as r:
            if r.status != 200:
                reason = error_text(await r.content.read(4096))
                raise PeerError(f"{addr}: save of {image[:19]} refused: {r.status} {reason}")
            chain = [c for c in r.headers.get(CHAIN_HEADER, "").split(",") if c]
            yield SaveStream(chain, r.content.iter_chunked(chunk_bytes))

    @asynccontextmanager
    async def content(
        self, addr: str, digest: str, *, offset: int, chunk_bytes: int, idle_timeout: float
    ) -> AsyncIterator[ContentStream]:
        """Open registry content (a blob or manifest, by digest) on a peer, from `offset` on. The
        body has a Content-Length, so a peer that dies mid-stream is a ClientPayloadError."""
        body: bytes = msgpack.packb({"digest": digest, "offset": offset})
        headers = self._signer.sign_request("POST", CONTENT_PATH, body, time.time())
        headers["Content-Type"] = MSGPACK
        timeout = aiohttp.ClientTimeout(total=None, connect=self._timeout, sock_read=idle_timeout)
        # A larger read buffer than aiohttp's 64 KiB: fewer pauses of the socket per blob.
        url = peer_url(addr, CONTENT_PATH)
        async with self._http().post(
            url, data=body, headers=headers, timeout=timeout, read_bufsize=chunk_bytes
        ) as r:
            if r.status != 200:
                reason = error_text(await r.content.read(4096))
                raise PeerError(f"{addr}: {digest[:19]} refused: {r.status} {reason}")
            try:
                size = int(r.headers[SIZE_HEADER])
            except (KeyError, ValueError):
                raise PeerError(f"{addr}: no {SIZE_HEADER} header") from None
            media_type = r.headers.get(MEDIA_TYPE_HEADER, "")
            yield ContentStream(size, media_type, r.content.iter_chunked(chunk_bytes))

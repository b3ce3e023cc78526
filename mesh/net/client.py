"""The client half of the peer API: signed gossip exchanges and image save streams."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import aiohttp
import msgpack

from mesh.net.auth import HEADER_NONCE, AuthError, Signer
from mesh.net.body import read_capped
from mesh.net.bulk import BulkClient, BulkError
from mesh.net.contract import (
    CHAIN_HEADER,
    CONTENT_PATH,
    GOSSIP_PATH,
    HAVE_HEADER,
    MEDIA_TYPE_HEADER,
    MSGPACK,
    RELAY_HEADER,
    SAVE_PATH,
    SIZE_HEADER,
    ContentStream,
    SaveStream,
    error_text,
    peer_url,
)
from mesh.net.tls_peers import TLSClient, describe_tls_failure
from mesh.protocol import wire


class PeerError(Exception):
    """A peer refused a request or broke the protocol. The message says which and why."""


class HandedOff(PeerError):
    """The peer sends this requester to a relay of the image (node ID `relay`) instead."""

    def __init__(self, message: str, relay: str) -> None:
        super().__init__(message)
        self.relay = relay


class PeerBusy(PeerError):
    """The peer's upload queue is full: not a fault of the peer; ask again after `retry_after`."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StreamStalled(PeerError):
    """No bytes arrived for the idle timeout: the peer died, stalled or was stopped."""


FIRST_BYTE_TIMEOUT = 60.0
"""The first chunk may take longer than the idle timeout: the peer's engine starts its save then
(a stopped peer is noticed sooner by the mesh's failure detector; see mesh/node/puller.py)."""
MAX_STREAM_HAVE = 1000  # a save request's `have` is at most this (mesh.net.server.MAX_LAYERS)


async def _idle_limited(chunks: AsyncIterator[bytes], idle_timeout: float, what: str) -> AsyncIterator[bytes]:
    """The chunks, raising StreamStalled when the next one takes longer than `idle_timeout`
    (FIRST_BYTE_TIMEOUT for the first). Only the wait for the peer counts: a slow consumer (the
    engine's load) does not."""
    limit = max(idle_timeout, FIRST_BYTE_TIMEOUT)
    while True:
        try:
            async with asyncio.timeout(limit):
                chunk = await anext(chunks)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise StreamStalled(f"{what}: no bytes for {limit:.0f}s") from None
        limit = idle_timeout
        yield chunk


class PeerClient:
    def __init__(
        self, signer: Signer, *, max_message_bytes: int, timeout: float, tls: TLSClient | None = None
    ) -> None:
        self._tls = tls  # every request of the session goes over it, checked (mesh.net.tls_peers)
        self._signer = signer
        self._max = max_message_bytes
        self._timeout = timeout
        # Two pools. Gossip and probes are short, and a peer is judged by how fast they answer;
        # streams (saves, registry content) can stay open for minutes, several waiting for their
        # turn (mesh.registry.lane). In one bounded pool, open streams would hold every slot and
        # the next probe or fetch would time out waiting for one: a live peer taken for dead.
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._bulk = BulkClient(tls, connect_timeout=timeout)  # registry content bodies

    def _http(self, pool: str = "control") -> aiohttp.ClientSession:
        session = self._sessions.get(pool)
        if session is None:
            # Keep-alive connections per peer: a probe then costs one round trip, not a handshake.
            # Streams are bounded by what asks for them (the server queues saves), not here.
            connector = aiohttp.TCPConnector(
                limit=0,
                limit_per_host=8 if pool == "control" else 0,
                keepalive_timeout=30,
                ssl=self._tls.context if self._tls else True,
            )
            session = self._sessions[pool] = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                **(self._tls.session_options() if self._tls else {}),
            )
        return session

    async def close(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()
        self._bulk.close()

    async def exchange(self, addr: str, envelope: wire.Envelope) -> wire.Envelope | None:
        """POST one envelope; return the peer's reply envelope (None when it has nothing to say)."""
        body = wire.encode(envelope)
        headers = self._signer.sign_request("POST", GOSSIP_PATH, body, time.time())
        headers["Content-Type"] = MSGPACK
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        async with self._http().post(
            peer_url(addr, GOSSIP_PATH), data=body, headers=headers, timeout=timeout
        ) as r:
            payload = await read_capped(r.content, self._max)
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
        relay: bool = False,
        handoff: bool = True,
        hops: int = 0,
        chunk_bytes: int,
        idle_timeout: float,
        queue_wait: float = 300.0,
    ) -> AsyncIterator[SaveStream]:
        """Open a `docker save` stream of `image` and its parent chain from a peer. `have`: how
        many leading layers of the image this side holds, to be left out; `store`: this side's
        image store ("graph" or "containerd"), which decides the formats it can take a delta in;
        `relay`: this side spools the stream and serves it on as it arrives; `handoff`: the peer
        may send this side to a relay instead (HandedOff); `hops`: hand-offs this side has
        followed in this attempt, which decide where the peer hands it on.

        The answer may wait in the peer's upload queue for up to `queue_wait`; once streaming, a
        gap of `idle_timeout` between chunks raises StreamStalled. A full queue raises PeerBusy."""
        doc = {"image": image, "have": have, "store": store, "relay": relay, "handoff": handoff, "hops": hops}
        body: bytes = msgpack.packb(doc)
        headers = self._signer.sign_request("POST", SAVE_PATH, body, time.time())
        headers["Content-Type"] = MSGPACK
        # No total timeout (a large image takes minutes) and no socket read timeout (the answer
        # may wait in the peer's queue); the body's chunks are held to the idle timeout instead.
        timeout = aiohttp.ClientTimeout(total=None, connect=self._timeout, sock_read=None)
        async with AsyncExitStack() as stack:
            try:
                async with asyncio.timeout(queue_wait):
                    r = await stack.enter_async_context(
                        self._http("streams").post(
                            peer_url(addr, SAVE_PATH),
                            data=body,
                            headers=headers,
                            timeout=timeout,
                            read_bufsize=chunk_bytes,  # as for content: fewer pauses of the socket
                        )
                    )
            except TimeoutError:
                raise StreamStalled(
                    f"{addr}: no answer to a save of {image[:19]} in {queue_wait:.0f}s"
                ) from None
            if r.status != 200:
                reason = error_text(await r.content.read(4096))
                message = f"{addr}: save of {image[:19]} refused: {r.status} {reason}"
                if r.status == 503 and r.headers.get(RELAY_HEADER):
                    raise HandedOff(message, r.headers[RELAY_HEADER])
                if r.status == 503:
                    raise PeerBusy(message, _retry_after(r.headers.get("Retry-After", "")))
                raise PeerError(message)
            chain = [c for c in r.headers.get(CHAIN_HEADER, "").split(",") if c]
            chunks = _idle_limited(r.content.iter_chunked(chunk_bytes), idle_timeout, addr)
            yield SaveStream(chain, chunks, _stream_have(r.headers.get(HAVE_HEADER, "")))

    @asynccontextmanager
    async def content(
        self,
        addr: str,
        digest: str,
        *,
        offset: int,
        chunk_bytes: int,
        idle_timeout: float,
        limit: int | None = None,
        handoff: bool = False,
        hops: int = 0,
    ) -> AsyncIterator[ContentStream]:
        """Open registry content (a blob or manifest, by digest) on a peer, from `offset` on, at
        most `limit` bytes of it (0: only its size and media type). The body has a Content-Length,
        so a peer that dies mid-stream is a ClientPayloadError. `handoff`: the peer may send this
        side to a peer it is streaming the digest to (HandedOff), as for saves; `hops`: hand-offs
        this side has followed for it."""
        doc: dict[str, object] = {"digest": digest, "offset": offset}
        if limit is not None:
            doc["limit"] = limit
        if handoff:  # absent: a node that predates hand-offs of content, or one that wants none
            doc["handoff"], doc["hops"] = True, hops
        body: bytes = msgpack.packb(doc)
        headers = self._signer.sign_request("POST", CONTENT_PATH, body, time.time())
        headers["Content-Type"] = MSGPACK
        # On a blocking socket read in a thread, not on the loop: mesh.net.bulk says why.
        try:
            answer = await self._bulk.open(addr, CONTENT_PATH, body, headers, read_timeout=idle_timeout)
        except ssl.SSLError as exc:
            raise PeerError(f"{addr}: {describe_tls_failure(exc) or exc}") from None
        except BulkError as exc:
            raise PeerError(str(exc)) from None
        try:
            if answer.status != 200:
                preview = await asyncio.get_running_loop().run_in_executor(self._bulk.pool, answer.preview)
                message = f"{addr}: {digest[:19]} refused: {answer.status} {error_text(preview)}"
                if answer.status == 503 and answer.headers.get(RELAY_HEADER):
                    raise HandedOff(message, answer.headers[RELAY_HEADER])
                raise PeerError(message)
            try:
                size = int(answer.headers[SIZE_HEADER])
            except (KeyError, TypeError, ValueError):
                raise PeerError(f"{addr}: no {SIZE_HEADER} header") from None
            media_type = answer.headers.get(MEDIA_TYPE_HEADER, "")
            yield ContentStream(
                size,
                media_type,
                self._pieces(addr, answer.read_into, chunk_bytes),
                read_into=self._checked(addr, answer.read_into),
                abort=answer.abort,
            )
        finally:
            answer.close()

    def _checked(self, addr: str, read_into: Callable[[memoryview], int]) -> Callable[[memoryview], int]:
        """`read_into` raising PeerError (with the peer named) where the body breaks HTTP."""

        def read(buffer: memoryview) -> int:
            try:
                return read_into(buffer)
            except BulkError as exc:
                raise PeerError(f"{addr}: {exc}") from None

        return read

    async def _pieces(
        self, addr: str, read_into: Callable[[memoryview], int], size: int
    ) -> AsyncIterator[bytes]:
        """The body as bytes pieces, for a reader on the loop (the fetcher reads in a thread)."""
        loop = asyncio.get_running_loop()
        read = self._checked(addr, read_into)
        while True:
            buffer = bytearray(size)
            n = await loop.run_in_executor(self._bulk.pool, read, memoryview(buffer))
            if not n:
                return
            yield bytes(buffer[:n])


def _stream_have(value: str) -> int | None:
    """HAVE_HEADER's count, or None when absent (a sender from before it) or not a layer count."""
    return int(value) if value.isascii() and value.isdigit() and int(value) <= MAX_STREAM_HAVE else None


def _retry_after(value: str) -> float:
    try:
        return max(0.0, min(float(value), 60.0))
    except ValueError:
        return 2.0

"""Registry content from a peer on a blocking socket, read in a worker thread.

Why not aiohttp, as for everything else: on the event loop, TLS runs through OpenSSL's memory
buffers. Every record is copied from the socket into a buffer, decrypted into another, copied into
the stream reader's, and handed out as a new bytes object, with a callback or two per record; and
the hash and the write of each piece then hold the loop. Read here, OpenSSL decrypts straight from
the socket into one reused buffer, and the caller hashes and writes it in the same thread while the
loop serves the engine. On a 1 GB TLS stream with sha256 and a write per piece, that is 1.37
CPU-seconds against 1.76 (docs/benchmarks.md, registry pulls). Plain connections (TLS off) take the
same path.

One request per connection at a time; a connection whose answer was read to its end goes back to a
small idle pool per peer (keep-alive: a blob after a blob costs no handshake). The peer's identity
is checked on every answer as on the aiohttp session (mesh.net.tls_peers.TLSClient.check), and a
failed handshake is recorded with its reason the same way, both on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import socket
import ssl
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from mesh.hostport import parse_hostport
from mesh.net.tls_peers import ConnectionTLS, TLSClient, describe_tls_failure, ssl_facts

IDLE_PER_PEER = 4  # idle keep-alive connections kept per peer
IDLE_SECONDS = 20.0  # under aiohttp's server keep-alive of 75 s: a kept connection is rarely dead
BODY_PREVIEW = 4096  # what is read of an error answer's body


class BulkError(Exception):
    """The peer broke HTTP (a bad status line, a short body): not an OSError, so named here."""


@dataclass
class Answer:
    """A peer's answer on a bulk connection: its status, headers, and the body to read."""

    status: int
    headers: http.client.HTTPMessage
    _response: http.client.HTTPResponse
    _conn: http.client.HTTPConnection
    _release: Callable[[http.client.HTTPConnection, bool], None]
    tls: ConnectionTLS | None = None  # the connection's, checked on the loop (BulkClient.open)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _closed: bool = False

    def read_into(self, buffer: memoryview) -> int:
        """Blocking: the next bytes of the body into `buffer`; 0 at its end. Raises BulkError if
        the body ends short of its Content-Length, TimeoutError after the idle timeout."""
        if self._closed:
            raise BulkError("the answer was closed")
        try:
            n = self._response.readinto(buffer)
        except http.client.HTTPException as exc:
            raise BulkError(f"malformed answer: {exc!r}") from None
        if n == 0 and self._response.length:  # readinto says 0 when the peer closed early
            raise BulkError(f"the body ended {self._response.length} bytes short")
        return n

    def preview(self) -> bytes:
        """Blocking: the start of the body (an error answer's reason)."""
        try:
            return self._response.read(BODY_PREVIEW)
        except (http.client.HTTPException, OSError):
            return b""

    def abort(self) -> None:
        """From any thread: cut the connection, so a read blocked on it returns at once."""
        sock = self._conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Back to the pool if the body was read to its end, else the connection is closed."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._release(self._conn, self._response.isclosed() and not self._response.will_close)


class BulkClient:
    """Blocking HTTP(S) requests to peers, for content bodies. Each method named `*_blocking`
    runs in a worker thread (`pool`); `open` is their asyncio face."""

    def __init__(self, tls: TLSClient | None, *, connect_timeout: float, threads: int = 16) -> None:
        self._tls = tls
        self._connect_timeout = connect_timeout
        self._idle: dict[str, list[tuple[http.client.HTTPConnection, float]]] = defaultdict(list)
        self._lock = threading.Lock()
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="peer-bulk")

    async def open(
        self, addr: str, path: str, body: bytes, headers: dict[str, str], *, read_timeout: float
    ) -> Answer:
        """POST `body` to `path` on the peer at `addr`; its answer, once its headers are in."""
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self.pool, self.open_blocking, addr, path, body, headers, read_timeout)
        try:
            answer = await asyncio.shield(work)
        except asyncio.CancelledError:
            # The thread goes on until its timeouts; its answer, if one comes, is not wanted.
            work.add_done_callback(_close_unwanted)
            raise
        except OSError as exc:  # ssl.SSLError among them
            reason = describe_tls_failure(exc) if self._tls is not None else None
            if reason is not None:
                assert self._tls is not None
                self._tls.observer.failed(addr, reason, time.time())
            raise
        if self._tls is not None:
            # Here, not in the thread: the members at an address are the loop's to read.
            try:
                self._tls.check(addr, answer.tls)
            except Exception:
                answer.close()
                raise
        return answer

    def open_blocking(
        self, addr: str, path: str, body: bytes, headers: dict[str, str], read_timeout: float
    ) -> Answer:
        # A kept connection the peer closed meanwhile fails before any answer: try once more on a
        # new one, as aiohttp does. A new connection's failure is the peer's.
        for conn, reused in self._connections(addr):
            try:
                conn.sock.settimeout(read_timeout)
                conn.request("POST", path, body=body, headers=headers)
                response = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if reused:  # content requests only read: asking again is safe
                    continue
                if isinstance(exc, http.client.HTTPException) and not isinstance(exc, OSError):
                    raise BulkError(f"{addr}: malformed answer: {exc!r}") from None
                raise
            sock = conn.sock
            tls = ssl_facts(sock) if isinstance(sock, ssl.SSLSocket) else None
            return Answer(response.status, response.headers, response, conn, self._release_to(addr), tls)
        raise AssertionError("unreachable: the last connection tried is always new")

    def _connections(self, addr: str):  # type: ignore[no-untyped-def]
        """A kept connection to `addr` if one is fresh, then a new one."""
        now = time.monotonic()
        with self._lock:
            kept = self._idle.get(addr, [])
            while kept:
                conn, since = kept.pop()
                if now - since < IDLE_SECONDS:
                    break
                conn.close()
            else:
                conn = None
        if conn is not None:
            yield conn, True
        yield self._connect(addr), False

    def _connect(self, addr: str) -> http.client.HTTPConnection:
        host, port = parse_hostport(addr)
        conn: http.client.HTTPConnection
        if self._tls is None:
            conn = http.client.HTTPConnection(host, port, timeout=self._connect_timeout)
            conn.connect()
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return conn
        conn = http.client.HTTPSConnection(
            host, port, timeout=self._connect_timeout, context=self._tls.context
        )
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def _release_to(self, addr: str) -> Callable[[http.client.HTTPConnection, bool], None]:
        def release(conn: http.client.HTTPConnection, reusable: bool) -> None:
            if not reusable:
                conn.close()
                return
            with self._lock:
                kept = self._idle[addr]
                kept.append((conn, time.monotonic()))
                while len(kept) > IDLE_PER_PEER:
                    kept.pop(0)[0].close()

        return release

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, defaultdict(list)
        for kept in idle.values():
            for conn, _ in kept:
                conn.close()
        self.pool.shutdown(wait=False, cancel_futures=True)


def _close_unwanted(opened: asyncio.Future[Answer]) -> None:
    if not opened.cancelled() and opened.exception() is None:
        opened.result().close()

"""Part of a file as the body of a prepared HTTP response: zero-copy where the socket allows.

On a plain socket, asyncio's loop sends a file with os.sendfile. uvloop, which `cachemesh run`
uses, has no `loop.sendfile`: there a worker thread runs os.sendfile on its own duplicate of the
socket (the kernel copies page cache to socket; this process touches no byte). On TLS, on either
loop, the file is read in pieces, off the event loop (a cold page cache means disk reads), and
written as the body.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import IO

from aiohttp import web

PIECE = 1 << 20
INLINE = 256 << 10
# A client that takes no byte for this long is given up on: the thread is freed, the caller cuts
# the connection.
STALL_SECONDS = 120.0
# Its own threads: a crowd of slow clients must not hold the default executor, which the node's
# engine calls run on.
_SENDERS = ThreadPoolExecutor(max_workers=16, thread_name_prefix="sendfile")


async def send_file(
    request: web.Request, response: web.StreamResponse, fh: IO[bytes], offset: int, count: int
) -> None:
    """Send `count` bytes of `fh` from `offset` on. Raises ConnectionResetError if the client has
    gone, OSError if the file cannot be read, TimeoutError if the client stops reading."""
    if count <= 0:
        return  # os.sendfile refuses a count of 0 (the empty blob)
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("client went away")
    if transport.get_extra_info("sslcontext") is not None:
        # TLS: the bytes must pass through this process either way. asyncio's loop.sendfile would
        # do the same in its fallback, which (CPython 3.11) fails with an AttributeError when the
        # client goes mid-send, where a client gone should be a ConnectionResetError.
        await _send_pieces(response, fh, offset, count)
        return
    loop = asyncio.get_running_loop()
    try:
        await loop.sendfile(transport, fh, offset, count)
        return
    except NotImplementedError:
        pass
    sock = transport.get_extra_info("socket")
    # Only when nothing the transport holds (headers, an earlier piece) is still to go ahead of
    # these bytes.
    if sock is not None and not transport.get_write_buffer_size():
        # Duplicates, owned by the thread's job: if the transport or the caller closes its
        # descriptor meanwhile, the number cannot be reused under the thread for another file.
        fds = _duplicates(sock.fileno(), fh.fileno())
        try:
            job = loop.run_in_executor(_SENDERS, _sendfile_blocking, *fds, offset, count)
        except BaseException:  # the executor is shut down: no job will close them
            for fd in fds:
                os.close(fd)
            raise
        job.add_done_callback(lambda done: _close(fds, done))
        try:
            # Shielded: cancelling the future would not stop the thread, only orphan it.
            await asyncio.shield(job)
        except asyncio.CancelledError:
            # The handler is going away (the node stops, the client left): end the connection
            # under the thread, so that its sendfile or poll returns now and the job closes the
            # duplicates, rather than a stalled client holding a thread for STALL_SECONDS.
            if not job.done():  # once done, the duplicates are closed (or about to be)
                _shut_down(fds[0])
            raise
        return
    await _send_pieces(response, fh, offset, count)


def _duplicates(sock_fd: int, file_fd: int) -> tuple[int, int]:
    """Duplicates of both descriptors, or of neither."""
    sock_dup = os.dup(sock_fd)
    try:
        return sock_dup, os.dup(file_fd)
    except BaseException:
        os.close(sock_dup)
        raise


def _close(fds: tuple[int, int], job: asyncio.Future[None]) -> None:
    for fd in fds:
        os.close(fd)
    if not job.cancelled():
        job.exception()  # retrieved: after a cancel, nobody awaits the job's error (EPIPE)


def _shut_down(sock_fd: int) -> None:
    sock = socket.socket(fileno=sock_fd)
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already gone
    finally:
        sock.detach()  # the descriptor stays the job's to close


def _sendfile_blocking(sock_fd: int, file_fd: int, offset: int, count: int) -> None:
    """os.sendfile until `count` bytes are sent; the socket is non-blocking (the event loop's), so
    a full one is waited on with poll."""
    poller = select.poll()
    poller.register(sock_fd, select.POLLOUT)
    while count > 0:
        try:
            sent = os.sendfile(sock_fd, file_fd, offset, count)
        except BlockingIOError:
            if not poller.poll(STALL_SECONDS * 1000):
                raise TimeoutError(f"client took no bytes for {STALL_SECONDS:.0f}s") from None
            continue
        if sent == 0:
            raise OSError(f"file ended {count} bytes early")
        offset += sent
        count -= sent


async def _send_pieces(response: web.StreamResponse, fh: IO[bytes], offset: int, count: int) -> None:
    fd = fh.fileno()
    end = offset + count
    while offset < end:
        size = min(PIECE, end - offset)
        # A fresh bytes object per piece: the transport may still hold the previous one. A small
        # window is what a fetch just wrote (the page cache has it): read it here; a large one may
        # come from disk, off the loop.
        if size <= INLINE:
            piece = os.pread(fd, size, offset)
        else:
            piece = await asyncio.to_thread(os.pread, fd, size, offset)
        if not piece:
            raise OSError(f"file ended {end - offset} bytes early")
        await response.write(piece)
        offset += len(piece)

"""Part of a file as the body of a prepared HTTP response: zero-copy where the loop can.

asyncio's loop sends a file with os.sendfile on a plain socket (and reads and writes it for TLS
itself). uvloop, which `cachemesh run` uses, has no `loop.sendfile`: there the file is read in
pieces, off the event loop (a cold page cache means disk reads), and written as the body.
"""

from __future__ import annotations

import asyncio
import os
from typing import IO

from aiohttp import web

PIECE = 1 << 20
INLINE = 256 << 10


async def send_file(
    request: web.Request, response: web.StreamResponse, fh: IO[bytes], offset: int, count: int
) -> None:
    """Send `count` bytes of `fh` from `offset` on. Raises ConnectionResetError if the client has
    gone, OSError if the file cannot be read."""
    if count <= 0:
        return  # os.sendfile refuses a count of 0 (the empty blob)
    if request.transport is None:
        raise ConnectionResetError("client went away")
    try:
        await asyncio.get_running_loop().sendfile(request.transport, fh, offset, count)
        return
    except NotImplementedError:
        pass
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

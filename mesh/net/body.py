"""Reading a request or response body whole, but never more than a limit."""

from __future__ import annotations

from aiohttp import StreamReader


async def read_capped(content: StreamReader, limit: int) -> bytes:
    """The body, whole if it is at most `limit` bytes; else its first `limit + 1` bytes, which say
    it is over (the caller refuses it). One `read` may return less than is coming, so this reads
    on until the end or the limit."""
    body = await content.read(limit + 1)
    while len(body) <= limit and not content.at_eof():
        more = await content.read(limit + 1 - len(body))
        if not more:
            break
        body += more
    return body

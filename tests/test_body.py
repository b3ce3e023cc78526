"""Capped body reads (mesh.net.body): the whole body within the limit however it arrives, and
never more than one byte past the limit."""

from __future__ import annotations

import asyncio
from unittest import mock

from aiohttp import StreamReader

from mesh.net.body import read_capped


async def _read(pieces: list[bytes], limit: int) -> bytes:
    """read_capped of a body that arrives in `pieces`, each in a loop turn of its own (as from a
    socket, where one read returns only what has come so far)."""
    content = StreamReader(mock.Mock(_reading_paused=False), 2**16, loop=asyncio.get_running_loop())

    async def feed() -> None:
        for piece in pieces:
            await asyncio.sleep(0)
            content.feed_data(piece)
        content.feed_eof()

    feeding = asyncio.create_task(feed())
    body = await read_capped(content, limit)
    await feeding
    return body


async def test_a_body_within_the_limit_is_read_whole_when_it_arrives_in_pieces() -> None:
    assert await _read([b"abc", b"def", b"g"], 7) == b"abcdefg"
    assert await _read([], 7) == b""


async def test_a_body_over_the_limit_reads_one_byte_past_it() -> None:
    assert await _read([b"abc", b"defgh", b"ijk"], 7) == b"abcdefgh"

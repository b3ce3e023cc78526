"""File bodies on both event loops: asyncio's (os.sendfile) and uvloop's (no loop.sendfile), which
real nodes run on. A loop without sendfile once sent headers and no body."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvloop
from aiohttp import web

from mesh.net.sendfile import PIECE, send_file

RUNNERS: dict[str, Callable[[Coroutine[Any, Any, bytes]], bytes]] = {
    "asyncio": asyncio.run,
    "uvloop": uvloop.run,
}


async def serve_and_fetch(path: Path, offset: int, count: int) -> bytes:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = count
        await response.prepare(request)
        with open(path, "rb") as fh:  # noqa: ASYNC230 - a local file, opened once
            await send_file(request, response, fh, offset, count)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/") as r:
            return await r.read()
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("loop", list(RUNNERS))
def test_a_file_range_arrives_whole_on_either_event_loop(loop: str, tmp_path: Path) -> None:
    data = os.urandom(3 * PIECE + 12345)
    path = tmp_path / "blob"
    path.write_bytes(data)
    offset, count = 1000, 2 * PIECE + 777  # more than one piece, not aligned
    assert RUNNERS[loop](serve_and_fetch(path, offset, count)) == data[offset : offset + count]
    assert RUNNERS[loop](serve_and_fetch(path, 0, 0)) == b""  # the empty blob

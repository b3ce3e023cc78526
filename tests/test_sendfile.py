"""File bodies on both event loops: asyncio's (os.sendfile) and uvloop's (no loop.sendfile), which
real nodes run on. A loop without sendfile once sent headers and no body."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvloop
from aiohttp import web

from mesh.net import sendfile
from mesh.net.sendfile import PIECE, send_file

Outcome = asyncio.Future[BaseException | None]

RUNNERS: dict[str, Callable[[Coroutine[Any, Any, bytes]], bytes]] = {
    "asyncio": asyncio.run,
    "uvloop": uvloop.run,
}


@asynccontextmanager
async def serving(path: Path, offset: int, count: int, outcome: Outcome | None = None) -> AsyncIterator[int]:
    """An HTTP server on loopback whose one route sends `count` bytes of `path` from `offset` with
    send_file; yields its port. `outcome`, if given, gets what send_file raised (None: nothing)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = count
        await response.prepare(request)
        try:
            with open(path, "rb") as fh:  # noqa: ASYNC230 - a local file, opened once
                await send_file(request, response, fh, offset, count)
        except Exception as exc:  # what a test checks
            if outcome is not None:
                outcome.set_result(exc)
            raise
        if outcome is not None:
            outcome.set_result(None)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def serve_and_fetch(path: Path, offset: int, count: int) -> bytes:
    async with (
        serving(path, offset, count) as port,
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/") as r,
    ):
        return await r.read()


@pytest.mark.parametrize("loop", list(RUNNERS))
def test_a_file_range_arrives_whole_on_either_event_loop(loop: str, tmp_path: Path) -> None:
    data = os.urandom(3 * PIECE + 12345)
    path = tmp_path / "blob"
    path.write_bytes(data)
    offset, count = 1000, 2 * PIECE + 777  # more than one piece, not aligned
    assert RUNNERS[loop](serve_and_fetch(path, offset, count)) == data[offset : offset + count]
    assert RUNNERS[loop](serve_and_fetch(path, 0, 0)) == b""  # the empty blob


async def serve_to_a_client_that_stalls(path: Path, count: int, read_first: int) -> BaseException | None:
    """Serve `count` bytes to a raw client that reads `read_first` bytes and then stops reading but
    stays connected; return what send_file raised."""
    outcome: Outcome = asyncio.get_running_loop().create_future()
    async with serving(path, 0, count, outcome) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 16)
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await reader.readexactly(read_first)
            return await asyncio.wait_for(outcome, 30)
        finally:
            writer.close()


def test_a_client_that_stops_reading_is_given_up_and_the_thread_freed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvloop's plain-socket path blocks a worker thread in sendfile; a client that takes nothing
    more must not hold it for ever."""
    monkeypatch.setattr(sendfile, "STALL_SECONDS", 0.5)
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(64 << 20))  # far more than both socket buffers hold
    fds_before = len(os.listdir("/proc/self/fd"))
    raised = uvloop.run(serve_to_a_client_that_stalls(path, 64 << 20, 4096))
    assert isinstance(raised, TimeoutError), raised
    assert len(os.listdir("/proc/self/fd")) <= fds_before  # the thread's duplicate socket is closed

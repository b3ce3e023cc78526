"""File bodies on both event loops: asyncio's (os.sendfile) and uvloop's (no loop.sendfile), which
real nodes run on. A loop without sendfile once sent headers and no body."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvloop
from aiohttp import web

from mesh.lab.poll import async_wait_until
from mesh.net import sendfile
from mesh.net.sendfile import PIECE, send_file

Outcome = asyncio.Future[BaseException | None]

RUNNERS: dict[str, Callable[[Coroutine[Any, Any, bytes]], bytes]] = {
    "asyncio": asyncio.run,
    "uvloop": uvloop.run,
}


@asynccontextmanager
async def serving(
    path: Path,
    offset: int,
    count: int,
    outcome: Outcome | None = None,
    handlers: list[asyncio.Task[Any]] | None = None,
) -> AsyncIterator[int]:
    """An HTTP server on loopback whose one route sends `count` bytes of `path` from `offset` with
    send_file; yields its port. `outcome`, if given, gets what send_file raised (None: nothing),
    a cancel included; `handlers`, if given, gets each request's handler task (to cancel)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if handlers is not None:
            handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        response = web.StreamResponse()
        response.content_length = count
        await response.prepare(request)
        try:
            with open(path, "rb") as fh:  # noqa: ASYNC230 - a local file, opened once
                await send_file(request, response, fh, offset, count)
        except BaseException as exc:  # what a test checks
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


def test_a_cancelled_send_ends_its_thread_at_once_and_keeps_its_descriptors_till_then(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A handler cancelled mid-send (the node stopping) cannot stop its worker thread, which sits
    in poll on a stalled client. The connection is ended under the thread so it returns now, not
    after STALL_SECONDS, and the descriptors it uses stay open until it has returned: closed
    earlier, their numbers could be reused and the thread's sendfile reach another file."""
    monkeypatch.setattr(sendfile, "STALL_SECONDS", 30.0)
    returned = threading.Event()
    open_when_returned: list[bool] = []
    real = sendfile._sendfile_blocking

    def tracked(sock_fd: int, file_fd: int, offset: int, count: int) -> None:
        try:
            real(sock_fd, file_fd, offset, count)
        finally:
            open_when_returned.append(_is_open(sock_fd) and _is_open(file_fd))
            returned.set()

    monkeypatch.setattr(sendfile, "_sendfile_blocking", tracked)
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(64 << 20))  # far more than both socket buffers hold

    async def cancel_mid_send() -> BaseException | None:
        handlers: list[asyncio.Task[Any]] = []
        outcome: Outcome = asyncio.get_running_loop().create_future()
        async with serving(path, 0, 64 << 20, outcome, handlers) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 16)
            try:
                writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                await reader.readexactly(4096)  # then reads no more: the thread waits in poll
                await async_wait_until(lambda: handlers, 5, what="the handler runs")
                handlers[0].cancel()
                raised = await asyncio.wait_for(outcome, 5)
                # The client is still connected and still not reading: only the cancel can free it.
                assert await asyncio.to_thread(returned.wait, 3), "the thread still waits on a stalled client"
                return raised
            finally:
                writer.close()

    raised = uvloop.run(cancel_mid_send())
    assert isinstance(raised, asyncio.CancelledError), raised
    assert open_when_returned == [True]


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True

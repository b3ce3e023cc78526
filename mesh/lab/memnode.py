"""A lab node: `cachemesh run` with the in-memory engine, plus a lab-only control server.

    python -m mesh.lab.memnode [the flags of `cachemesh run`]      (env: CACHEMESH_LAB_LISTEN)

It takes every flag and CACHEMESH_* variable `cachemesh run` takes, runs the real node (processes,
HTTP, signing, timers) on a FakeEngine, and serves `POST /lab/build?tag=T[&bytes=N]` on
CACHEMESH_LAB_LISTEN (default 127.0.0.1:0, logged) so a test can "build" an image on that node
(with a layer of N random bytes). CACHEMESH_LAB_SAVE_RATE (bytes/s) slows the engine's `docker save`
down to that rate, for tests that watch a transfer while it runs. None of this is reachable from
the runtime package: the node and its status server know nothing of it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web

from mesh import cli
from mesh.engine.fake import FakeEngine
from mesh.hostport import format_hostport
from mesh.node.sockets import bind_socket

LAB_LISTEN = "CACHEMESH_LAB_LISTEN"
LAB_SAVE_RATE = "CACHEMESH_LAB_SAVE_RATE"
log = logging.getLogger("cachemesh.lab")


class PacedEngine(FakeEngine):
    """The in-memory engine whose saves leave at most `rate` bytes per second (0: no limit)."""

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        self.rate = rate

    async def save(self, image_ids: Iterable[str], chunk_size: int = 1 << 16) -> AsyncIterator[bytes]:
        async for chunk in super().save(image_ids, chunk_size):
            if self.rate:
                await asyncio.sleep(len(chunk) / self.rate)
            yield chunk


def lab_app(engine: FakeEngine) -> web.Application:
    async def build(request: web.Request) -> web.Response:
        tag = request.query.get("tag", "lab:latest")
        size = int(request.query.get("bytes", "0"))
        layers = [f"{tag} {time.time_ns()}".encode()] + ([os.urandom(size)] if size else [])
        image = engine.build(tag, layers)
        return web.json_response({"id": image, "tag": tag})

    app = web.Application()
    app.router.add_post("/lab/build", build)
    return app


async def serve(config: Any) -> int:
    engine = PacedEngine(float(os.environ.get(LAB_SAVE_RATE, "0")))

    async def start_lab(node: Any) -> Callable[[], Awaitable[None]]:
        runner = web.AppRunner(lab_app(engine), access_log=None)
        await runner.setup()
        sock = bind_socket(os.environ.get(LAB_LISTEN, "127.0.0.1:0"))
        await web.SockSite(runner, sock).start()
        log.warning("lab control server on http://%s/lab/build", format_hostport(*sock.getsockname()[:2]))
        return runner.cleanup

    return await cli.serve_node(config.replace(docker_host="memory://"), engine, start_lab)


def main() -> int:
    return cli.main(["run", *sys.argv[1:]], serve=serve)


if __name__ == "__main__":
    raise SystemExit(main())

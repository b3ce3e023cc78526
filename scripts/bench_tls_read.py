#!/usr/bin/env python3
"""What receiving a body over TLS costs the receiver, read the two ways a node could read it.

A TLS 1.3 aiohttp server on uvloop (as a node serves content) in a child process sends --mb MB.
The receiver hashes (sha256) and writes (/dev/null) every piece, as the registry's fetcher does,
and reads the body:
  loop:   through aiohttp's client on uvloop (records copied through OpenSSL's memory buffers and
          the stream reader, one bytes object a piece, hash and write on the loop);
  thread: the way mesh.net.bulk does, a blocking socket read into one reused buffer in a worker
          thread, hashed and written there.
Each round runs both, in turn, in fresh child processes; the CPU-seconds are each reader's own
(its rusage), start-up excluded. Prints CPU-seconds per GB of each, and thread / loop.

    .venv/bin/python scripts/bench_tls_read.py [--mb 1024] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import http.client
import os
import resource
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PIECE = 1 << 20


def serve(cert: str, key: str, port: int, mb: int) -> None:
    import uvloop
    from aiohttp import web

    data = os.urandom(PIECE)

    async def body(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = mb * PIECE
        await response.prepare(request)
        for _ in range(mb):
            await response.write(data)
        return response

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(cert, key)
    app = web.Application()
    app.router.add_get("/", body)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, ssl_context=context, print=None)


def receive(way: str, cert: str, port: int) -> None:
    import aiohttp
    import uvloop

    context = ssl.create_default_context(cafile=cert)
    context.check_hostname = False
    sink = Path(os.devnull).open("wb", buffering=0)  # noqa: SIM115  # lives as long as the process
    hasher = hashlib.sha256()

    async def on_the_loop() -> int:
        n = 0
        url = f"https://127.0.0.1:{port}/"
        async with (
            aiohttp.ClientSession() as session,
            session.get(url, ssl=context, read_bufsize=PIECE) as r,
        ):
            async for piece, _ in r.content.iter_chunks():
                sink.write(piece)
                hasher.update(piece)
                n += len(piece)
        return n

    def in_a_thread() -> int:
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=context)
        conn.request("GET", "/")
        response = conn.getresponse()
        buffer = memoryview(bytearray(PIECE))
        n = 0
        while k := response.readinto(buffer):
            sink.write(buffer[:k])
            hasher.update(buffer[:k])
            n += k
        return n

    before = resource.getrusage(resource.RUSAGE_SELF)
    n = uvloop.run(on_the_loop() if way == "loop" else asyncio.to_thread(in_a_thread))
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"{n} {cpu:.4f}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--role", choices=["serve", "loop", "thread"], help=argparse.SUPPRESS)
    parser.add_argument("--cert", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "serve":
        serve(args.cert, args.key, args.port, args.mb)
        return 0
    if args.role:
        receive(args.role, args.cert, args.port)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = str(Path(tmp) / "c.pem"), str(Path(tmp) / "k.pem")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", cert],
            check=True, capture_output=True,
        )  # fmt: skip
        port = free_port()
        me = [sys.executable, __file__, "--mb", str(args.mb), "--cert", cert, "--port", str(port)]
        server = subprocess.Popen([*me, "--role", "serve", "--key", key])
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)  # the server's start-up, polled with a deadline
            cost: dict[str, list[float]] = {"loop": [], "thread": []}
            for round_ in range(args.rounds):
                ways = ["loop", "thread"] if round_ % 2 == 0 else ["thread", "loop"]
                for way in ways:
                    out = subprocess.run([*me, "--role", way], capture_output=True, text=True, check=True)
                    n, cpu = out.stdout.split()
                    assert int(n) == args.mb * PIECE, out.stdout
                    cost[way].append(float(cpu) / (int(n) / 1e9))
                    print(f"round {round_ + 1} {way:6} {cost[way][-1]:.2f} CPU-s/GB")
        finally:
            server.terminate()
            server.wait()
    loop, thread = statistics.median(cost["loop"]), statistics.median(cost["thread"])
    print(
        f"median CPU-s per GB received: loop {loop:.2f}, thread {thread:.2f}; "
        f"thread / loop {thread / loop:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Measure what one gossip envelope costs on the wire beyond its msgpack body, from the real
aiohttp client and server, so the simulator can count it (mesh/sim/wirecost.py holds the result).

A counting TCP relay sits between a real PeerClient and a real PeerServer on loopback and counts
every byte of both directions of the TCP stream: request line, headers (the five signed
`X-Cachemesh-*` ones included), body, and the signed response. TCP/IP headers and ACKs are not
counted. Connections are kept alive, as the node keeps them, so no handshake is part of a message.

    python -m mesh.lab.http_overhead      # prints the constants for mesh/sim/wirecost.py
"""

from __future__ import annotations

import asyncio
import secrets
import socket
from dataclasses import dataclass

from aiohttp import web

from mesh.lab.poll import async_wait_until
from mesh.net.auth import Signer, derive_key
from mesh.net.client import PeerClient
from mesh.net.contract import SaveRequest, SaveStream
from mesh.net.server import PeerServer, SaveRefused
from mesh.protocol import wire

NODE_ID_CHARS = 16  # a node ID is 8 random bytes in hex (mesh/node/persistence.py)


@dataclass(frozen=True)
class Overhead:
    """Bytes on the TCP stream beyond the body; `len(addr)` and the Content-Length digits vary, so
    they are taken out of the fixed parts (see mesh/sim/wirecost.py for how they are put back)."""

    request_fixed: int  # request minus body, minus len(Host) and the Content-Length digits
    response_fixed: int  # a 200 reply minus body, minus the Content-Length digits
    response_empty: int  # a whole 204 answer (signed, no body)


class _Counter:
    def __init__(self) -> None:
        self.up = 0  # client -> server
        self.down = 0  # server -> client
        self.answers = bytearray()  # what went server -> client, to tell when an answer is whole


def whole_response(data: bytes) -> bool:
    """True once `data`, the start of one HTTP/1.1 response, holds all of it: the head, and as many
    body bytes as its Content-Length says (none without one: the 204)."""
    head, blank, body = data.partition(b"\r\n\r\n")
    if not blank:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return True


async def _relay(counter: _Counter, target: tuple[str, int]) -> asyncio.Server:
    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: bool) -> None:
        try:
            while data := await reader.read(65536):
                if up:
                    counter.up += len(data)
                else:
                    counter.down += len(data)
                    counter.answers += data
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(*target)
        await asyncio.gather(pipe(client_r, server_w, True), pipe(server_r, client_w, False))

    return await asyncio.start_server(handle, "127.0.0.1", 0)


class _Handler:
    """Answers each envelope with `reply` (None: 204)."""

    def __init__(self) -> None:
        self.reply: wire.Envelope | None = None

    def on_envelope(self, envelope: wire.Envelope) -> wire.Envelope | None:
        return self.reply

    def handoff(self, request: SaveRequest) -> str:
        return ""

    async def open_save(self, request: SaveRequest) -> SaveStream:
        raise SaveRefused(404, "not here")

    def uploads_changed(self, uploads: int) -> None:
        pass

    def count_request(self, endpoint: str, status: int) -> None:
        pass

    def count_bytes_out(self, n: int) -> None:
        pass

    def save_finished(self, image: str, ok: bool) -> None:
        pass


async def measure(cluster: str = "default") -> Overhead:
    key = derive_key(b"measurement-secret-0123456789", cluster)
    server_signer = Signer(key, cluster, secrets.token_hex(NODE_ID_CHARS // 2))
    client_signer = Signer(key, cluster, secrets.token_hex(NODE_ID_CHARS // 2))
    handler = _Handler()
    peer = PeerServer(
        handler, server_signer, max_body=1 << 20, request_timeout=10, auth_window=120, max_saves=1
    )
    runner = web.AppRunner(peer.app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    site = web.SockSite(runner, sock)
    await site.start()
    counter = _Counter()
    relay = await _relay(counter, sock.getsockname()[:2])
    addr = f"127.0.0.1:{relay.sockets[0].getsockname()[1]}"
    client = PeerClient(client_signer, max_message_bytes=1 << 20, timeout=10)
    envelope = wire.Envelope(client_signer.node, "10.0.0.1:7611", (wire.Ping(1, server_signer.node),), 1)
    body = len(wire.encode(envelope))
    reply = wire.Envelope(server_signer.node, "10.0.0.2:7611", (wire.Ack(1),), 1)
    reply_body = len(wire.encode(reply))

    async def exchange() -> tuple[int, int]:
        up, down = counter.up, counter.down
        await client.exchange(addr, envelope)
        # Count the answer only once the relay has passed all of it on (head and whole body), not
        # at its first bytes; a deadline, so an answer cut short fails instead of counting less.
        await async_wait_until(
            lambda: whole_response(bytes(counter.answers[down:])), 5.0, 0.01, what="the whole answer relayed"
        )
        return counter.up - up, counter.down - down

    try:
        await exchange()  # the first request opens the connection; measure the kept-alive ones
        handler.reply = None
        request, empty = await exchange()
        handler.reply = reply
        request2, full = await exchange()
    finally:
        await client.close()
        relay.close()
        await relay.wait_closed()
        await runner.cleanup()
    assert request == request2, (request, request2)
    digits = len(str(body))
    return Overhead(
        request_fixed=request - body - digits - len(addr),
        response_fixed=full - reply_body - len(str(reply_body)),
        response_empty=empty,
    )


def main() -> None:
    overhead = asyncio.run(measure())
    print(f"REQUEST_FIXED = {overhead.request_fixed}")
    print(f"RESPONSE_FIXED = {overhead.response_fixed}")
    print(f"RESPONSE_EMPTY = {overhead.response_empty}")


if __name__ == "__main__":
    main()

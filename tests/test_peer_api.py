"""Bad input at the peer API is refused, clearly, while the mesh keeps working."""

import asyncio
import time

import aiohttp
import msgpack
import pytest

from mesh.engine.fake import FakeEngine
from mesh.lab.poll import async_wait_until
from mesh.net.auth import Signer, derive_key
from mesh.protocol import wire
from tests.inproc import SECRET, client_ssl, has_image, start_node

TLS = client_ssl("attacker")


@pytest.fixture
async def mesh(workdir):
    ea, eb = FakeEngine(), FakeEngine()
    a = await start_node(workdir, "a", engine=ea, request_timeout=1.0)
    b = await start_node(workdir, "b", engine=eb, seeds=(a.peer_addr,))
    await async_wait_until(lambda: a.core.membership.live_ids() and b.core.membership.live_ids(), 5)
    yield a, b, ea
    await b.stop()
    await a.stop()


def signed(
    body: bytes,
    *,
    secret: bytes = SECRET,
    cluster: str = "default",
    path: str = "/v1/gossip",
    now: float | None = None,
) -> dict[str, str]:
    signer = Signer(derive_key(secret, cluster), cluster, "attacker")
    headers = signer.sign_request("POST", path, body, time.time() if now is None else now)
    headers["Content-Type"] = "application/msgpack"
    return headers


async def post(addr, body, headers, path="/v1/gossip"):
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"https://{addr}{path}", data=body, headers=headers, ssl=TLS) as r,
    ):
        payload = await r.read()
        try:
            return r.status, msgpack.unpackb(payload, raw=False)
        except Exception:
            return r.status, payload


GOOD = wire.encode(wire.Envelope("attacker", "127.0.0.1:1", (wire.Ping(1, "nobody"),), 1))


async def test_unauthenticated_forged_and_replayed_requests_get_401(mesh):
    a, _, _ = mesh
    status, body = await post(a.peer_addr, GOOD, {})
    assert status == 401 and "unauthenticated" in body["error"]
    status, body = await post(a.peer_addr, GOOD, signed(GOOD, secret=b"wrong-secret-wrong-secret"))
    assert status == 401 and "bad signature" in body["error"]
    status, body = await post(a.peer_addr, GOOD, signed(GOOD, cluster="other"))
    assert status == 401 and "cluster mismatch" in body["error"]
    status, body = await post(a.peer_addr, GOOD, signed(GOOD, now=time.time() - 3600))
    assert status == 401 and "off this node's clock" in body["error"]
    headers = signed(GOOD)
    assert (await post(a.peer_addr, GOOD, headers))[0] in (200, 204)
    status, body = await post(a.peer_addr, GOOD, headers)
    assert status == 401 and "replayed" in body["error"]
    tampered = GOOD[:-1] + b"\x02"
    status, body = await post(a.peer_addr, tampered, signed(GOOD))
    assert status == 401 and "bad signature" in body["error"]
    assert a.metrics.peer_requests.labels("gossip", "401")._value.get() >= 6


async def test_malformed_but_signed_requests_get_400_with_the_reason(mesh):
    a, _, _ = mesh
    for body, reason in [
        (b"\xc1\xc1", "not a msgpack envelope"),
        (msgpack.packb([wire.PROTOCOL_VERSION, "x", "y", [[250, 1]], 0]), "unknown type 250"),
        (msgpack.packb([9, "x", "y", [], 0]), "protocol version 9"),
        (msgpack.packb([wire.PROTOCOL_VERSION, "x", "y", [[1, "not-an-int", "t"]], 0]), "ping seq"),
    ]:
        status, reply = await post(a.peer_addr, body, signed(body))
        assert status == 400 and reason in reply["error"], (status, reply)
    status, reply = await post(
        a.peer_addr, b"\x81\xa1x\x01", signed(b"\x81\xa1x\x01", path="/v1/save"), path="/v1/save"
    )
    assert status == 400 and "malformed save request" in reply["error"]
    body = msgpack.packb({"image": "sha256:" + "1" * 64})
    status, reply = await post(a.peer_addr, body, signed(body, path="/v1/save"), path="/v1/save")
    assert status == 404 and "not shared" in reply["error"]
    # Digests that int(x, 16) would take, but no store names a file by.
    for digest in (
        "sha256:" + "A" * 64,
        "sha256:0x" + "1" * 62,
        "sha256:-" + "1" * 63,
        "sha256:" + "1_" * 32,
    ):
        body = msgpack.packb({"digest": digest, "offset": 0})
        status, reply = await post(a.peer_addr, body, signed(body, path="/v1/content"), path="/v1/content")
        assert status == 400 and "must be a sha256 digest" in reply["error"], (digest, status, reply)
    for limit in (-1, "5", 1.5):
        body = msgpack.packb({"digest": "sha256:" + "1" * 64, "offset": 0, "limit": limit})
        status, reply = await post(a.peer_addr, body, signed(body, path="/v1/content"), path="/v1/content")
        assert status == 400 and "limit must be" in reply["error"], (limit, status, reply)


async def test_oversized_bodies_get_413_without_being_read(mesh):
    a, _, _ = mesh
    limit = a.config.max_message_bytes
    big = b"\x00" * (limit + 1)
    status, reply = await post(a.peer_addr, big, signed(big))
    assert status == 413 and "exceeds" in reply["error"]
    host, port = a.peer_addr.split(":")

    async def answer(head: bytes, body: bytes) -> bytes:
        """Send a request that never finishes its body; return the server's answer. A server that
        read the body first would wait for it and answer 408 after request_timeout (1 s here)."""
        reader, writer = await asyncio.open_connection(host, int(port), ssl=TLS)
        try:
            writer.write(b"POST /v1/gossip HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n" + body)
            await writer.drain()
            return await asyncio.wait_for(reader.readline(), 5)
        finally:
            writer.close()

    # Declared too long: refused from Content-Length alone, with none of the body sent.
    declared = await answer(f"Content-Length: {limit + 1}\r\n".encode(), b"")
    assert b" 413 " in declared, declared
    # Chunked: refused as soon as the body passes the cap, without waiting for its end.
    chunk = b"%x\r\n" % 65536 + b"\x00" * 65536 + b"\r\n"
    chunked = await answer(b"Transfer-Encoding: chunked\r\n", chunk * (limit // 65536 + 2))
    assert b" 413 " in chunked, chunked


async def test_half_open_and_slow_clients_time_out_while_the_mesh_keeps_working(mesh):
    a, b, ea = mesh
    host, port = a.peer_addr.split(":")
    half_open = []
    for _ in range(200):  # stuck in the request line
        reader, writer = await asyncio.open_connection(host, int(port), ssl=TLS)
        writer.write(b"POST /v1/gossip HTTP/1.1\r\nHost: x\r\n")
        half_open.append((reader, writer))
    slow = []
    no_handshake = []
    for _ in range(20):  # TCP only: never starts the TLS handshake
        no_handshake.append(await asyncio.open_connection(host, int(port)))
    for _ in range(20):  # headers done, body never finishes
        reader, writer = await asyncio.open_connection(host, int(port), ssl=TLS)
        writer.write(b"POST /v1/gossip HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"\x00" * 10)
        slow.append((reader, writer))
    started = time.monotonic()
    image = ea.build("during-attack:1", [b"payload"])
    await async_wait_until(
        lambda: has_image(b, image, "during-attack:1"), 10, what="image shared during attack"
    )
    assert time.monotonic() - started < 10
    # The slow bodies get 408; the half-open connections are closed by the server.
    answers = await asyncio.gather(*(r.read(200) for r, _ in slow))
    assert all(b" 408 " in answer for answer in answers)
    closed = await asyncio.wait_for(asyncio.gather(*(r.read() for r, _ in half_open)), 10)
    assert all(data == b"" for data in closed)
    assert a.parts.peer_server.closed_half_open >= 200
    # No handshake within request_timeout: closed by the TLS layer.
    closed = await asyncio.wait_for(asyncio.gather(*(r.read() for r, _ in no_handshake)), 10)
    assert all(data == b"" for data in closed)
    for _, writer in half_open + slow + no_handshake:
        writer.close()


async def test_unknown_endpoints_get_404(mesh):
    a, _, _ = mesh
    async with aiohttp.ClientSession() as http, http.get(f"https://{a.peer_addr}/v1/nope", ssl=TLS) as r:
        assert r.status == 404

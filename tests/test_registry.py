"""The registry's store and router, through aiohttp's test client, with no mesh behind them.

Each bad input must leave the store unchanged and the registry serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from mesh.config import Config
from mesh.lab.poll import async_wait_until
from mesh.net.auth import Signer
from mesh.net.client import PeerClient
from mesh.net.contract import ContentStream
from mesh.protocol import oci
from mesh.protocol.wire import ImageMeta, Tags
from mesh.registry.errors import RegistryError
from mesh.registry.fetch import Fetch
from mesh.registry.manifest import BUILDKIT_CACHE_CONFIG, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from mesh.registry.names import BadName, Kind, parse_path
from mesh.registry.ports import RegistrySettings
from mesh.registry.router import registry_app
from mesh.registry.service import Registry


class NoMesh:
    """A node alone: no peers."""

    def __init__(self) -> None:
        self.published = 0

    def live_manifests(self) -> Mapping[str, Mapping[str, Tags]]:
        return {}

    def metas(self) -> Mapping[str, ImageMeta]:
        return {}

    def sources(self, key: str, holders: list[str], relays: list[str]) -> list[str]:
        return []

    def fetching(self, digest: str) -> list[str]:
        return []

    def name(self, node: str) -> str:
        return node

    def addr(self, node: str) -> str | None:
        return None

    def publish(self) -> None:
        self.published += 1

    def may_push(self, ref: str) -> bool:
        return True


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
async def client(workdir: Path) -> AsyncIterator[TestClient]:
    config = Config.local(secret=b"registry-test-secret-0123", data_dir=str(workdir))
    peer_client = PeerClient(Signer(b"k" * 32, "default", "test"), max_message_bytes=1 << 20, timeout=2)
    registry = Registry(RegistrySettings.from_config(config), peer_client, NoMesh())
    await registry.start()
    async with TestClient(TestServer(registry_app(registry))) as test_client:
        test_client.registry = registry  # type: ignore[attr-defined]
        yield test_client
    await registry.stop()
    await peer_client.close()


def store_files(workdir: Path) -> set[str]:
    """What the store shows: blobs, media types, tags (not uploads in progress or scratch files)."""
    root = workdir / "registry"
    files = {p.relative_to(root) for p in root.rglob("*") if p.is_file()}
    return {str(p) for p in files if p.parts[0] in ("blobs", "types", "tags")}


async def push_blob(client: TestClient, name: str, data: bytes, chunks: int = 1) -> str:
    digest = digest_of(data)
    r = await client.post(f"/v2/{name}/blobs/uploads/")
    assert r.status == 202, await r.text()
    location = r.headers["Location"]
    step = max(1, len(data) // chunks)
    for i in range(0, len(data), step):
        part = data[i : i + step]
        r = await client.patch(
            location,
            data=part,
            headers={"Content-Range": f"{i}-{i + len(part) - 1}", "Content-Type": "application/octet-stream"},
        )
        assert r.status == 202, await r.text()
        assert r.headers["Range"] == f"0-{i + len(part) - 1}"
        location = r.headers["Location"]
    r = await client.put(f"{location}?digest={digest}")
    assert r.status == 201, await r.text()
    assert r.headers["Docker-Content-Digest"] == digest
    return digest


def image_manifest(config: str, layers: list[tuple[str, int]], media_type: str = OCI_MANIFEST) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {"mediaType": BUILDKIT_CACHE_CONFIG, "digest": config, "size": 2},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": s}
                for d, s in layers
            ],
        }
    ).encode()


async def raw_request(client: TestClient, method: str, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
    )
    await writer.drain()
    response = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def error_code(response) -> str:  # type: ignore[no-untyped-def]
    return str((await response.json())["errors"][0]["code"])


def test_paths_parse_once() -> None:
    assert parse_path("") is not None and parse_path("").kind is Kind.BASE  # type: ignore[union-attr]
    route = parse_path("cache/app/blobs/uploads/")
    assert route is not None and (route.kind, route.name, route.reference) == (Kind.UPLOAD, "cache/app", "")
    route = parse_path("a/b/manifests/v1")
    assert route is not None and (route.kind, route.name) == (Kind.MANIFEST, "a/b")
    route = parse_path("x/tags/list")
    assert route is not None and route.kind is Kind.TAGS
    for bad in ("../etc/blobs/x", "A/blobs/x", "a//b/manifests/x", "a/../b/manifests/x", "-a/tags/list"):
        with pytest.raises(BadName):
            parse_path(bad)
    assert parse_path("nothing-here") is None


def test_gossip_tags_round_trip() -> None:
    d1, d2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    tags = oci.announce(d1, {"cache/app:ms": 5})
    assert oci.is_registry_entry(tags) and not oci.is_registry_entry(("app:1",))
    assert oci.parse(tags) == (d1, {"cache/app:ms": 5})
    winner = oci.resolve(
        [{oci.entry_key(d1): tags}, {oci.entry_key(d2): oci.announce(d2, {"cache/app:ms": 7})}]
    )
    assert winner["cache/app:ms"] == oci.TagState(7, d2)
    assert oci.entry_key(d1) != d1  # never an image ID


async def test_base_and_blob_round_trip(client: TestClient) -> None:
    r = await client.get("/v2/")
    assert r.status == 200 and r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    data = bytes(range(256)) * 4096  # 1 MiB, in 3 PATCHes
    digest = await push_blob(client, "cache/app", data, chunks=3)
    r = await client.head(f"/v2/cache/app/blobs/{digest}")
    assert r.status == 200
    assert r.headers["Content-Length"] == str(len(data)) and r.headers["Docker-Content-Digest"] == digest
    r = await client.get(f"/v2/other/repo/blobs/{digest}")
    assert r.status == 200 and await r.read() == data
    r = await client.get(f"/v2/cache/app/blobs/{digest}", headers={"Range": "bytes=10-19"})
    assert r.status == 206 and await r.read() == data[10:20]
    assert r.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    r = await client.get(f"/v2/cache/app/blobs/{digest}", headers={"Range": "bytes=1000-"})
    assert r.status == 206 and await r.read() == data[1000:]


async def test_monolithic_put_and_mount(client: TestClient) -> None:
    data = b"monolithic blob"
    digest = digest_of(data)
    r = await client.post("/v2/a/blobs/uploads/")
    r = await client.put(f"{r.headers['Location']}?digest={digest}", data=data)
    assert r.status == 201
    r = await client.post(f"/v2/b/blobs/uploads/?mount={digest}&from=a")
    assert r.status == 201 and r.headers["Location"] == f"/v2/b/blobs/{digest}"
    r = await client.post(f"/v2/b/blobs/uploads/?mount={digest_of(b'absent')}&from=a")
    assert r.status == 202  # not held: an ordinary upload starts
    r = await client.post(f"/v2/c/blobs/uploads/?digest={digest_of(b'one post')}", data=b"one post")
    assert r.status == 201


async def test_manifests_by_tag_and_digest(client: TestClient) -> None:
    config = await push_blob(client, "cache/app", b"{}")
    layer = await push_blob(client, "cache/app", b"layer bytes" * 1000)
    body = image_manifest(config, [(layer, 11000)])
    r = await client.put("/v2/cache/app/manifests/ms", data=body, headers={"Content-Type": OCI_MANIFEST})
    assert r.status == 201, await r.text()
    digest = r.headers["Docker-Content-Digest"]
    assert digest == digest_of(body)
    for ref in ("ms", digest):
        r = await client.head(f"/v2/cache/app/manifests/{ref}")
        assert r.status == 200 and r.headers["Content-Length"] == str(len(body))
        assert r.headers["Docker-Content-Digest"] == digest and r.headers["Content-Type"] == OCI_MANIFEST
        r = await client.get(f"/v2/cache/app/manifests/{ref}")
        assert await r.read() == body
    # An index over it, and a Docker v2 manifest: both stored with their media types.
    index = json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [{"digest": digest, "size": len(body)}]}
    ).encode()
    r = await client.put("/v2/cache/app/manifests/index", data=index, headers={"Content-Type": OCI_INDEX})
    assert r.status == 201
    docker = image_manifest(config, [(layer, 11000)], DOCKER_MANIFEST)
    r = await client.put("/v2/img/manifests/1", data=docker, headers={"Content-Type": DOCKER_MANIFEST})
    assert r.status == 201
    r = await client.get("/v2/img/manifests/1")
    assert r.headers["Content-Type"] == DOCKER_MANIFEST
    r = await client.get("/v2/cache/app/tags/list")
    assert await r.json() == {"name": "cache/app", "tags": ["index", "ms"]}
    r = await client.get("/v2/cache/app/tags/list?n=1")
    assert (await r.json())["tags"] == ["index"] and "last=index" in r.headers["Link"]
    # Held completely: announced in the manifest gossip with its tag.
    entries, metas = client.registry.announcement()  # type: ignore[attr-defined]
    parsed = oci.parse(entries[oci.entry_key(digest)])
    assert parsed is not None and "cache/app:ms" in parsed[1]
    meta = next(m for m in metas if m.id == oci.entry_key(digest))
    assert set(meta.layers) == {config, layer}


async def test_a_newer_push_moves_the_tag(client: TestClient) -> None:
    config = await push_blob(client, "r", b"{}")
    first = image_manifest(config, [])
    second = image_manifest(config, [(config, 2)])
    for body in (first, second):
        r = await client.put("/v2/r/manifests/t", data=body, headers={"Content-Type": OCI_MANIFEST})
        assert r.status == 201
    r = await client.get("/v2/r/manifests/t")
    assert await r.read() == second


async def test_bad_input_leaves_the_store_unchanged(client: TestClient, workdir: Path) -> None:
    good = await push_blob(client, "r", b"good")
    before = store_files(workdir)

    # A wrong digest: 400 DIGEST_INVALID, nothing stored.
    r = await client.post("/v2/r/blobs/uploads/")
    r = await client.put(f"{r.headers['Location']}?digest={digest_of(b'other')}", data=b"payload")
    assert r.status == 400 and await error_code(r) == "DIGEST_INVALID"
    assert not client.registry.store.has(digest_of(b"payload"))  # type: ignore[attr-defined]
    r = await client.put(f"/v2/r/blobs/uploads/x?digest=sha256:{'0' * 63}", data=b"x")
    assert r.status in (400, 404)

    # An upload cut short: the PATCH body ends early (Content-Length says more). Nothing visible.
    r = await client.post("/v2/r/blobs/uploads/")
    location = r.headers["Location"]
    host, port = client.host, client.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"PATCH {location} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 100000\r\n\r\n".encode() + b"x" * 1000
    )
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    # An unknown upload ID.
    r = await client.patch("/v2/r/blobs/uploads/not-an-upload", data=b"x")
    assert r.status == 404 and await error_code(r) == "BLOB_UPLOAD_UNKNOWN"
    r = await client.put(f"/v2/r/blobs/uploads/not-an-upload?digest={good}", data=b"x")
    assert r.status == 404 and await error_code(r) == "BLOB_UPLOAD_UNKNOWN"
    # A manifest over 4 MiB.
    r = await client.put(
        "/v2/r/manifests/big",
        data=b"{" + b" " * (4 * 1024 * 1024) + b"}",
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert r.status == 413
    # A manifest that references missing blobs.
    missing = image_manifest(good, [(digest_of(b"never pushed"), 12)])
    r = await client.put("/v2/r/manifests/m", data=missing, headers={"Content-Type": OCI_MANIFEST})
    assert r.status == 400 and await error_code(r) == "MANIFEST_BLOB_UNKNOWN"
    r = await client.put("/v2/r/manifests/m", data=b"not json", headers={"Content-Type": OCI_MANIFEST})
    assert r.status == 400 and await error_code(r) == "MANIFEST_INVALID"
    # Invalid and path-escaping names, sent raw (an HTTP client would normalise the dots away).
    for path in (
        "/v2/UPPER/blobs/uploads/",
        "/v2/a/../../etc/blobs/uploads/",
        "/v2/a/%2e%2e/b/blobs/uploads/",
        "/v2/..%2f..%2fetc/blobs/uploads/",
        "/v2/a%00b/blobs/uploads/",
        "/v2/" + "a" * 300 + "/blobs/uploads/",
    ):
        status, body = await raw_request(client, "POST", path)
        assert status in (400, 404), path
        if status == 400:
            assert json.loads(body)["errors"][0]["code"] == "NAME_INVALID", path
    r = await client.get("/v2/a/manifests/..%2f..%2fpasswd")
    assert r.status == 404
    r = await client.get("/v2/r/blobs/sha256:../../x")
    assert r.status == 400 and await error_code(r) == "DIGEST_INVALID"
    # A Range past the end.
    r = await client.get(f"/v2/r/blobs/{good}", headers={"Range": "bytes=100-200"})
    assert r.status == 416 and r.headers["Content-Range"] == "bytes */4"
    # Unknown content is a 404 at once.
    r = await client.head(f"/v2/r/blobs/{digest_of(b'nobody has this')}")
    assert r.status == 404
    r = await client.get("/v2/r/manifests/unknown-tag")
    assert r.status == 404 and await error_code(r) == "MANIFEST_UNKNOWN"

    assert store_files(workdir) == before and before
    r = await client.get(f"/v2/r/blobs/{good}")
    assert r.status == 200 and await r.read() == b"good"


async def test_deletes_are_unsupported(client: TestClient) -> None:
    r = await client.delete(f"/v2/r/manifests/{digest_of(b'x')}")
    assert r.status == 405 and await error_code(r) == "UNSUPPORTED"


async def test_the_empty_blob_is_served_on_a_kept_alive_connection(client: TestClient) -> None:
    """A zero-byte blob is served with an empty body, and the connection carries the next request:
    sendfile refuses a count of 0, which used to break the connection after the headers went out."""
    empty = await push_blob(client, "r", b"")
    reader, writer = await asyncio.open_connection(client.host, client.port)
    request = f"GET /v2/r/blobs/{empty} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    writer.write(request + b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await writer.drain()
    answers = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await writer.wait_closed()
    first, _, rest = answers.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200") and b"Content-Length: 0" in first
    assert rest.startswith(b"HTTP/1.1 200"), rest[:200]  # the second answer, on the same connection
    assert rest.endswith(b"{}")


async def test_an_out_of_order_final_chunk_is_416_and_keeps_the_upload(client: TestClient) -> None:
    """The final PUT may carry the last chunk: a `Content-Range` that does not start where the
    upload stands is refused like an out-of-order PATCH (416 with the upload's `Range`), and the
    upload is unchanged, so the client can send the right chunk."""
    data = bytes(range(256)) * 12  # 3072 bytes: 1024 by PATCH, then 2048 by the final PUT
    digest = digest_of(data)
    r = await client.post("/v2/r/blobs/uploads/")
    location = r.headers["Location"]
    r = await client.patch(location, data=data[:1024], headers={"Content-Range": "0-1023"})
    assert r.status == 202 and r.headers["Range"] == "0-1023"
    r = await client.put(
        f"{location}?digest={digest}", data=data[2048:], headers={"Content-Range": "2048-3071"}
    )
    assert r.status == 416 and r.headers["Range"] == "0-1023"
    assert not client.registry.store.has(digest)  # type: ignore[attr-defined]
    r = await client.put(
        f"{location}?digest={digest}", data=data[1024:], headers={"Content-Range": "1024-3071"}
    )
    assert r.status == 201, await r.text()
    r = await client.get(f"/v2/r/blobs/{digest}")
    assert await r.read() == data


async def test_nondistributable_layers_need_not_be_pushed(client: TestClient) -> None:
    """Non-distributable (and Docker foreign) layers are fetched from their `urls`, never pushed: a
    manifest naming them is accepted without them, and the node holds it whole without them."""
    config = await push_blob(client, "r", b"{}")
    layer = await push_blob(client, "r", b"a distributable layer")
    foreign = digest_of(b"never pushed")
    doc = json.loads(image_manifest(config, [(layer, 21)]))
    doc["layers"].insert(
        0,
        {
            "mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            "digest": foreign,
            "size": 12,
            "urls": ["https://store.example.com/blob"],
        },
    )
    body = json.dumps(doc).encode()
    r = await client.put("/v2/r/manifests/nd", data=body, headers={"Content-Type": OCI_MANIFEST})
    assert r.status == 201, await r.text()
    needed = client.registry.complete(digest_of(body))  # type: ignore[attr-defined]
    assert needed is not None and sorted(needed[0]) == sorted([config, layer])
    # A distributable layer that was never pushed is still refused.
    doc["layers"][0]["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip"
    r = await client.put(
        "/v2/r/manifests/nd2", data=json.dumps(doc).encode(), headers={"Content-Type": OCI_MANIFEST}
    )
    assert r.status == 400 and await error_code(r) == "MANIFEST_BLOB_UNKNOWN"


async def test_a_subject_is_stored_but_not_acknowledged_without_referrers(client: TestClient) -> None:
    """The referrers API is left out, so a push with `subject` gets no `OCI-Subject` header: that
    header tells clients the registry indexed the referrer, and without it they keep the spec's
    fallback tag (`sha256-<subject hex>`), which the mesh gossips like any tag."""
    config = await push_blob(client, "r", b"{}")
    subject = image_manifest(config, [])
    r = await client.put("/v2/r/manifests/base", data=subject, headers={"Content-Type": OCI_MANIFEST})
    assert r.status == 201
    doc = json.loads(image_manifest(config, []))
    doc["subject"] = {"mediaType": OCI_MANIFEST, "digest": digest_of(subject), "size": len(subject)}
    referrer = json.dumps(doc).encode()
    r = await client.put(
        f"/v2/r/manifests/{digest_of(referrer)}", data=referrer, headers={"Content-Type": OCI_MANIFEST}
    )
    assert r.status == 201 and "OCI-Subject" not in r.headers
    r = await client.get(f"/v2/r/referrers/{digest_of(subject)}")
    assert r.status == 404 and await error_code(r) == "UNSUPPORTED"
    r = await client.get(f"/v2/r/manifests/{digest_of(referrer)}")
    assert r.status == 200 and await r.read() == referrer


async def test_cancel_anonymous_mount_and_inverted_range(client: TestClient) -> None:
    """Spec cases the conformance suite walks that no other test here covers: a cancelled upload
    is gone (404 BLOB_UPLOAD_UNKNOWN); a mount without `from` is 201 when the blob is held; a
    `Range` whose end is before its start is unsatisfiable (416), as is one wholly past the end."""
    r = await client.post("/v2/r/blobs/uploads/")
    location = r.headers["Location"]
    r = await client.delete(location)
    assert r.status == 204
    r = await client.get(location)
    assert r.status == 404 and await error_code(r) == "BLOB_UPLOAD_UNKNOWN"
    data = b"m" * 1000
    digest = await push_blob(client, "r", data)
    r = await client.post(f"/v2/elsewhere/blobs/uploads/?mount={digest}")
    assert r.status == 201 and r.headers["Docker-Content-Digest"] == digest
    for wanted in ("bytes=500-0", "bytes=5000-10000"):
        r = await client.get(f"/v2/r/blobs/{digest}", headers={"Range": wanted})
        assert r.status == 416 and r.headers["Content-Range"] == "bytes */1000", wanted
    r = await client.get(f"/v2/r/blobs/{digest}", headers={"Range": "bytes=900-5000"})
    assert r.status == 206 and r.headers["Content-Range"] == "bytes 900-999/1000"
    assert await r.read() == data[900:]


async def test_request_outcomes_name_what_was_refused(client: TestClient) -> None:
    """The requests metric counts a refusal by its error code, or by its status when the spec
    gives it none (416), never as "ok"."""
    digest = await push_blob(client, "r", b"o" * 100)
    seen: list[tuple[str, str]] = []

    class Recorder:
        def request(self, method: str, outcome: str) -> None:
            seen.append((method, outcome))

        def served(self, n: int) -> None:
            pass

        def fetched(self, n: int) -> None:
            pass

    client.registry.counters = Recorder()  # type: ignore[attr-defined]
    assert (await client.get(f"/v2/r/blobs/{digest}")).status == 200
    assert (await client.get(f"/v2/r/blobs/{digest}", headers={"Range": "bytes=500-"})).status == 416
    assert (await client.get("/v2/r/blobs/sha256:" + "0" * 64)).status == 404
    assert seen == [("GET", "ok"), ("GET", "416"), ("GET", "blob_unknown")]


async def test_store_survives_leftovers(workdir: Path) -> None:
    """A crash mid-write leaves temp and upload files, never a partial blob: they are wiped."""
    root = workdir / "registry"
    (root / "tmp").mkdir(parents=True)
    (root / "tmp" / "partial").write_bytes(b"half")
    (root / "uploads").mkdir()
    (root / "uploads" / "abc").write_bytes(b"half")
    from mesh.registry.store import Store

    store = Store(root)
    assert not any((root / "tmp").iterdir()) and not any((root / "uploads").iterdir())
    assert store.digests() == []


def test_registry_settings() -> None:
    from mesh.config import ConfigError
    from mesh.node.sockets import is_loopback
    from mesh.options import resolve

    env = {"CACHEMESH_INSECURE": "1"}
    assert resolve({}, env).registry_listen == "127.0.0.1:7613"
    assert resolve({}, {**env, "CACHEMESH_REGISTRY_LISTEN": "OFF"}).registry_listen == "off"
    config = resolve(
        {}, {**env, "CACHEMESH_REGISTRY_LISTEN": "[::1]:5000", "CACHEMESH_REGISTRY_WARM": "cache/*, ci/*"}
    )
    assert config.registry_listen == "[::1]:5000" and config.registry_warm == ("cache/*", "ci/*")
    with pytest.raises(ConfigError):
        resolve({}, {**env, "CACHEMESH_REGISTRY_LISTEN": "nonsense:port"})
    assert is_loopback("127.0.0.1:7613") and is_loopback("[::1]:1") and is_loopback("localhost:1")
    assert not is_loopback("0.0.0.0:7613") and not is_loopback("10.0.0.1:7613")


async def test_content_still_being_fetched_is_relayed_as_it_arrives_and_cut_if_the_fetch_fails(
    client: TestClient,
) -> None:
    """A peer asking for a blob this node is still fetching gets the bytes that have arrived, then
    the rest as it comes; the last byte only once the digest matched. A failed fetch cuts it."""
    registry: Registry = client.registry  # type: ignore[attr-defined]
    data = b"0123456789" * 1000
    digest = digest_of(data)
    assert registry.open_content(digest, 0) is None  # neither held nor being fetched
    fetch = Fetch(digest, registry.store.temp_path())
    registry.fetcher.active[digest] = fetch
    with open(fetch.temp, "wb") as fh:  # noqa: ASYNC230 - the test plays the fetch's writer
        assert registry.open_content(digest, 0) is None  # size not known yet: nothing to promise
        fetch.size = len(data)
        assert registry.relaying() == [digest]
        fh.write(data[:4000])
        fh.flush()
        fetch.written = 4000
        stream = registry.open_content(digest, 1000)
        assert stream is not None and stream.size == len(data) and not stream.path
        got = bytearray()

        async def read() -> None:
            async for chunk in stream.chunks:
                got.extend(chunk)

        reader = asyncio.create_task(read())
        await async_wait_until(lambda: len(got) == 3000, 5)
        fh.write(data[4000:])
        fh.flush()
        fetch.written = len(data)
        fetch._notify()
        await async_wait_until(lambda: len(got) == len(data) - 1001, 5)  # the last byte waits
        assert not reader.done()
        fetch.verified = True
        fetch._notify()
        await reader
    assert bytes(got) == data[1000:]

    broken = registry.open_content(digest, 0)
    assert broken is not None
    fetch.verified = False
    fetch.error = RegistryError("DIGEST_INVALID", "peers sent something else")
    fetch._notify()
    with pytest.raises(ConnectionError, match="relayed fetch"):
        async for _ in broken.chunks:
            pass
    del registry.fetcher.active[digest]


async def test_a_claimed_size_of_zero_is_checked_before_the_client_gets_its_answer(
    client: TestClient,
) -> None:
    """An answer with no bytes is whole as soon as its headers go, so a fetched blob that a peer
    claims is empty is checked against its digest first: the client gets the error, never a
    complete empty blob."""
    registry: Registry = client.registry  # type: ignore[attr-defined]
    digest = digest_of(b"not empty")
    ends = asyncio.Event()

    class ClaimsEmpty:
        @contextlib.asynccontextmanager
        async def content(self, addr: str, digest: str, **_: object) -> AsyncIterator[ContentStream]:
            async def nothing() -> AsyncIterator[bytes]:
                await ends.wait()  # the answer's end (and so the digest check) comes later
                return
                yield b""

            yield ContentStream(0, "", nothing())

    registry.fetcher.client = ClaimsEmpty()  # type: ignore[assignment]
    registry.fetcher.holders = lambda d: ["peer"]
    get = asyncio.create_task(client.get(f"/v2/r/blobs/{digest}"))
    await async_wait_until(
        lambda: digest in registry.fetcher.active and registry.fetcher.active[digest].size == 0, 5
    )
    ends.set()
    r = await get
    assert r.status == 400 and await error_code(r) == "DIGEST_INVALID"
    assert not registry.store.has(digest)


class TagBeforeMetas(NoMesh):
    """One live peer announcing a manifest (and so holding all of it) whose gossiped metadata,
    the list of blobs it needs, has not reached this node yet."""

    def __init__(self, manifest: str) -> None:
        super().__init__()
        self.entries = {"peer-a": {oci.entry_key(manifest): oci.announce(manifest, {"app:1": 1})}}

    def live_manifests(self) -> Mapping[str, Mapping[str, Tags]]:
        return self.entries

    def sources(self, key: str, holders: list[str], relays: list[str]) -> list[str]:
        return ["127.0.0.1:9" for _ in holders]  # the discard port: nothing is ever fetched


async def test_a_served_manifests_blobs_are_located_before_their_metadata_arrives(workdir: Path) -> None:
    """A pull right after a push elsewhere: the tag is here, the manifest was fetched from its
    announcer, and the client asks for the config before the announcer's metadata arrived."""
    config_blob = b"{}"
    body = image_manifest(digest_of(config_blob), [])
    manifest = digest_of(body)
    settings = Config.local(secret=b"registry-test-secret-0123", data_dir=str(workdir))
    peer_client = PeerClient(Signer(b"k" * 32, "default", "test"), max_message_bytes=1 << 20, timeout=2)
    registry = Registry(RegistrySettings.from_config(settings), peer_client, TagBeforeMetas(manifest))
    try:
        with pytest.raises(RegistryError, match="is not held here"):
            registry.locate(digest_of(config_blob))  # nothing read here names it yet
        await registry.store.put_bytes(manifest, body, OCI_MANIFEST)  # as the fetch from peer-a left it
        await registry.manifest(manifest)  # the client reads it
        size, fetch = registry.locate(digest_of(config_blob))
        assert fetch is not None and size == -1  # on its way from peer-a, not a 404
    finally:
        await registry.stop()
        await peer_client.close()

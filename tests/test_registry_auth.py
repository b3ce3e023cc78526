"""The registry's push token (mesh.registry.push_auth) through aiohttp's test client: the token
flow docker login, docker push and BuildKit speak, pulls that stay open, and the spec's errors."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from mesh.config import Config
from mesh.net.auth import Signer
from mesh.net.client import PeerClient
from mesh.registry.ports import RegistrySettings, read_push_token
from mesh.registry.push_auth import TOKEN_LIFETIME, PushAuth
from mesh.registry.router import registry_app
from mesh.registry.service import Registry
from tests.test_registry import NoMesh

TOKEN = b"the-push-token-0123456789"
BLOB = b"a layer"
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()


class Protecting(NoMesh):
    """An untrusted host with `cache/*:main` protected."""

    def may_push(self, ref: str) -> bool:
        return not ref.endswith(":main")


async def _client(
    workdir: Path, auth: PushAuth | None, view: NoMesh | None = None
) -> AsyncIterator[TestClient]:
    config = Config.local(secret=b"registry-test-secret-0123", data_dir=str(workdir))
    peers = PeerClient(Signer(b"k" * 32, "default", "test"), max_message_bytes=1 << 20, timeout=2)
    registry = Registry(RegistrySettings.from_config(config), peers, view or NoMesh())
    await registry.start()
    async with TestClient(TestServer(registry_app(registry, auth))) as client:
        yield client
    await registry.stop()


@pytest.fixture
async def client(workdir: Path) -> AsyncIterator[TestClient]:
    async for c in _client(workdir, PushAuth(TOKEN)):
        yield c


def basic(password: bytes, user: bytes = b"cachemesh") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(user + b":" + password).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def push_blob(client: TestClient, headers: dict[str, str]) -> int:
    async with client.post(f"/v2/cache/app/blobs/uploads/?digest={DIGEST}", data=BLOB, headers=headers) as r:
        return r.status


async def test_the_base_endpoint_challenges_like_a_token_registry(client: TestClient) -> None:
    async with client.get("/v2/") as r:
        assert r.status == 401
        challenge = r.headers["WWW-Authenticate"]
        assert (await r.json())["errors"][0]["code"] == "UNAUTHORIZED"
    assert challenge.startswith('Bearer realm="http://') and challenge.endswith(
        '/v2/token",service="cachemesh"'
    )


async def test_docker_login_then_push_a_bearer_token_from_basic_auth(client: TestClient) -> None:
    async with client.get(
        "/v2/token?service=cachemesh&scope=repository:cache/app:pull,push", headers=basic(TOKEN)
    ) as r:
        assert r.status == 200
        granted = await r.json()
    assert granted["token"] == granted["access_token"] and granted["expires_in"] == TOKEN_LIFETIME
    async with client.get("/v2/", headers=bearer(granted["token"])) as r:
        assert r.status == 200  # docker login's check
    assert await push_blob(client, bearer(granted["token"])) == 201


async def test_buildkit_oauth_password_grant_and_refresh(client: TestClient) -> None:
    form = {"grant_type": "password", "username": "ci", "password": TOKEN.decode(), "service": "cachemesh"}
    async with client.post("/v2/token", data=form) as r:
        assert r.status == 200
        granted = await r.json()
    assert await push_blob(client, bearer(granted["access_token"])) == 201
    async with client.post(
        "/v2/token", data={"grant_type": "refresh_token", "refresh_token": granted["refresh_token"]}
    ) as r:
        assert r.status == 200
    wrong = {**form, "password": "guess"}
    async with client.post("/v2/token", data=wrong) as r:
        assert r.status == 401


async def test_a_wrong_token_is_refused_at_login(client: TestClient) -> None:
    async with client.get("/v2/token", headers=basic(b"guess")) as r:
        assert r.status == 401
        assert "wrong push token" in (await r.json())["errors"][0]["message"]


async def test_anonymous_tokens_pull_but_never_push(client: TestClient) -> None:
    async with client.get("/v2/token?scope=repository:cache/app:pull") as r:
        anonymous = (await r.json())["token"]
    async with client.get("/v2/", headers=bearer(anonymous)) as r:
        assert r.status == 200  # docker pull's ping with the token it was given
    async with client.post("/v2/cache/app/blobs/uploads/", headers=bearer(anonymous)) as r:
        assert r.status == 401
        assert "pull,push" in r.headers["WWW-Authenticate"]
        error = (await r.json())["errors"][0]
    assert error["code"] == "UNAUTHORIZED" and "docker login" in error["message"]
    assert await push_blob(client, basic(TOKEN)) == 201  # Basic auth directly (skopeo, oras)
    for headers in ({}, bearer(anonymous)):  # pulls need nothing
        async with client.get(f"/v2/cache/app/blobs/{DIGEST}", headers=headers) as r:
            assert r.status == 200 and await r.read() == BLOB


async def test_every_write_needs_the_token(client: TestClient) -> None:
    for method, path in (
        ("POST", "/v2/cache/app/blobs/uploads/"),
        ("PATCH", "/v2/cache/app/blobs/uploads/x"),
        ("PUT", "/v2/cache/app/blobs/uploads/x?digest=" + DIGEST),
        ("PUT", "/v2/cache/app/manifests/main"),
    ):
        async with client.request(method, path, headers=bearer("1.forged")) as r:
            assert r.status == 401, (method, path)


async def test_a_token_past_its_time_pushes_no_more(workdir: Path) -> None:
    auth = PushAuth(TOKEN, clock=1000.0)
    token = auth.issue()
    later = PushAuth(TOKEN, clock=1000.0 + TOKEN_LIFETIME + 1)
    later._key = auth._key  # the same node, later
    async for client in _client(workdir, later):
        assert await push_blob(client, bearer(token)) == 401


async def test_without_a_token_file_pushes_are_open(workdir: Path) -> None:
    async for client in _client(workdir, None):
        async with client.get("/v2/") as r:
            assert r.status == 200
        assert await push_blob(client, {}) == 201


async def test_a_protected_name_on_an_untrusted_host_is_denied(workdir: Path) -> None:
    async for client in _client(workdir, None, Protecting()):
        async with client.put(
            "/v2/cache/app/manifests/main", data=b"{}", headers={"Content-Type": "application/json"}
        ) as r:
            assert r.status == 403
            error = (await r.json())["errors"][0]
        assert error["code"] == "DENIED" and "cache/app:main is a protected name" in error["message"]


def test_the_token_file_is_read_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_bytes(TOKEN + b"\n")
    assert read_push_token(str(path)) == TOKEN
    assert read_push_token("") == b""
    path.write_bytes(b"short\n")
    with pytest.raises(ValueError, match="16 to 4096 bytes"):
        read_push_token(str(path))
    with pytest.raises(ValueError, match="cannot read --registry-push-token-file"):
        read_push_token(str(tmp_path / "missing"))

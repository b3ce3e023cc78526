"""The local Docker Engine, behind a small interface with a real and an in-memory implementation.

`DockerEngine` speaks the Engine API (https://docs.docker.com/engine/api/v1.41/). Request/response
calls (version, list, inspect, tag, remove) go through docker-py's APIClient, which negotiates the
API version and understands DOCKER_HOST, in worker threads. The three streaming endpoints (save,
load, events) go through aiohttp on the same endpoint: a transfer streams the peer's HTTP body
into `POST /images/load` chunk by chunk, never holding an image in memory or on disk.

It implements mesh.engine.base.Engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

import aiohttp
import docker
import docker.errors

from mesh.engine.base import (
    EngineError,
    EngineInfo,
    EngineUnavailable,
    LoadResult,
    LocalImage,
    image_key,
    split_ref,
)
from mesh.protocol.share import Step
from mesh.protocol.wire import ImageMeta


@dataclass(frozen=True, slots=True)
class _Inspected:
    key: str
    parent: str
    """The parent's engine ID ("" if none; the containerd store records none for BuildKit images)."""
    layers: tuple[str, ...]
    labels: dict[str, str]


class DockerEngine:
    def __init__(self, docker_host: str) -> None:
        self._host = docker_host
        self._client: docker.APIClient | None = None
        self._session: aiohttp.ClientSession | None = None
        self._base = ""
        self._inspected: dict[str, _Inspected] = {}  # by engine ID: its content never changes
        self._native: dict[str, str] = {}  # mesh key -> engine ID, from the last listing
        self._duplicates: dict[str, list[str]] = {}  # mesh key -> its other engine IDs, if any
        self._info: EngineInfo | None = None
        self._history: dict[str, list[tuple[str, int, str, str]]] = {}  # by engine ID, as reported

    # --- connections -------------------------------------------------------------------------

    async def _api(self) -> docker.APIClient:
        if self._client is None:
            try:
                self._client = await asyncio.to_thread(docker.APIClient, base_url=self._host, version="auto")
            except docker.errors.DockerException as exc:
                raise EngineUnavailable(f"cannot reach the Docker Engine at {self._host}: {exc}") from None
        return self._client

    async def _http(self) -> tuple[aiohttp.ClientSession, str]:
        if self._session is None:
            api = await self._api()
            if self._host.startswith("unix://"):
                connector: aiohttp.BaseConnector = aiohttp.UnixConnector(path=self._host[len("unix://") :])
                origin = "http://docker"
            elif self._host.startswith(("tcp://", "http://")):
                connector = aiohttp.TCPConnector()
                origin = "http://" + self._host.split("://", 1)[1].rstrip("/")
            else:
                raise EngineUnavailable(f"unsupported Docker host {self._host!r}: use unix:// or tcp://")
            # A save stream is read in 1 MiB pieces, not aiohttp's 64 KiB: fewer pauses of the
            # engine's socket and fewer, larger chunks through the node (less CPU per byte).
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=None), read_bufsize=1 << 20
            )
            self._base = f"{origin}/v{api.api_version}"
        return self._session, self._base

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        api = await self._api()
        try:
            return await asyncio.to_thread(getattr(api, fn), *args, **kwargs)
        except docker.errors.APIError as exc:
            raise EngineError(str(exc.explanation or exc)) from None
        except (docker.errors.DockerException, OSError) as exc:
            raise EngineUnavailable(f"Docker Engine at {self._host}: {exc}") from None
        except Exception as exc:  # requests' ConnectionError and friends when the daemon restarts
            raise EngineUnavailable(f"Docker Engine at {self._host}: {exc}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._client is not None:
            self._client.close()
            self._client = None

    # --- calls ---------------------------------------------------------------------------------

    async def info(self) -> EngineInfo:
        if self._info is None:
            api = await self._api()
            version = await self._call("version")
            detail = await self._call("info")
            # The containerd image store reports its snapshotter as the driver type.
            status = {str(k): str(v) for k, v in detail.get("DriverStatus") or ()}
            containerd = status.get("driver-type", "").startswith("io.containerd.snapshotter")
            api_version = tuple(int(x) for x in str(api.api_version).split(".")[:2])
            self._info = EngineInfo(
                str(version.get("Version", "")),
                containerd,
                api_version >= (1, 44),
                str(detail.get("DockerRootDir") or ""),
            )
        return self._info

    async def images(self) -> list[LocalImage]:
        for attempt in range(3):
            try:
                return await self._images()
            except EngineUnavailable:
                raise
            except EngineError:
                # The containerd store can fail a listing while an image is being removed
                # ("content digest ... not found"); the next listing sees the settled state.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _images(self) -> list[LocalImage]:
        listed = await self._call("images", all=True)
        found: list[tuple[dict[str, Any], _Inspected]] = []
        for item in listed:
            engine_id = item["Id"]
            seen = self._inspected.get(engine_id)
            if seen is None:
                try:
                    detail = await self._call("inspect_image", engine_id)
                except EngineError:
                    continue  # removed between list and inspect
                if settling(detail):
                    continue  # its key would be that of nothing; the next listing sees it settled
                layers = tuple(detail.get("RootFS", {}).get("Layers") or ())
                key = image_key(
                    str(detail.get("Created") or ""),
                    str(detail.get("Architecture") or ""),
                    str(detail.get("Os") or ""),
                    layers,
                )
                labels = (detail.get("Config") or {}).get("Labels") or {}
                seen = _Inspected(
                    key, detail.get("Parent") or "", layers, {str(k): str(v) for k, v in labels.items()}
                )
                if detail.get("Created") and layers:
                    # An image still being written can answer without them; ask again next time.
                    self._inspected[engine_id] = seen
            found.append((item, seen))
        keys = {item["Id"]: seen.key for item, seen in found}
        out: list[LocalImage] = []
        for item, seen in found:
            meta = ImageMeta(
                id=seen.key,
                parent=keys.get(seen.parent, ""),
                layers=seen.layers,
                size=int(item.get("Size") or 0),
                created=int(item.get("Created") or 0),
            )
            tags = tuple(sorted(t for t in item.get("RepoTags") or () if t != "<none>:<none>"))
            engine_id = item["Id"] if item["Id"] != seen.key else ""
            out.append(LocalImage(meta, tags, engine_id, seen.labels))
        out, self._duplicates = _one_per_key(out)
        self._native = {i.meta.id: i.native for i in out}
        for stale in [i for i in self._inspected if i not in keys]:
            del self._inspected[stale]
            self._history.pop(stale, None)
        return out

    async def _engine_id(self, key: str) -> str:
        if key not in self._native:
            await self.images()
        try:
            return self._native[key]
        except KeyError:
            raise EngineError(f"No such image: {key}") from None

    async def tag(self, image_id: str, ref: str) -> None:
        repo, tag = split_ref(ref)
        await self._call("tag", await self._engine_id(image_id), repo, tag, force=True)

    async def remove(self, image_id: str) -> None:
        native = await self._engine_id(image_id)
        for other in self._duplicates.get(image_id, ()):
            with contextlib.suppress(EngineError):  # the same image to the mesh: it goes too
                await self._call("remove_image", other, noprune=True)
        await self._call("remove_image", native, noprune=True)

    async def history(self, image_id: str) -> list[Step]:
        native = await self._engine_id(image_id)
        raw = self._history.get(native)
        if raw is None:
            # Newest first; "Id" names the image a step produced where the engine holds one (the
            # classic builder's intermediate images on this host), else "<missing>".
            reported = await self._call("history", native)
            raw = [
                (
                    str(h.get("CreatedBy") or ""),
                    int(h.get("Size") or 0),
                    str(h.get("Id") or ""),
                    str(h.get("Comment") or ""),
                )
                for h in reversed(reported)
            ]
            self._history[native] = raw
        keys = {engine_id: key for key, engine_id in self._native.items()}
        return [
            Step(created_by, size, keys.get(ident, ""), comment) for created_by, size, ident, comment in raw
        ]

    async def containers(self) -> set[str]:
        listed = await self._call("containers", all=True)
        natives = {str(c.get("ImageID") or "") for c in listed}
        keys = {engine_id: key for key, engine_id in self._native.items()}
        if natives - set(keys):
            await self.images()
            keys = {engine_id: key for key, engine_id in self._native.items()}
        return {keys[n] for n in natives if n in keys}

    async def evict(self, image_id: str) -> None:
        native = await self._engine_id(image_id)
        detail = await self._call("inspect_image", native)
        refs = [t for t in detail.get("RepoTags") or () if t != "<none>:<none>"]
        # All but the last tag only untag; the last reference goes with the image and prunes the
        # untagged parents that nothing else needs. Without force the engine refuses while a
        # container uses the image.
        for ref in refs[:-1]:
            await self._call("remove_image", ref, noprune=True)
        await self._call("remove_image", refs[-1] if refs else native, noprune=False)

    # --- streams --------------------------------------------------------------------------------

    async def save(self, image_ids: Iterable[str], chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        session, base = await self._http()
        natives = [await self._engine_id(i) for i in image_ids]
        names = "&".join("names=" + quote(n) for n in natives)
        try:
            async with session.get(f"{base}/images/get?{names}") as response:
                if response.status != 200:
                    raise EngineError(f"save refused: {_engine_message(await response.read())}")
                # Whole pieces, not what each read found: the containerd store writes its save
                # about 25 kB at a time, and every piece costs both nodes a pass through the tar
                # filters, TLS and the receiving load (about a CPU-second a side per 500 MB).
                while True:
                    try:
                        yield await response.content.readexactly(chunk_size)
                    except asyncio.IncompleteReadError as end:
                        if end.partial:
                            yield end.partial
                        break
        except aiohttp.ClientError as exc:
            raise EngineUnavailable(f"save interrupted: {exc}") from None

    async def load(self, chunks: AsyncIterator[bytes]) -> LoadResult:
        session, base = await self._http()
        headers = {"Content-Type": "application/x-tar"}
        try:
            async with session.post(f"{base}/images/load?quiet=1", data=chunks, headers=headers) as response:
                body = await response.read()
        except aiohttp.ClientError as exc:
            raise EngineUnavailable(f"load interrupted: {exc}") from None
        if response.status != 200:
            raise EngineError(f"load refused: {_engine_message(body)}")
        # The engine answers 200 and reports failure inside its JSON stream.
        loaded = []
        for line in body.splitlines():
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if "error" in item or "errorDetail" in item:
                raise EngineError(f"load refused: {item.get('error') or item['errorDetail'].get('message')}")
            for text in str(item.get("stream", "")).splitlines():
                if text.startswith("Loaded image ID: "):
                    loaded.append(text.removeprefix("Loaded image ID: ").strip())
        keys = {i.native: i.meta.id for i in await self.images()}
        return LoadResult(tuple(keys.get(native, native) for native in loaded))

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        session, base = await self._http()
        filters = quote(json.dumps({"type": ["image"]}))
        try:
            async with session.get(f"{base}/events?filters={filters}") as response:
                if response.status != 200:
                    raise EngineError(f"events refused: {_engine_message(await response.read())}")
                async for line in response.content:
                    with contextlib.suppress(ValueError):
                        yield json.loads(line)
        except aiohttp.ClientError as exc:
            raise EngineUnavailable(f"event stream broken: {exc}") from None


def settling(detail: dict[str, Any]) -> bool:
    """Whether an inspect answered for an image being written or removed: the containerd store
    lists such an image, even tagged, and answers with an empty detail. Not an image (yet, or any
    more): every image config names its platform."""
    return not (detail.get("Os") and detail.get("Architecture"))


def _engine_message(body: bytes) -> str:
    try:
        return str(json.loads(body).get("message", body[:200]))
    except ValueError:
        return body[:200].decode(errors="replace")


def _one_per_key(images: list[LocalImage]) -> tuple[list[LocalImage], dict[str, list[str]]]:
    """One image per mesh key, and the other engine IDs of keys the engine holds more than once.

    The containerd image store can hold one image under two engine IDs (two manifests of the
    same config and layers: a graph-driver source's save stream and a BuildKit one, or what a
    failed load left and the load that followed). Listed as two, the one a dict kept was not
    always the one `tag` went to, so the node tagged it again on every round (the soak saw 122
    tag moves of one image on one node). The one kept is the tagged one, else the lowest ID: the
    same choice on every listing; it carries every tag of them all."""
    by_key: dict[str, list[LocalImage]] = {}
    for image in images:
        by_key.setdefault(image.meta.id, []).append(image)
    out: list[LocalImage] = []
    others: dict[str, list[str]] = {}
    for key, same in by_key.items():
        if len(same) == 1:
            out.append(same[0])
            continue
        same.sort(key=lambda i: (not i.tags, i.native))
        tags = tuple(sorted({t for i in same for t in i.tags}))
        out.append(replace(same[0], tags=tags))
        others[key] = [i.native for i in same[1:]]
    return out, others

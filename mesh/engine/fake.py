"""An in-memory Docker Engine for unit tests, the 20-process mesh test and the simulator.

It writes and reads real legacy-format `docker save` tars and checks what the real engine checks
on load: each layer's digest matches the config's diff IDs, a truncated tar loads nothing, and a
layer whose chain is already here needs no file (a graph driver's rule). Images are named by the
mesh key of their config, as the real adapter names them. tests/test_engine_conformance.py runs one suite
against this and a real dockerd, so the two cannot drift apart.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import tarfile
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

from mesh.engine.base import EngineError, EngineInfo, LoadResult, LocalImage, split_ref
from mesh.engine.tarstream import config_key
from mesh.protocol.share import Step
from mesh.protocol.wire import ImageMeta


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class _Image:
    config: bytes
    layers: list[bytes]
    parent: str
    tags: set[str] = field(default_factory=set)

    @property
    def id(self) -> str:
        """The mesh key, derived from the config as a real engine's adapter derives it."""
        key = config_key(self.config)
        assert key is not None
        return key

    def labels(self) -> dict[str, str]:
        return dict(json.loads(self.config).get("config", {}).get("Labels") or {})

    def meta(self) -> ImageMeta:
        doc = json.loads(self.config)
        return ImageMeta(
            id=self.id,
            parent=self.parent,
            layers=tuple(doc["rootfs"]["diff_ids"]),
            size=sum(len(layer) for layer in self.layers),
            created=int(doc.get("created_unix", 0)),
        )


class FakeEngine:
    def __init__(self) -> None:
        self._images: dict[str, _Image] = {}
        self._subscribers: list[asyncio.Queue[dict[str, Any]]] = []
        self.containers_of: set[str] = set()
        """Test helper: images that containers were created from (the engine refuses to evict them)."""

    # --- test helpers ------------------------------------------------------------------------

    def build(
        self,
        tag: str | None,
        layers: Iterable[bytes],
        *,
        parent: str = "",
        created: int | None = None,
        steps: Iterable[str | tuple[str, bool]] | None = None,
        labels: dict[str, str] | None = None,
    ) -> str:
        """Create an image the way a build would: config over the parent's layers plus new ones.
        `steps` are the history's commands, one per new layer, or (command, False) for a step that
        made no layer (ENV, CMD). By default each layer is a classic-builder RUN; a base, an import."""
        base = self._images[parent].layers if parent else []
        new = list(layers)
        all_layers = [*base, *new]
        when = created if created is not None else int(time.time())
        history = list(json.loads(self._images[parent].config)["history"]) if parent else []
        if steps is None:
            default = "/bin/sh -c layer {}" if parent else ""
            steps = [default.format(i) for i in range(len(new))]
        for step in steps:
            command, makes_layer = step if isinstance(step, tuple) else (step, True)
            entry: dict[str, Any] = {"created_by": command}
            if not makes_layer:
                entry["empty_layer"] = True
            elif not command:
                entry["comment"] = "Imported from -"
            history.append(entry)
        config = json.dumps(
            {
                "history": history,
                "config": {"Labels": labels or None},
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [_sha(layer) for layer in all_layers]},
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when)),
                "created_unix": when,
                "parent": parent,
            },
            sort_keys=True,
        ).encode()
        image = _Image(config, all_layers, parent)
        existing = self._images.setdefault(image.id, image)
        if tag:
            self._retag(existing.id, tag)
        return image.id

    def _retag(self, image_id: str, ref: str) -> None:
        if ":" not in ref.rsplit("/", 1)[-1]:
            ref += ":latest"
        for other in self._images.values():
            if ref in other.tags and other.id != image_id:
                other.tags.discard(ref)
                self._emit("untag", other.id)
        self._images[image_id].tags.add(ref)
        self._emit("tag", image_id, ref)

    def _emit(self, action: str, image_id: str, name: str = "") -> None:
        event = {
            "Type": "image",
            "Action": action,
            "id": image_id,
            "Actor": {"ID": image_id, "Attributes": {"name": name}},
        }
        for queue in self._subscribers:
            queue.put_nowait(event)

    # --- the Engine interface -----------------------------------------------------------------

    async def info(self) -> EngineInfo:
        return EngineInfo("fake", containerd_store=False, oci_save=False)

    async def images(self) -> list[LocalImage]:
        await asyncio.sleep(0)
        return [LocalImage(i.meta(), tuple(sorted(i.tags)), labels=i.labels()) for i in self._images.values()]

    async def history(self, image_id: str) -> list[Step]:
        image = self._images.get(image_id)
        if image is None:
            raise EngineError(f"No such image: {image_id}")
        # Like a graph driver: a step names the image it produced when that image is in the
        # image's parent chain here (a classic build's intermediates).
        produced: dict[int, str] = {}
        current: _Image | None = image
        while current is not None:
            produced[len(json.loads(current.config)["history"]) - 1] = current.id
            current = self._images.get(current.parent) if current.parent else None
        steps, layer = [], 0
        for index, entry in enumerate(json.loads(image.config)["history"]):
            size = 0
            if not entry.get("empty_layer"):
                size = len(image.layers[layer])
                layer += 1
            steps.append(
                Step(entry.get("created_by", ""), size, produced.get(index, ""), entry.get("comment", ""))
            )
        return steps

    async def containers(self) -> set[str]:
        return set(self.containers_of) & set(self._images)

    async def evict(self, image_id: str) -> None:
        image = self._images.get(image_id)
        if image is None:
            raise EngineError(f"No such image: {image_id}")
        if image_id in self.containers_of:
            raise EngineError("conflict: unable to remove image: a container is using it")
        if any(other.parent == image_id for other in self._images.values()):
            raise EngineError("conflict: image has dependent child images")
        for tag in sorted(image.tags):
            image.tags.discard(tag)
            self._emit("untag", image_id)
        await self.remove(image_id)
        parent = image.parent
        # Prune untagged parents nothing else builds on, as the engine does.
        while parent in self._images and not self._images[parent].tags:
            if any(other.parent == parent for other in self._images.values()):
                break
            grandparent = self._images[parent].parent
            await self.remove(parent)
            parent = grandparent

    async def save(self, image_ids: Iterable[str], chunk_size: int = 1 << 16) -> AsyncIterator[bytes]:
        ids = list(image_ids)
        for image_id in ids:
            if image_id not in self._images:
                raise EngineError(f"No such image: {image_id}")
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            manifest = []
            written: set[str] = set()
            for image_id in ids:
                image = self._images[image_id]
                config_name = _sha(image.config)[7:] + ".json"
                _add(tar, config_name, image.config)
                layer_names = []
                for layer in image.layers:
                    name = _sha(layer)[7:] + "/layer.tar"
                    if name not in written:
                        _add(tar, name, layer)
                        written.add(name)
                    layer_names.append(name)
                entry: dict[str, Any] = {"Config": config_name, "RepoTags": None, "Layers": layer_names}
                if image.parent and image.parent in ids:
                    entry["Parent"] = image.parent
                manifest.append(entry)
            _add(tar, "manifest.json", json.dumps(manifest).encode())
        data = buffer.getvalue()
        for offset in range(0, len(data), chunk_size):
            await asyncio.sleep(0)
            yield data[offset : offset + chunk_size]

    async def load(self, chunks: AsyncIterator[bytes]) -> LoadResult:
        data = bytearray()
        async for chunk in chunks:
            data += chunk
        try:
            with tarfile.open(fileobj=io.BytesIO(bytes(data)), mode="r:") as tar:
                files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
        except (tarfile.TarError, EOFError) as exc:
            raise EngineError(f"Error processing tar file: unexpected EOF ({exc})") from None
        if "manifest.json" not in files:
            raise EngineError("open manifest.json: no such file or directory")
        staged: list[tuple[_Image, list[str]]] = []
        for entry in json.loads(files["manifest.json"]):
            config = files.get(entry["Config"])
            if config is None:
                raise EngineError(f"missing config {entry['Config']}")
            diff_ids = json.loads(config)["rootfs"]["diff_ids"]
            layers = []
            for index, name in enumerate(entry["Layers"]):
                # Like a graph driver, a layer whose chain is already here needs no file.
                layer = files.get(name) or self._held_layer(diff_ids[: index + 1])
                if layer is None or index >= len(diff_ids) or _sha(layer) != diff_ids[index]:
                    raise EngineError(f"invalid diffID for layer {index}")
                layers.append(layer)
            staged.append(
                (_Image(config, layers, entry.get("Parent", "")), list(entry.get("RepoTags") or ()))
            )
        loaded = []
        for image, tags in staged:  # all verified: commit, as the real engine does per image
            self._images.setdefault(image.id, image)
            loaded.append(image.id)
            self._emit("load", image.id)
            for tag in tags:
                self._retag(image.id, tag)
        return LoadResult(tuple(loaded))

    def _held_layer(self, prefix: list[str]) -> bytes | None:
        for image in self._images.values():
            held = [_sha(layer) for layer in image.layers[: len(prefix)]]
            if held == prefix:
                return image.layers[len(prefix) - 1]
        return None

    async def tag(self, image_id: str, ref: str) -> None:
        if image_id not in self._images:
            raise EngineError(f"No such image: {image_id}")
        repo, tag = split_ref(ref)
        self._retag(image_id, f"{repo}:{tag}")

    async def remove(self, image_id: str) -> None:
        image = self._images.get(image_id)
        if image is None:
            raise EngineError(f"No such image: {image_id}")
        if image.tags:
            raise EngineError("conflict: image is tagged")
        if any(other.parent == image_id for other in self._images.values()):
            raise EngineError("conflict: image has dependent child images")
        del self._images[image_id]
        self._emit("delete", image_id)

    async def delete(self, ref_or_id: str) -> None:
        """Test helper: `docker rmi` (untag and delete)."""
        for image in list(self._images.values()):
            if ref_or_id == image.id or ref_or_id in image.tags:
                for tag in list(image.tags):
                    image.tags.discard(tag)
                    self._emit("untag", image.id)
                await self.remove(image.id)
                return
        raise EngineError(f"No such image: {ref_or_id}")

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._subscribers.append(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._subscribers.remove(queue)

    async def close(self) -> None:
        pass


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))

"""The Docker adapter while the containerd image store is mid-write or mid-removal: it lists an
image, tag and all, whose inspect answers with an empty detail (no config fields, no layers). Seen
on Engine 28.5 by listing and inspecting while images were loaded and removed; the soak found the
tag on that "image" as a mismatch. The node must not see an image there until the store settles.
The Engine API is a stub: when a real store answers so is a matter of timing."""

from __future__ import annotations

from typing import Any

from mesh.engine.base import image_key
from mesh.engine.docker_api import DockerEngine

LAYERS = ["sha256:" + "1" * 64]
CREATED = "2026-12-07T03:39:40.123456789Z"
KEY = image_key(CREATED, "amd64", "linux", LAYERS)
NATIVE = "sha256:" + "a" * 64
SETTLING = {"Created": None, "Architecture": "", "Os": "", "RootFS": {}}  # what 28.5 answered
SETTLED = {"Created": CREATED, "Architecture": "amd64", "Os": "linux", "RootFS": {"Layers": LAYERS}}


class SettlingAPI:
    def __init__(self, settling_answers: int) -> None:
        self.settling_answers = settling_answers

    def images(self, all: bool = False) -> list[dict[str, Any]]:
        return [{"Id": NATIVE, "RepoTags": ["soak/b24:1"], "Size": 10, "Created": 1}]

    def inspect_image(self, ref: str) -> dict[str, Any]:
        if self.settling_answers:
            self.settling_answers -= 1
            return dict(SETTLING)
        return dict(SETTLED)


async def test_an_image_the_store_answers_for_with_an_empty_detail_is_not_listed_until_it_settles():
    engine = DockerEngine("unix:///nonexistent.sock")
    engine._client = SettlingAPI(settling_answers=2)  # type: ignore[assignment]
    assert await engine.images() == []
    assert await engine.images() == []
    (image,) = await engine.images()
    assert (image.meta.id, image.tags) == (KEY, ("soak/b24:1",))
    assert image_key("", "", "", []) != KEY  # what the node would have seen: the key of nothing

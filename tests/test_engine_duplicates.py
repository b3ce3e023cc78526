"""The Docker adapter when the containerd image store holds one image under two engine IDs (two
manifests of the same config): the node must see one image, always the same one, carrying every
tag, or it tags it again on every round (the soak found 122 tag moves of one image on one node).
The Engine API is a stub here: which of the two a real store lists first is not ours to choose."""

from __future__ import annotations

from typing import Any

from mesh.engine.base import image_key
from mesh.engine.docker_api import DockerEngine

LAYERS = ["sha256:" + "1" * 64, "sha256:" + "2" * 64]
CREATED = "2026-12-06T23:19:15.123456789Z"
KEY = image_key(CREATED, "amd64", "linux", LAYERS)
TAGGED, BARE = "sha256:" + "a" * 64, "sha256:" + "b" * 64  # manifest digests of the same image


class StubAPI:
    """docker.APIClient's calls the adapter makes, over a store where the tag sits on one of two
    manifests of one image; the listing's order flips on every call, as nothing promises it."""

    def __init__(self) -> None:
        self.tags = {TAGGED: ["soak/b1:1"], BARE: []}
        self.calls = 0
        self.tagged: list[str] = []
        self.removed: list[str] = []

    def images(self, all: bool = False) -> list[dict[str, Any]]:
        self.calls += 1
        ids = [i for i in (TAGGED, BARE) if i not in self.removed]
        if self.calls % 2:
            ids.reverse()
        return [
            {"Id": i, "RepoTags": self.tags[i] or ["<none>:<none>"], "Size": 10, "Created": 1} for i in ids
        ]

    def inspect_image(self, ref: str) -> dict[str, Any]:
        return {"Created": CREATED, "Architecture": "amd64", "Os": "linux", "RootFS": {"Layers": LAYERS}}

    def tag(self, native: str, repo: str, tag: str, force: bool = False) -> None:
        self.tagged.append(native)
        for tags in self.tags.values():
            tags[:] = [t for t in tags if t != f"{repo}:{tag}"]  # a name is on one image
        self.tags[native].append(f"{repo}:{tag}")

    def remove_image(self, native: str, noprune: bool = False) -> None:
        self.removed.append(native)


def engine_over(api: StubAPI) -> DockerEngine:
    engine = DockerEngine("unix:///nonexistent.sock")
    engine._client = api  # type: ignore[assignment]
    return engine


async def test_one_image_under_two_ids_is_listed_once_with_its_tag_every_time():
    api = StubAPI()
    engine = engine_over(api)
    for _ in range(4):
        listed = await engine.images()
        assert [(i.meta.id, i.tags, i.native) for i in listed] == [(KEY, ("soak/b1:1",), TAGGED)]


async def test_tagging_it_goes_to_the_listed_one_so_the_tag_stays_put():
    api = StubAPI()
    engine = engine_over(api)
    for _ in range(4):
        (image,) = await engine.images()
        await engine.tag(KEY, "soak/b1:1")
        assert api.tags[TAGGED] == ["soak/b1:1"] and image.tags == ("soak/b1:1",)
    assert set(api.tagged) == {TAGGED}


async def test_removing_it_removes_both_ids():
    api = StubAPI()
    engine = engine_over(api)
    await engine.images()
    await engine.remove(KEY)
    assert sorted(api.removed) == sorted([TAGGED, BARE])
    assert await engine.images() == []

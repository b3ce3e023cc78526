"""Tag rollbacks: when a tag was moved to an older image on purpose. Pure.

Every tag resolves to the image with the latest claim in the mesh (mesh.protocol.planner). A claim's
time is normally the image's creation time, so a tag moved to an OLDER image (`docker tag app:41
app:latest` after app:42) would be moved back to the newest by the mesh. A node that sees such a
move in its engine records a tag set: the tag, the image it now points at, and the wall-clock time
of the move (Unix milliseconds). A set claims its tag at that time instead of the image's creation,
so the rollback wins, on every node and on its origin, until a later move (a newer build tagged,
or another set) beats it.

A set counts only while the node that announces it still tags that image with that tag: a set is
dropped as soon as its tag points at anything else here (or its image goes). A node whose tag the
mesh moved because of a set adopts the set (same image, same time) and announces it too, so a
rollback outlives its origin (build hosts come and go) and the time it claims never changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mesh.protocol.wire import Tags

MAX_TAGSETS = 16
"""Sets a node keeps and announces, the most recent: rollbacks are rare, and each costs a status
item (mesh.protocol.nodestatus) in every node's manifest."""


@dataclass(frozen=True, slots=True)
class TagSet:
    image: str
    at: int
    """When the tag was set, Unix milliseconds (wall clock)."""


def created_ms(created: int) -> int:
    """An image's creation time (Unix seconds) on the scale of a set's time."""
    return created * 1000


def tag_map(images: Mapping[str, Tags]) -> dict[str, str]:
    """tag -> the image carrying it (an engine gives each tag to one image)."""
    return {tag: image for image, tags in sorted(images.items()) for tag in tags}


def valid(sets: Mapping[str, TagSet], manifest: Mapping[str, Tags]) -> dict[str, TagSet]:
    """The sets a node announces that still hold: the node tags that image with that tag."""
    return {tag: s for tag, s in sets.items() if tag in manifest.get(s.image, ())}


def update(
    *,
    previous: Mapping[str, tuple[str, int]],
    current: Mapping[str, tuple[str, int]],
    known: Mapping[str, TagSet],
    winning: Mapping[str, TagSet],
    now_ms: int,
) -> dict[str, TagSet]:
    """This node's sets after a scan of its engine.

    previous, current: tag -> (image, its creation in Unix seconds) at the last scan and now.
    known: this node's sets so far. winning: tag -> the set that decided the tag's image in the
    last plan (the mesh moved, or pulled, the tag because of it).

    A tag that still points at its set's image keeps the set. One the mesh gave the winning set's
    image adopts that set. One that moved to an image older than the claim it left (an operator's
    rollback, a move back forward past a rollback, a build just after one) gets a new set at
    `now_ms`, or one millisecond past the claim it left if this clock is behind it. Anything else
    has none."""
    out: dict[str, TagSet] = {}
    for tag, (image, _) in current.items():
        mine, won = known.get(tag), winning.get(tag)
        if mine is not None and mine.image == image:
            out[tag] = mine
        elif won is not None and won.image == image:
            out[tag] = won
        elif tag in previous and previous[tag][0] != image:
            left, left_created = previous[tag]
            left_claim = mine.at if mine is not None and mine.image == left else created_ms(left_created)
            if created_ms(current[tag][1]) < left_claim:
                # Past the claim it left even if this clock is behind: a move here always takes.
                out[tag] = TagSet(image, max(now_ms, left_claim + 1))
    newest = sorted(out.items(), key=lambda item: (item[1].at, item[0]), reverse=True)[:MAX_TAGSETS]
    return dict(sorted(newest))

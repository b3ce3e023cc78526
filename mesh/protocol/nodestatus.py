"""A node's transfer status in the manifest gossip: zone, load figure, images it relays. Pure.

Source choice (mesh.protocol.sources) needs three small facts about every peer: its zone, how
many uploads it carries (in flight plus queued), and which images it is receiving and relays as
they arrive. Rather than a new message type (which nodes of the same protocol version that
predate it would reject, dropping the whole envelope), each node announces them as one entry of
its own manifest, the way registry content rides it (mesh/protocol/oci.py):

    ID   sha256 over a salt and the node ID (never an image ID or a registry key)
    tags ("oci node-status", "oci zone <zone>", "oci load <n>", "oci recv <image> <store>" or
          "oci recv <image> <store> <have>", ...,
          "oci tagset <tag> <image> <unix ms>", ...)

A relay whose stream leaves out the image's first layers (a delta: its pull asked with `have`
> 0, mesh/protocol/sources.py rule 3) announces `oci recv <image> <store> <have>`; a full stream
keeps the two-word form. Every parser before `have` checks the store word against STORES and
skips the item when it is `"<store> <have>"`, so an older node never takes a delta relay for a
full one, and never takes "graph 3" for a store: it just does not see that relay.

`tagset` items are the node's tag sets (mesh.protocol.tagsets: tags it moved to an older image on
purpose, or adopted from such a move), at most MAX_TAGSETS of them; a node from before them skips
them as unknown items.

The first tag starts with the registry prefix but is no manifest digest, so a node from before
this entry skips it as malformed registry content; current nodes take it out of every holdings
view (MeshView.holdings) and read it with `parse`. Its metadata is a fixed empty `ImageMeta`,
sent once like any other. Changes (an upload starts or ends, a pull starts or ends) are
announced at most every 0.5 s (mesh/node/node.py), each as one manifest version and one rumour.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from mesh.protocol.tagsets import MAX_TAGSETS, TagSet
from mesh.protocol.wire import MAX_NAME, MAX_TAGS, ImageMeta, Tags

MARK = "oci node-status"
KEY_SALT = b"cachemesh/node-status\0"
MAX_RECEIVING = MAX_TAGS - 3 - MAX_TAGSETS  # one slot each for the mark, the zone and the load
STORES = ("graph", "containerd", "blob")  # "blob": registry content being fetched (by digest)
MAX_HAVE = 1000  # a `have` beyond this is garbage (mesh.net.server.MAX_LAYERS bounds requests alike)


@dataclass(frozen=True, slots=True)
class NodeStatus:
    zone: str = ""
    uploads: int = 0
    """Uploads in flight plus queued: the load figure source choice weighs."""
    receiving: Mapping[str, str] = field(default_factory=dict)
    """image -> store of the stream this node is receiving and relays as it arrives; or
    registry digest -> "blob" for content it is fetching and relays as it arrives."""
    tagsets: Mapping[str, TagSet] = field(default_factory=dict)
    """tag -> the image this node set it to on purpose, and when (mesh.protocol.tagsets)."""
    relay_have: Mapping[str, int] = field(default_factory=dict)
    """image -> the leading layers its relayed stream leaves out, for images in `receiving`
    whose stream is a delta; absent (or 0): a full stream. It serves requesters holding at
    least that many (mesh.protocol.sources.covers)."""


def status_key(node_id: str) -> str:
    return "sha256:" + hashlib.sha256(KEY_SALT + node_id.encode()).hexdigest()


def status_meta(node_id: str) -> ImageMeta:
    return ImageMeta(status_key(node_id), "", (), 0, 0)


def announce(status: NodeStatus) -> Tags:
    receiving = sorted(
        f"oci recv {image} {store}" + (f" {have}" if (have := status.relay_have.get(image, 0)) else "")
        for image, store in status.receiving.items()
    )
    newest = sorted(status.tagsets.items(), key=lambda item: (item[1].at, item[0]), reverse=True)
    items = [f"oci tagset {tag} {s.image} {s.at}" for tag, s in newest]
    sets = sorted([item for item in items if len(item) <= MAX_NAME][:MAX_TAGSETS])  # too long: left out
    return (MARK, f"oci zone {status.zone}", f"oci load {status.uploads}", *receiving[:MAX_RECEIVING], *sets)


def is_status_entry(tags: Tags | None) -> bool:
    return bool(tags) and tags[0] == MARK  # type: ignore[index]


def parse(tags: Tags | None) -> NodeStatus | None:
    """The status in an entry's tags; None if it is not one. Malformed items (a newer peer's
    extension, or garbage) are skipped, never fatal."""
    if not is_status_entry(tags):
        return None
    assert tags is not None
    zone, uploads, receiving, tagsets, relay_have = "", 0, {}, {}, {}
    for text in tags[1:]:
        kind, _, rest = text.removeprefix("oci ").partition(" ")
        if kind == "zone":
            zone = rest
        elif kind == "load" and rest.isdigit():
            uploads = int(rest)
        elif kind == "recv":
            image, _, rest = rest.partition(" ")
            store, spaced, have = rest.partition(" ")
            if not (image.startswith("sha256:") and len(image) == 71 and store in STORES):
                continue
            if not spaced:
                receiving[image] = store  # a full stream (the only form before `have`)
            elif have.isascii() and have.isdigit() and 0 < int(have) <= MAX_HAVE and store != "blob":
                receiving[image], relay_have[image] = store, int(have)
        elif kind == "tagset":
            tag, _, rest = rest.partition(" ")
            image, _, at = rest.partition(" ")
            if tag and image.startswith("sha256:") and len(image) == 71 and at.isdigit():
                tagsets[tag] = TagSet(image, int(at))
    return NodeStatus(zone, uploads, receiving, tagsets, relay_have)

"""The HTTP contract of the peer API: what the client sends and the server answers, in one place.

Both halves import it, so a path, a header or the error format cannot drift between them.
docs/protocol.md describes the same contract for people; the signing headers are in auth.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import msgpack

GOSSIP_PATH = "/v1/gossip"
SAVE_PATH = "/v1/save"
UNKNOWN_PATHS = "/v1/{tail:.*}"  # anything else under /v1/ is a 404 with an error body
CHAIN_HEADER = "X-Cachemesh-Chain"  # on a save stream: the image's chain, child first, comma-separated
RELAY_HEADER = "X-Cachemesh-Relay"  # on a 503 hand-off: the node ID of the relay to ask instead
# On a save stream: N, every layer file the stream leaves out is among the image's first N (0: a
# full stream). A receiver that relays the stream serves it to requesters holding at least N
# (mesh.protocol.sources.covers); from a sender before it, the receiver assumes its own `have`.
HAVE_HEADER = "X-Cachemesh-Have"
MSGPACK = "application/msgpack"  # gossip bodies, save requests and every error body
TAR = "application/x-tar"  # save streams
SAVE_REQUEST_MAX = 4096  # a save request is {"image": "sha256:..."}: anything longer is refused (413)
CONTENT_PATH = "/v1/content"  # registry content by digest, from an offset (docs/registry.md)
SIZE_HEADER = "X-Cachemesh-Size"  # on content: the whole blob's size
MEDIA_TYPE_HEADER = "X-Cachemesh-Media-Type"  # on content: a manifest's media type, "" for a blob
OCTET_STREAM = "application/octet-stream"  # content bodies


def peer_url(addr: str, path: str) -> str:
    return f"http://{addr}{path}"


@dataclass(frozen=True)
class SaveRequest:
    """A `POST /v1/save` body, checked: the image, the requester's held layer count and image
    store, whether it will relay the stream (spool it and serve it as it arrives, to requesters
    holding at least `have` layers), whether the server may hand it on to a relay instead of
    serving it, and how many hand-offs the requester has followed in this attempt
    (mesh.protocol.sources.relay_to)."""

    image: str
    requester: str
    have: int = 0
    store: str = "graph"
    relay: bool = False
    handoff: bool = False
    hops: int = 0


@dataclass
class SaveStream:
    """A `docker save` stream of an image and its parent chain (child first): what a peer serves
    and what the client receives."""

    chain: list[str]
    chunks: AsyncIterator[bytes]
    have: int | None = None
    """Every layer file the stream leaves out is among the image's first `have` (HAVE_HEADER);
    None: not said (a sender from before it)."""


@dataclass
class ContentStream:
    """Registry content by digest from `offset` on: what a peer serves and what the client receives.
    `size` is the whole blob's; `media_type` is set for manifests."""

    size: int
    media_type: str
    chunks: AsyncIterator[bytes]
    path: str = ""
    """Where the content is on disk, when it is: the server then sends it with sendfile."""
    read_into: Callable[[memoryview], int] | None = None
    """On the client, blocking, for a worker thread: the next bytes of the body into a buffer, 0
    at its end (mesh.net.bulk). A reader takes either this or `chunks`, not both."""
    abort: Callable[[], None] = lambda: None
    """From any thread: cut the answer, so a blocked `read_into` returns at once."""


def error_body(message: str) -> bytes:
    """The body of every error answer: a msgpack map {"error": reason}."""
    return msgpack.packb({"error": message})  # type: ignore[no-any-return]


def error_text(payload: bytes) -> str:
    """The reason in an error answer, or the start of the body if it is not one of ours."""
    try:
        doc = msgpack.unpackb(payload, raw=False)
        if isinstance(doc, dict) and "error" in doc:
            return str(doc["error"])
    except Exception:
        pass
    return payload[:200].decode(errors="replace")

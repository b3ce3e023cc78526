"""The peer wire format: msgpack messages, one dataclass each. This file is a contract.

An envelope is `[protocol_version, sender_id, sender_addr, [message, ...], incarnation]`; a message is
`[type, field, field, ...]` with positional fields. Rules that keep old and new nodes talking:

- `MsgType` is append-only. A new kind of message gets a new number; numbers are never reused.
- Fields are only ever appended. A decoder ignores trailing fields it does not know.
- Unknown message types are rejected with a clear error (the sender is newer than this node).
- Every decode is capped: total size (checked by the caller before reading), string lengths,
  list lengths, and digest shapes. Bad input raises `WireError`, never anything else.

Protocol versions (`PROTOCOL_VERSION`; docs/protocol.md, "Version history", has the details):
  1 - first version: SWIM membership, manifest rumours, digest push-pull, content-addressed metas;
      message types 1 (PING) to 13 (METAS), all of `MsgType` to this day.
  2 - images are named by their mesh key (mesh.engine.base.image_key), not the engine's ID, and
      `/v1/save` takes the receiver's held layer count and store. No message type or field added.
  3 - envelopes that fit travel as sealed UDP datagrams (mesh.protocol.datagram); a version 2 node
      would never hear them, so the two refuse each other's gossip by version. No message type or
      field added.

Image digests travel as 32 raw bytes and are "sha256:<hex>" strings in Python.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar, TypeAlias, TypeGuard

import msgpack

PROTOCOL_VERSION = 3
"""The first field of every envelope; a peer speaking another version is refused (the history is
in the module docstring)."""

MAX_NAME = 256  # node IDs, names, addresses, tags
MAX_TAGS = 64  # per image
MAX_LAYERS = 1024  # per image; the engine itself caps at 127
MAX_ITEMS = 100_000  # entries of any one list


class WireError(ValueError):
    """Malformed or unsupported input from a peer."""


class MsgType(IntEnum):
    PING = 1
    ACK = 2
    PING_REQ = 3
    ALIVE = 4
    SUSPECT = 5
    DEAD = 6
    MANIFEST_UPDATE = 7
    SYNC_DIGEST = 8
    SYNC_SUMMARY = 9
    SYNC_WANT = 10
    MANIFEST_DELTA = 11
    META_WANT = 12
    METAS = 13


# --- field checks ---------------------------------------------------------------------------


def _int(value: Any, what: str) -> int:
    if type(value) is not int or value < 0 or value >= 1 << 64:
        raise WireError(f"{what}: expected an unsigned integer")
    return value


def _bool(value: Any, what: str) -> bool:
    if type(value) is not bool:
        raise WireError(f"{what}: expected a boolean")
    return value


def _str(value: Any, what: str, limit: int = MAX_NAME) -> str:
    if type(value) is not str or len(value) > limit:
        raise WireError(f"{what}: expected a string of at most {limit} characters")
    return value


def _list(value: Any, what: str, limit: int = MAX_ITEMS) -> list[Any]:
    if type(value) is not list or len(value) > limit:
        raise WireError(f"{what}: expected a list of at most {limit} items")
    return value


def _fields(value: Any, what: str, count: int) -> list[Any]:
    if type(value) is not list or len(value) < count:
        raise WireError(f"{what}: expected at least {count} fields")
    return value


SHA256_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
"""A digest as it is held in Python (images, registry content): `sha256:` and 64 lowercase hex digits."""


def is_sha256(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and SHA256_DIGEST.fullmatch(value) is not None


def digest_to_wire(digest: str) -> bytes:
    return bytes.fromhex(digest[7:])


def digest_from_wire(value: Any, what: str) -> str:
    if type(value) is not bytes or len(value) != 32:
        raise WireError(f"{what}: expected a 32-byte sha256 digest")
    return "sha256:" + value.hex()


# --- image descriptions ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImageMeta:
    """What an image is, by content. Immutable for a given ID, so it is sent once per node.

    `parent` is the engine's parent image (classic-builder chain), "" when there is none.
    `layers` are the diff IDs of the image's rootfs, in order.
    """

    id: str
    parent: str
    layers: tuple[str, ...]
    size: int
    created: int

    def to_wire(self) -> list[Any]:
        return [
            digest_to_wire(self.id),
            digest_to_wire(self.parent) if self.parent else b"",
            [digest_to_wire(layer) for layer in self.layers],
            self.size,
            self.created,
        ]

    @classmethod
    def from_wire(cls, items: Any) -> ImageMeta:
        f = _fields(items, "image meta", 5)
        parent = f[1]
        return cls(
            id=digest_from_wire(f[0], "image meta id"),
            parent="" if parent == b"" else digest_from_wire(parent, "image meta parent"),
            layers=tuple(digest_from_wire(x, "layer") for x in _list(f[2], "layers", MAX_LAYERS)),
            size=_int(f[3], "image size"),
            created=_int(f[4], "image created"),
        )


Tags: TypeAlias = tuple[str, ...]


SIGNATURE_BYTES = 64
"""An Ed25519 signature (mesh.net.trust_keys), the most an entry's `sig` field may carry."""
BAD_SIGNATURE = b"\0"
"""What an entry's `sig` field that is not bytes becomes: a signature that never verifies."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One image in one node's manifest. `tags` is None for a tombstone (the image was removed).
    `stamp` is the origin's manifest version when this entry last changed.

    `sig` (appended field, protocol 3): the origin's trust-key signature over the entry
    (mesh.net.trust_keys.claim_bytes), b"" when unsigned. Unsigned entries encode as before, so
    a fleet without a trust key sends the same bytes as older nodes; an older node ignores the
    field, and relays the entry without it. A malformed one is kept as it came, and refused by
    the trust check (mesh.protocol.trust), not by the decoder: one bad entry must not cost the
    whole envelope."""

    image: str
    tags: Tags | None
    stamp: int
    sig: bytes = b""

    def to_wire(self) -> list[Any]:
        wire = [digest_to_wire(self.image), None if self.tags is None else list(self.tags), self.stamp]
        if self.sig:
            wire.append(self.sig)
        return wire

    @classmethod
    def from_wire(cls, items: Any) -> Entry:
        f = _fields(items, "manifest entry", 3)
        tags = None if f[1] is None else tuple(_str(t, "tag") for t in _list(f[1], "tags", MAX_TAGS))
        sig = b"" if len(f) <= 3 else f[3] if type(f[3]) is bytes and f[3] else BAD_SIGNATURE
        return cls(digest_from_wire(f[0], "entry image"), tags, _int(f[2], "entry stamp"), sig)


def _entries(value: Any) -> tuple[Entry, ...]:
    return tuple(Entry.from_wire(x) for x in _list(value, "entries"))


# --- messages ---------------------------------------------------------------------------------


class _Packable:
    """Packs once: a rumour is sent a dozen times and a manifest delta to many peers, and an
    envelope is assembled from its messages' cached bytes (a msgpack array is a header followed by
    its items, so no re-encoding is needed)."""

    __slots__ = ("_packed",)
    _packed: bytes

    def packed(self) -> bytes:
        try:
            return self._packed
        except AttributeError:
            data: bytes = msgpack.packb(message_to_wire(self), use_bin_type=True)  # type: ignore[arg-type]
            object.__setattr__(self, "_packed", data)
            return data


@dataclass(frozen=True, slots=True)
class Ping(_Packable):
    """SWIM probe. `target` is the node ID the sender believes answers at this address."""

    TYPE: ClassVar[MsgType] = MsgType.PING
    seq: int
    target: str

    def fields(self) -> list[Any]:
        return [self.seq, self.target]

    @classmethod
    def parse(cls, f: list[Any]) -> Ping:
        return cls(_int(f[0], "ping seq"), _str(f[1], "ping target"))


@dataclass(frozen=True, slots=True)
class Ack(_Packable):
    TYPE: ClassVar[MsgType] = MsgType.ACK
    seq: int

    def fields(self) -> list[Any]:
        return [self.seq]

    @classmethod
    def parse(cls, f: list[Any]) -> Ack:
        return cls(_int(f[0], "ack seq"))


@dataclass(frozen=True, slots=True)
class PingReq(_Packable):
    """Ask the receiver to probe `target` and forward the ack (SWIM indirect probe)."""

    TYPE: ClassVar[MsgType] = MsgType.PING_REQ
    seq: int
    target: str
    target_addr: str

    def fields(self) -> list[Any]:
        return [self.seq, self.target, self.target_addr]

    @classmethod
    def parse(cls, f: list[Any]) -> PingReq:
        return cls(_int(f[0], "ping-req seq"), _str(f[1], "ping-req target"), _str(f[2], "ping-req addr"))


@dataclass(frozen=True, slots=True)
class Alive(_Packable):
    TYPE: ClassVar[MsgType] = MsgType.ALIVE
    node: str
    name: str
    addr: str
    incarnation: int

    def fields(self) -> list[Any]:
        return [self.node, self.name, self.addr, self.incarnation]

    @classmethod
    def parse(cls, f: list[Any]) -> Alive:
        return cls(
            _str(f[0], "alive node"),
            _str(f[1], "alive name"),
            _str(f[2], "alive addr"),
            _int(f[3], "alive incarnation"),
        )


@dataclass(frozen=True, slots=True)
class Suspect(_Packable):
    TYPE: ClassVar[MsgType] = MsgType.SUSPECT
    node: str
    incarnation: int
    by: str

    def fields(self) -> list[Any]:
        return [self.node, self.incarnation, self.by]

    @classmethod
    def parse(cls, f: list[Any]) -> Suspect:
        return cls(_str(f[0], "suspect node"), _int(f[1], "suspect incarnation"), _str(f[2], "suspect by"))


@dataclass(frozen=True, slots=True)
class Dead(_Packable):
    """A node is dead; `by == node` means it left gracefully."""

    TYPE: ClassVar[MsgType] = MsgType.DEAD
    node: str
    incarnation: int
    by: str

    def fields(self) -> list[Any]:
        return [self.node, self.incarnation, self.by]

    @classmethod
    def parse(cls, f: list[Any]) -> Dead:
        return cls(_str(f[0], "dead node"), _int(f[1], "dead incarnation"), _str(f[2], "dead by"))


@dataclass(frozen=True, slots=True)
class ManifestUpdate(_Packable):
    """Rumour: the origin `node` moved its manifest from version `prev` to `version` by `changes`."""

    TYPE: ClassVar[MsgType] = MsgType.MANIFEST_UPDATE
    node: str
    prev: int
    version: int
    changes: tuple[Entry, ...]

    def fields(self) -> list[Any]:
        return [self.node, self.prev, self.version, [e.to_wire() for e in self.changes]]

    @classmethod
    def parse(cls, f: list[Any]) -> ManifestUpdate:
        return cls(
            _str(f[0], "update node"),
            _int(f[1], "update prev"),
            _int(f[2], "update version"),
            _entries(f[3]),
        )


DIGEST_BUCKETS = 64


@dataclass(frozen=True, slots=True)
class SyncDigest(_Packable):
    """Push-pull opener: one 64-bit hash per bucket of the sender's view of live members."""

    TYPE: ClassVar[MsgType] = MsgType.SYNC_DIGEST
    buckets: tuple[int, ...]

    def fields(self) -> list[Any]:
        return [list(self.buckets)]

    @classmethod
    def parse(cls, f: list[Any]) -> SyncDigest:
        buckets = _list(f[0], "digest buckets", DIGEST_BUCKETS)
        if len(buckets) != DIGEST_BUCKETS:
            raise WireError(f"digest: expected {DIGEST_BUCKETS} buckets")
        return cls(tuple(_int(b, "digest bucket") for b in buckets))


class _WireCached:
    """Builds its wire list once (a summary entry is reused across many summaries)."""

    __slots__ = ("_wire",)
    _wire: list[Any]


@dataclass(frozen=True, slots=True)
class SummaryEntry(_WireCached):
    """The sender's view of one member: identity, liveness and how far it knows its manifest."""

    node: str
    name: str
    addr: str
    incarnation: int
    state: int
    mversion: int

    def to_wire(self) -> list[Any]:
        try:
            return self._wire
        except AttributeError:
            wire = [self.node, self.name, self.addr, self.incarnation, self.state, self.mversion]
            object.__setattr__(self, "_wire", wire)
            return wire

    @classmethod
    def from_wire(cls, items: Any) -> SummaryEntry:
        f = _fields(items, "summary entry", 6)
        state = _int(f[4], "summary state")
        if state > 3:
            raise WireError("summary state: unknown member state")
        return cls(
            _str(f[0], "summary node"),
            _str(f[1], "summary name"),
            _str(f[2], "summary addr"),
            _int(f[3], "summary incarnation"),
            state,
            _int(f[5], "summary mversion"),
        )


@dataclass(frozen=True, slots=True)
class SyncSummary(_Packable):
    """The members in the buckets whose digests differed. `reply` asks for the receiver's own."""

    TYPE: ClassVar[MsgType] = MsgType.SYNC_SUMMARY
    buckets: tuple[int, ...]
    entries: tuple[SummaryEntry, ...]
    reply: bool

    def fields(self) -> list[Any]:
        return [list(self.buckets), [e.to_wire() for e in self.entries], self.reply]

    @classmethod
    def parse(cls, f: list[Any]) -> SyncSummary:
        buckets = tuple(_int(b, "summary bucket") for b in _list(f[0], "summary buckets", DIGEST_BUCKETS))
        if any(b >= DIGEST_BUCKETS for b in buckets):
            raise WireError("summary: bucket out of range")
        return cls(
            buckets,
            tuple(SummaryEntry.from_wire(e) for e in _list(f[1], "summary entries")),
            _bool(f[2], "summary reply"),
        )


@dataclass(frozen=True, slots=True)
class SyncWant(_Packable):
    """Ask for manifest changes: (node, known version) pairs."""

    TYPE: ClassVar[MsgType] = MsgType.SYNC_WANT
    wants: tuple[tuple[str, int], ...]

    def fields(self) -> list[Any]:
        return [[[node, since] for node, since in self.wants]]

    @classmethod
    def parse(cls, f: list[Any]) -> SyncWant:
        wants = []
        for item in _list(f[0], "wants"):
            pair = _fields(item, "want", 2)
            wants.append((_str(pair[0], "want node"), _int(pair[1], "want since")))
        return cls(tuple(wants))


@dataclass(frozen=True, slots=True)
class ManifestDelta(_Packable):
    """Everything in `node`'s manifest that changed after `since`, up to `version`.

    `full` replaces the receiver's copy (asked-for history was compacted away); `floor` is the
    sender's compaction point for that manifest.
    """

    TYPE: ClassVar[MsgType] = MsgType.MANIFEST_DELTA
    node: str
    since: int
    version: int
    full: bool
    floor: int
    entries: tuple[Entry, ...]

    def fields(self) -> list[Any]:
        return [
            self.node,
            self.since,
            self.version,
            self.full,
            self.floor,
            [e.to_wire() for e in self.entries],
        ]

    @classmethod
    def parse(cls, f: list[Any]) -> ManifestDelta:
        return cls(
            _str(f[0], "delta node"),
            _int(f[1], "delta since"),
            _int(f[2], "delta version"),
            _bool(f[3], "delta full"),
            _int(f[4], "delta floor"),
            _entries(f[5]),
        )


@dataclass(frozen=True, slots=True)
class MetaWant(_Packable):
    TYPE: ClassVar[MsgType] = MsgType.META_WANT
    images: tuple[str, ...]

    def fields(self) -> list[Any]:
        return [[digest_to_wire(i) for i in self.images]]

    @classmethod
    def parse(cls, f: list[Any]) -> MetaWant:
        return cls(tuple(digest_from_wire(x, "meta-want image") for x in _list(f[0], "meta-want")))


@dataclass(frozen=True, slots=True)
class Metas(_Packable):
    TYPE: ClassVar[MsgType] = MsgType.METAS
    metas: tuple[ImageMeta, ...]

    def fields(self) -> list[Any]:
        return [[m.to_wire() for m in self.metas]]

    @classmethod
    def parse(cls, f: list[Any]) -> Metas:
        return cls(tuple(ImageMeta.from_wire(x) for x in _list(f[0], "metas")))


Message: TypeAlias = (
    Ping
    | Ack
    | PingReq
    | Alive
    | Suspect
    | Dead
    | ManifestUpdate
    | SyncDigest
    | SyncSummary
    | SyncWant
    | ManifestDelta
    | MetaWant
    | Metas
)

_PARSERS: dict[int, Any] = {
    cls.TYPE: cls
    for cls in (
        Ping,
        Ack,
        PingReq,
        Alive,
        Suspect,
        Dead,
        ManifestUpdate,
        SyncDigest,
        SyncSummary,
        SyncWant,
        ManifestDelta,
        MetaWant,
        Metas,
    )
}
_ARITY: dict[int, int] = {t: len(dataclasses.fields(cls)) for t, cls in _PARSERS.items()}


def message_to_wire(message: Message) -> list[Any]:
    return [int(message.TYPE), *message.fields()]


def message_from_wire(items: Any) -> Message:
    if type(items) is not list or not items:
        raise WireError("message: expected a non-empty list")
    kind = items[0]
    cls = _PARSERS.get(kind) if type(kind) is int else None
    if cls is None:
        raise WireError(f"message: unknown type {kind!r} (peer runs a newer protocol?)")
    fields = items[1:]
    if len(fields) < _ARITY[kind]:
        raise WireError(f"{MsgType(kind).name.lower()}: expected at least {_ARITY[kind]} fields")
    message: Message = cls.parse(fields)
    return message


def encoded_size(message: Message) -> int:
    return len(message.packed())


@dataclass(frozen=True, slots=True)
class Envelope:
    """One peer request or response body: who sent it, where to answer, the messages, and the
    sender's current incarnation (so any direct contact from a suspect doubles as its refutation)."""

    sender: str
    addr: str
    messages: tuple[Message, ...]
    incarnation: int = 0


_PACKER = msgpack.Packer(use_bin_type=True)


def encode(envelope: Envelope) -> bytes:
    pack = _PACKER.pack
    return b"".join(
        (
            _PACKER.pack_array_header(5),
            pack(PROTOCOL_VERSION),
            pack(envelope.sender),
            pack(envelope.addr),
            _PACKER.pack_array_header(len(envelope.messages)),
            *(m.packed() for m in envelope.messages),
            pack(envelope.incarnation),
        )
    )


def decode(data: bytes, *, max_bytes: int) -> Envelope:
    """Parse a body. The caller refuses bodies over max_bytes before reading them; one that gets
    here anyway is refused too."""
    if len(data) > max_bytes:
        raise WireError(f"message of {len(data)} bytes exceeds the {max_bytes}-byte limit")
    try:
        payload = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=MAX_NAME * 4,
            max_bin_len=64,
            max_array_len=MAX_ITEMS,
            max_map_len=0,
            max_ext_len=0,
        )
    except WireError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise WireError(f"not a msgpack envelope: {exc}") from None
    f = _fields(payload, "envelope", 5)
    version = f[0]
    if type(version) is not int:
        raise WireError("envelope: missing protocol version")
    if version != PROTOCOL_VERSION:
        raise WireError(
            f"envelope: protocol version {version} not supported (this node speaks {PROTOCOL_VERSION})"
        )
    messages = tuple(message_from_wire(m) for m in _list(f[3], "messages"))
    return Envelope(
        _str(f[1], "envelope sender"),
        _str(f[2], "envelope addr"),
        messages,
        _int(f[4], "envelope incarnation"),
    )

import re
import tracemalloc

import msgpack
import pytest

from mesh.protocol import wire
from mesh.protocol.wire import (
    Ack,
    Alive,
    Dead,
    Entry,
    Envelope,
    ImageMeta,
    ManifestDelta,
    ManifestUpdate,
    Metas,
    MetaWant,
    MsgType,
    Ping,
    PingReq,
    SummaryEntry,
    Suspect,
    SyncDigest,
    SyncSummary,
    SyncWant,
    WireError,
)

D1 = "sha256:" + "ab" * 32
D2 = "sha256:" + "cd" * 32

EXAMPLES = [
    Ping(7, "node-a"),
    Ack(7),
    PingReq(9, "node-b", "10.0.0.2:7611"),
    Alive("node-a", "host-a", "10.0.0.1:7611", 3),
    Suspect("node-b", 2, "node-a"),
    Dead("node-b", 2, "node-b"),
    ManifestUpdate("node-a", 4, 5, (Entry(D1, ("app:1", "app:latest"), 5), Entry(D2, None, 5))),
    SyncDigest(tuple(range(64))),
    SyncSummary((1, 5), (SummaryEntry("node-a", "host-a", "10.0.0.1:7611", 3, 1, 17),), True),
    SyncWant((("node-a", 4), ("node-b", 0))),
    ManifestDelta("node-a", 4, 9, False, 2, (Entry(D1, ("x:1",), 9),)),
    MetaWant((D1, D2)),
    Metas((ImageMeta(D1, D2, (D1, D2), 1234, 1700000000), ImageMeta(D2, "", (), 0, 0))),
]


def test_every_message_type_round_trips():
    assert {type(m).TYPE for m in EXAMPLES} == set(MsgType)
    envelope = Envelope("node-a", "10.0.0.1:7611", tuple(EXAMPLES), 3)
    decoded = wire.decode(wire.encode(envelope), max_bytes=1 << 20)
    assert decoded == envelope


def test_core_handles_every_wire_type():
    """Each message type, received by a core through its public input, is dispatched (an unknown
    type would raise KeyError from the dispatch table)."""
    from mesh.protocol.core import MeshCore
    from mesh.protocol.timings import Timings

    assert {type(m).TYPE for m in EXAMPLES} == set(MsgType)
    for message in EXAMPLES:
        core = MeshCore(Timings(), "probe", "probe", "10.0.0.9:1", now=0.0)
        core.receive(Envelope("node-a", "10.0.0.1:7611", (message,), 3), 1.0)


def test_trailing_fields_from_newer_peers_are_ignored():
    payload = [
        wire.PROTOCOL_VERSION,
        "n",
        "a:1",
        [[int(MsgType.PING), 5, "t", "a field from the future"]],
        0,
        "future envelope field",
    ]
    envelope = wire.decode(msgpack.packb(payload), max_bytes=1 << 20)
    assert envelope.messages == (Ping(5, "t"),)


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"\xc1", "not a msgpack envelope"),
        (msgpack.packb([wire.PROTOCOL_VERSION, "n"]), "expected at least 5 fields"),
        (msgpack.packb({"a": 1}), "not a msgpack envelope"),
        (msgpack.packb([99, "n", "a", [], 0]), "protocol version 99 not supported"),
        (msgpack.packb([wire.PROTOCOL_VERSION, "n", "a", [[99, 1]], 0]), "unknown type 99"),
        (
            msgpack.packb([wire.PROTOCOL_VERSION, "n", "a", [[1, "seq", "t"]], 0]),
            "ping seq: expected an unsigned integer",
        ),
        (msgpack.packb([wire.PROTOCOL_VERSION, "n", "a", [[1, 5]], 0]), "ping: expected at least 2 fields"),
        (
            msgpack.packb([wire.PROTOCOL_VERSION, "n", "a", [[13, [[b"short", b"", [], 0, 0]]]], 0]),
            "32-byte sha256",
        ),
        (msgpack.packb([wire.PROTOCOL_VERSION, "n", "a", [[8, [1, 2]]], 0]), "expected 64 buckets"),
        (msgpack.packb([wire.PROTOCOL_VERSION, "x" * 300, "a", [], 0]), "envelope sender"),
        (msgpack.packb([wire.PROTOCOL_VERSION, "n", "a", [[2, -1]], 0]), "ack seq"),
        (msgpack.packb([wire.PROTOCOL_VERSION, "n", "a", [[2, True]], 0]), "ack seq"),
    ],
)
def test_malformed_input_is_a_clear_wire_error(payload, message):
    with pytest.raises(WireError, match=message):
        wire.decode(payload, max_bytes=1 << 20)


def test_oversized_body_is_refused():
    with pytest.raises(WireError, match="exceeds the 100-byte limit"):
        wire.decode(b"\x90" * 101, max_bytes=100)


def test_huge_list_header_is_refused_without_allocating():
    # A list header claiming 2**31 items in a tiny body must not make the decoder allocate for them
    # (16 GiB of pointers): the peak while refusing it stays under a megabyte.
    tracemalloc.start()
    try:
        with pytest.raises(WireError):
            wire.decode(b"\x95\x01\xa1n\xa1a\xdd\x7f\xff\xff\xff\x00", max_bytes=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak


def test_the_version_history_names_every_version_and_the_newest_message_type():
    """wire.py's docstring keeps the protocol's history: one line per version up to the current
    one, and the newest message type it names is MsgType's newest."""
    doc = wire.__doc__ or ""
    assert [int(v) for v in re.findall(r"^  (\d+) - ", doc, re.MULTILINE)] == list(
        range(1, wire.PROTOCOL_VERSION + 1)
    )
    newest = max(MsgType)
    assert f"to {int(newest)} ({newest.name})" in doc

"""Gossip datagrams: sealed with the cluster secret, refused when altered, replayed, stale, from
another secret or cluster; and two real nodes gossip through them on loopback UDP."""

from __future__ import annotations

import socket
import time

import pytest

from mesh.hostport import parse_hostport
from mesh.lab.poll import async_wait_until
from mesh.net.datagram import ClockOffDatagram, DatagramError, Sealer
from mesh.node.status import build_status
from mesh.protocol import wire
from mesh.protocol.datagram import MAX_DATAGRAM, OVERHEAD
from mesh.protocol.liveness import State
from tests.inproc import SECRET, start_node

NEW, OLD = b"new-secret-0123456789abcdef", b"old-secret-0123456789abcdef"
NOW = 1_800_000_000.0


def sealer(*secrets: bytes, cluster: str = "default") -> Sealer:
    return Sealer(secrets or (NEW,), cluster, window=120.0)


def test_a_sealed_envelope_opens_with_the_same_secret_and_hides_its_content():
    body = wire.encode(wire.Envelope("node-a", "10.0.0.1:7611", (wire.Ping(7, "node-b"),), 3))
    packet = sealer().seal(body, NOW)
    assert len(packet) == len(body) + OVERHEAD
    assert b"node-a" not in packet and b"10.0.0.1" not in packet
    opened = sealer().open(packet, NOW + 1)
    assert opened.envelope == body and opened.secret == 0


@pytest.mark.parametrize(
    ("mangle", "error"),
    [
        (lambda p: p[:-1] + bytes([p[-1] ^ 1]), "does not open"),
        (lambda p: p[:30] + bytes([p[30] ^ 1]) + p[31:], "does not open"),
        (lambda p: p[:10], "too short"),
        (lambda p: b"GET / HTTP/1.1\r\n" + p, "not a cachemesh gossip datagram"),
        (lambda p: p[:3] + b"\x09" + p[4:], "version 9"),
        (lambda p: p + b"\x00" * MAX_DATAGRAM, "over 1232"),
    ],
    ids=["tag", "ciphertext", "short", "not ours", "version", "oversized"],
)
def test_an_altered_datagram_is_refused(mangle, error):
    packet = sealer().seal(b"gossip", NOW)
    with pytest.raises(DatagramError, match=error):
        sealer().open(mangle(packet), NOW)


def test_another_secret_or_cluster_is_refused():
    with pytest.raises(DatagramError, match="does not hold"):
        sealer(NEW).open(sealer(OLD).seal(b"gossip", NOW), NOW)
    with pytest.raises(DatagramError, match="does not hold"):
        sealer(cluster="other").open(sealer().seal(b"gossip", NOW), NOW)


def test_a_replayed_or_stale_datagram_is_refused():
    receiver = sealer()
    packet = sealer().seal(b"gossip", NOW)
    receiver.open(packet, NOW)
    with pytest.raises(DatagramError, match="replayed"):
        receiver.open(packet, NOW + 5)
    with pytest.raises(DatagramError, match=r"\+300s off"):
        receiver.open(sealer().seal(b"gossip", NOW - 300), NOW)


def test_the_receiver_learns_how_far_the_senders_clock_is_from_its_own():
    packet = sealer().seal(b"hello", 1000.0)
    assert sealer().open(packet, 1040.0).clock_offset == 40.0  # the sender is 40 s behind
    assert sealer().open(packet, 990.0).clock_offset == -10.0
    with pytest.raises(ClockOffDatagram) as refused:  # outside the window: refused, offset kept
        sealer().open(packet, 1400.0)
    assert refused.value.offset == 400.0


def test_during_a_rotation_both_secrets_open_and_the_receiver_knows_which():
    both = sealer(NEW, OLD)
    assert both.open(sealer(OLD).seal(b"x", NOW), NOW).secret == 1
    assert both.open(sealer(NEW).seal(b"x", NOW), NOW).secret == 0
    # A rotating node answers an old-secret peer with the old secret, a new one with the new.
    assert sealer(OLD).open(both.seal(b"x", NOW, secret=1), NOW).secret == 0
    assert sealer(NEW).open(both.seal(b"x", NOW, secret=0), NOW).secret == 0
    with pytest.raises(DatagramError, match="does not hold"):
        sealer(OLD).open(both.seal(b"x", NOW), NOW)


def _count(node, name: str, **labels: str) -> float:
    return node.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_two_nodes_gossip_in_datagrams_and_shrug_off_junk(workdir):
    a = await start_node(workdir, "a")
    b = await start_node(workdir, "b", seeds=(a.peer_addr,))
    try:
        await async_wait_until(
            lambda: (peer := a.core.view.peer(b.node_id)) is not None and peer.state is State.ALIVE,
            10,
            what="a to see b alive",
        )
        received = lambda: _count(a, "cachemesh_gossip_datagrams_total", direction="in")  # noqa: E731
        await async_wait_until(lambda: received() >= 3, 10, what="probes to arrive as datagrams")
        assert a.parts.gossip.secrets.get(b.node_id) == 0
        # One clock here: the offset a measures is the trip alone (doctor's clock check reads it).
        peer_doc = build_status(a.parts.status_facts)["peers"][0]
        assert peer_doc["clock_offset"] is not None and abs(peer_doc["clock_offset"]) < 1.0
        # Junk, an oversized datagram and another cluster's gossip arrive at a's UDP port.
        host, port = parse_hostport(a.peer_addr)
        foreign = Sealer((SECRET,), "other-cluster", 120.0).seal(b"x", time.time())
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for junk in (b"hello", b"\x00" * 2000, foreign):
                sock.sendto(junk, (host, port))
        refused = lambda: _count(a, "cachemesh_gossip_datagrams_refused_total", error="DatagramError")  # noqa: E731
        await async_wait_until(lambda: refused() == 3, 5, what="the junk to be counted as refused")
        before = received()
        await async_wait_until(lambda: received() >= before + 3, 10, what="gossip to go on")
        assert a.core.view.peer(b.node_id).state is State.ALIVE
    finally:
        await b.stop()
        await a.stop()

"""The simulator's per-message overhead is what the real node puts on the wire: sealed datagrams
for what fits, HTTP requests and responses for the rest, and what TLS adds to them (its handshake
bytes are measured in tests/test_tls.py)."""

from mesh.lab.http_overhead import measure, whole_response
from mesh.net import datagram
from mesh.protocol import datagram as layout
from mesh.protocol import wire
from mesh.protocol.timings import Timings
from mesh.sim import wirecost
from mesh.sim.simnet import SimNetwork
from mesh.sim.tls_wirecost import (
    TLS_HANDSHAKE_CLIENT_BYTES,
    TLS_HANDSHAKE_SERVER_BYTES,
    TLS_RECORD_OVERHEAD,
    TLSWireCost,
)

# The Server and User-Agent headers name the aiohttp version: a few bytes either way are not a
# different basis, more are (re-measure with `python -m mesh.lab.http_overhead`).
TOLERANCE = 8


async def test_simulated_http_overhead_matches_the_real_client_and_server():
    measured = await measure()
    assert abs(measured.request_fixed - wirecost.REQUEST_FIXED) <= TOLERANCE, measured
    assert abs(measured.response_fixed - wirecost.RESPONSE_FIXED) <= TOLERANCE, measured
    assert abs(measured.response_empty - wirecost.RESPONSE_EMPTY) <= TOLERANCE, measured


def test_the_measurement_waits_for_the_whole_answer_not_its_first_bytes():
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nX-Cachemesh-Sig: s\r\n\r\nbody"
    assert whole_response(answer)
    assert not any(whole_response(answer[:cut]) for cut in range(len(answer)))
    assert whole_response(b"HTTP/1.1 204 No Content\r\nX-Cachemesh-Sig: s\r\n\r\n")


def test_a_message_costs_its_body_plus_the_framing():
    assert wirecost.request_bytes(55, "10.0.0.1:7611") == 55 + 408 + len("10.0.0.1:7611") + 2
    assert wirecost.reply_bytes(1000) == 1000 + 234 + 4


LAN = Timings.lan()


def test_the_simulated_datagram_is_the_real_sealed_datagram():
    sealer = datagram.Sealer((b"test-secret-0123456789",), "default", 120.0)
    for body in (b"", b"x" * 60, b"y" * 1000):
        assert len(sealer.seal(body, 1.0)) == wirecost.datagram_bytes(len(body))
    assert (layout.OVERHEAD, layout.MAX_DATAGRAM) == (44, 1232)
    assert layout.fits(1188) and not layout.fits(1189)


def test_a_ping_and_its_ack_are_one_datagram_each():
    net = SimNetwork(LAN, seed=1)
    a, b = net.add_node(), net.add_node()
    sent = []
    net.drop_hook = lambda src, dst, envelope: sent.append((src, len(wire.encode(envelope)))) or False
    a.core.out.send(b.addr, wire.Ping(1, b.core.node_id))
    net.kick(a)
    net.run_until(0.9)
    assert [src for src, _ in sent] == [a.addr, b.addr]
    (_, ping), (_, ack) = sent
    assert net.traffic.per_second[(a.addr, 0)] == wirecost.datagram_bytes(ping)
    assert net.traffic.per_second[(b.addr, 0)] == wirecost.datagram_bytes(ack)


def test_an_envelope_too_big_for_a_datagram_is_an_http_request():
    net = SimNetwork(LAN, seed=1)
    a, b = net.add_node(), net.add_node()
    sent = []
    net.drop_hook = lambda src, dst, envelope: sent.append((src, len(wire.encode(envelope)))) or False
    for seq in range(100):  # a hundred pings to one peer pack into one envelope over 1,188 bytes
        a.core.out.send(b.addr, wire.Ping(seq, "someone-else"))
    net.kick(a)
    net.run_until(0.9)
    (_, body), *_ = sent
    assert body > 1188
    assert net.traffic.per_second[(a.addr, 0)] == wirecost.request_bytes(body, b.addr)
    assert net.traffic.per_second[(b.addr, 0)] == wirecost.RESPONSE_EMPTY


def test_the_simulator_counts_a_request_and_its_response_once():
    """Over HTTP, a ping is a request; the ack travels in its response (not a request of its own),
    and a response is not answered again."""
    net = SimNetwork(LAN, seed=1, datagrams=False)
    a, b = net.add_node(), net.add_node()
    sent = []
    net.drop_hook = lambda src, dst, envelope: sent.append((src, len(wire.encode(envelope)))) or False
    a.core.out.send(b.addr, wire.Ping(1, b.core.node_id))
    net.kick(a)
    net.run_until(0.9)  # before either node's first timer: only the probe and its answer
    assert [src for src, _ in sent] == [a.addr, b.addr]
    (_, ping), (_, ack) = sent
    assert net.traffic.per_second[(a.addr, 0)] == wirecost.request_bytes(ping, b.addr)
    assert net.traffic.per_second[(b.addr, 0)] == wirecost.reply_bytes(ack)


def test_a_request_with_nothing_to_say_back_costs_an_empty_response():
    net = SimNetwork(LAN, seed=1, datagrams=False)
    a, b = net.add_node(), net.add_node()
    a.core.out.send(b.addr, wire.Ping(1, "someone-else"))  # not for b: no ack
    net.kick(a)
    net.run_until(0.9)
    assert net.traffic.per_second[(b.addr, 0)] == wirecost.RESPONSE_EMPTY


def test_the_tls_cost_model_prices_handshakes_records_and_replies():
    cost = TLSWireCost(keepalive=30.0, reply_window=0.05)
    first = cost.message("a", "b", 300, now=0.0)
    assert first == (TLS_HANDSHAKE_CLIENT_BYTES + 22, TLS_HANDSHAKE_SERVER_BYTES + TLS_RECORD_OVERHEAD)
    assert cost.message("b", "a", 100, now=0.01) == (22, 0)  # the reply rides a's connection
    assert cost.message("a", "b", 300, now=10.0) == (22, 22)  # kept alive: no handshake
    assert cost.message("b", "a", 300, now=20.0)[0] > 1000  # b dials a: its own connection
    assert cost.message("a", "b", 300, now=45.0)[0] > 1000  # idle past the keep-alive
    assert (cost.handshakes, cost.requests, cost.replies) == (3, 4, 1)

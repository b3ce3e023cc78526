"""The simulator's per-message HTTP overhead is what the real client and server put on the wire."""

from mesh.config import Config
from mesh.lab.http_overhead import measure
from mesh.protocol import wire
from mesh.sim import wirecost
from mesh.sim.simnet import SimNetwork

# The Server and User-Agent headers name the aiohttp version: a few bytes either way are not a
# different basis, more are (re-measure with `python -m mesh.lab.http_overhead`).
TOLERANCE = 8


async def test_simulated_http_overhead_matches_the_real_client_and_server():
    measured = await measure()
    assert abs(measured.request_fixed - wirecost.REQUEST_FIXED) <= TOLERANCE, measured
    assert abs(measured.response_fixed - wirecost.RESPONSE_FIXED) <= TOLERANCE, measured
    assert abs(measured.response_empty - wirecost.RESPONSE_EMPTY) <= TOLERANCE, measured


def test_a_message_costs_its_body_plus_the_framing():
    assert wirecost.request_bytes(55, "10.0.0.1:7611") == 55 + 408 + len("10.0.0.1:7611") + 2
    assert wirecost.reply_bytes(1000) == 1000 + 234 + 4


def test_the_simulator_counts_a_request_and_its_response_once():
    """A ping is a request; the ack travels in its response (not a request of its own), and a
    response is not answered again."""
    net = SimNetwork(Config.lan(secret=b"test-secret-0123456789"), seed=1)
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
    net = SimNetwork(Config.lan(secret=b"test-secret-0123456789"), seed=1)
    a, b = net.add_node(), net.add_node()
    a.core.out.send(b.addr, wire.Ping(1, "someone-else"))  # not for b: no ack
    net.kick(a)
    net.run_until(0.9)
    assert net.traffic.per_second[(b.addr, 0)] == wirecost.RESPONSE_EMPTY

"""The simulator's bandwidth model (mesh/sim/links.py): max-min fair shares of up- and downlinks,
caps, and cut-through relays bounded by their own inflow."""

import pytest

from mesh.sim.fanout import FanoutParams, fanout_time
from mesh.sim.links import Flow, share

B = 25_000_000.0  # bytes/s
S = 64_000_000  # bytes


def links(*nodes, up=B, down=B):
    return {n: up for n in nodes}, {n: down for n in nodes}


def test_one_transfer_of_s_bytes_over_b_bytes_per_second_takes_s_over_b():
    alone = Flow("a", "b")
    share([alone], *links("a", "b"))
    assert alone.rate == B
    # the same through the simulator's clock, with no latency: S/B exactly
    result = fanout_time(
        FanoutParams(1, layers=(S,), held=("nothing",), bandwidth=B, latency=0.0, latency_spread=0.0)
    )
    assert result.seconds == pytest.approx(S / B, rel=1e-9)


def test_an_uplink_is_shared_fairly_and_a_slow_downlink_leaves_the_rest_to_others():
    up, down = links("s", "x", "y", "z")
    down["z"] = B / 10
    flows = [Flow("s", "x"), Flow("s", "y"), Flow("s", "z")]
    share(flows, up, down)
    # z can take only B/10; x and y split what is left of s's uplink
    assert [f.rate for f in flows] == pytest.approx([0.45 * B, 0.45 * B, 0.1 * B])
    assert sum(f.rate for f in flows) == pytest.approx(B)


def test_a_downlink_is_shared_between_its_sources():
    flows = [Flow("s1", "r"), Flow("s2", "r")]
    share(flows, *links("s1", "s2", "r"))
    assert [f.rate for f in flows] == pytest.approx([B / 2, B / 2])


def test_a_cap_holds_a_flow_down_and_frees_the_rest_for_the_others():
    flows = [Flow("s", "x", cap=B / 5), Flow("s", "y")]
    share(flows, *links("s", "x", "y"))
    assert [f.rate for f in flows] == pytest.approx([B / 5, 4 * B / 5])


def test_a_caught_up_relay_forwards_no_faster_than_it_receives():
    # s feeds r, and also x: r gets half of s's uplink. r's downstream d, caught up with what r
    # holds, runs at r's inflow rate although r's uplink could carry all of B.
    inflow = Flow("s", "r")
    flows = [inflow, Flow("s", "x"), Flow("r", "d", follows=inflow)]
    share(flows, *links("s", "r", "x", "d"))
    assert [f.rate for f in flows] == pytest.approx([B / 2, B / 2, B / 2])
    # a relay whose inflow is not running (stalled) passes nothing on, nor does anything behind it
    stalled = Flow("s", "r", cap=0.0)
    behind = Flow("r", "d", follows=stalled)
    further = Flow("d", "e", follows=behind)
    share([stalled, behind, further], *links("s", "r", "d", "e"))
    assert (stalled.rate, behind.rate, further.rate) == (0.0, 0.0, 0.0)


def test_a_chain_of_relays_adds_about_one_chunk_time_per_hop():
    chunk = 1 << 20
    quiet = dict(
        layers=(S,), held=("nothing",), bandwidth=B, latency=0.0, latency_spread=0.0, relay_chunk=chunk
    )
    one = fanout_time(FanoutParams(1, **quiet)).seconds
    nine = fanout_time(FanoutParams(9, **quiet))
    assert nine.depth == 9  # the hand-off rule made a chain (8 hand-offs, below sources.CHAIN_DEPTH)
    assert nine.seconds == pytest.approx(one + 8 * chunk / B, rel=1e-6)

"""The simulator's per-message HTTP overhead is what the real client and server put on the wire."""

from mesh.lab.http_overhead import measure
from mesh.sim import wirecost

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

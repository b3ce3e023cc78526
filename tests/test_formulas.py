import pytest

from mesh.protocol.formulas import (
    backoff,
    confirmations_expected,
    push_pull_scale,
    remaining_suspicion,
    retransmit_limit,
    smooth_rtt,
    suspicion_timeout,
)


@pytest.mark.parametrize(
    "mult, n, interval, expected",
    [
        (4, 1, 1.0, 4.0),
        (4, 10, 1.0, 4.0),
        (4, 100, 1.0, 8.0),
        (4, 1000, 1.0, 12.0),
        (4, 1000, 0.5, 6.0),
        (5, 10_000, 1.0, 20.0),
    ],
)
def test_suspicion_timeout_grows_with_log_n(mult, n, interval, expected):
    assert suspicion_timeout(mult, n, interval) == pytest.approx(expected)


@pytest.mark.parametrize("mult, n, expected", [(4, 2, 0), (4, 3, 0), (4, 4, 2), (4, 1000, 2), (6, 1000, 4)])
def test_confirmations_expected(mult, n, expected):
    assert confirmations_expected(mult, n) == expected


@pytest.mark.parametrize(
    "confirmations, k, elapsed, expected",
    [
        (0, 2, 0.0, 36.0),  # no confirmation: the max
        (1, 2, 0.0, 36.0 - 24.0 * 0.6309),  # log(2)/log(3) of the way down
        (2, 2, 0.0, 12.0),  # k confirmations: the min
        (5, 2, 0.0, 12.0),  # never below the min
        (2, 2, 5.0, 7.0),  # elapsed time counts
        (0, 0, 0.0, 12.0),  # tiny cluster: no confirmations expected, the min
    ],
)
def test_remaining_suspicion_decays_with_confirmations(confirmations, k, elapsed, expected):
    assert remaining_suspicion(confirmations, k, elapsed, 12.0, 36.0) == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize("n, expected", [(1, 6), (10, 9), (99, 12), (100, 13), (1000, 17), (10_000, 21)])
def test_retransmit_limit_is_continuous_in_n(n, expected):
    assert retransmit_limit(4, n) == expected


def test_retransmit_limit_never_drops_much_when_one_node_leaves():
    assert all(retransmit_limit(4, n) - retransmit_limit(4, n - 1) <= 1 for n in range(2, 5000))


@pytest.mark.parametrize(
    "n, expected", [(5, 10.0), (32, 10.0), (33, 20.0), (64, 20.0), (100, 30.0), (1000, 60.0)]
)
def test_push_pull_interval_scales_past_32(n, expected):
    assert push_pull_scale(10.0, n) == expected


def test_smoothed_rtt_and_backoff():
    assert smooth_rtt(None, 0.010) == 0.010
    assert smooth_rtt(0.010, 0.050) == pytest.approx(0.020)
    assert [backoff(a, 2.0, 10.0) for a in range(5)] == [0.0, 2.0, 4.0, 8.0, 10.0]

"""Small pure formulas of the protocol, each with a table-driven test.

They follow memberlist (HashiCorp), which follows SWIM (Das, Gupta, Motivala 2002) and
Lifeguard (Dadgar et al., 2018).
"""

from __future__ import annotations

import math


def suspicion_timeout(suspicion_mult: int, n: int, probe_interval: float) -> float:
    """Floor of the time a suspect has to refute before it is declared dead.

    Grows with log10(n) because a rumour needs O(log n) rounds to reach the suspect and its
    refutation O(log n) rounds to come back (memberlist `suspicionTimeout`).
    """
    node_scale = max(1.0, math.log10(max(1.0, float(n))))
    return suspicion_mult * node_scale * probe_interval


def confirmations_expected(suspicion_mult: int, n: int) -> int:
    """Independent confirmations after which the suspicion timeout reaches its floor (Lifeguard's k).

    In tiny clusters there are not enough other members to confirm, so none are expected.
    """
    k = suspicion_mult - 2
    return 0 if n - 2 < k else k


def remaining_suspicion(
    confirmations: int, k: int, elapsed: float, min_timeout: float, max_timeout: float
) -> float:
    """Seconds left before a suspect is declared dead (Lifeguard: log-decay from max to min).

    Each independent confirmation is evidence the suspect really is down, so the timeout shrinks:
    max - (max - min) * log(c + 1) / log(k + 1), never below min.
    """
    if k < 1:
        timeout = min_timeout
    else:
        fraction = math.log(confirmations + 1.0) / math.log(k + 1.0)
        timeout = max(min_timeout, max_timeout - fraction * (max_timeout - min_timeout))
    return timeout - elapsed


def retransmit_limit(retransmit_mult: int, n: int) -> int:
    """How many times each node sends one rumour: enough that it reaches all n with high probability.

    A node misses a rumour with probability about exp(-limit), so the limit must grow like log n.
    memberlist uses mult * ceil(log10(n + 1)), a step function that drops from 12 to 8 when a
    100-node cluster loses one node; simulated at 5% loss that left about one node in a thousand
    without a fresh rumour. This is continuous and one decade more generous: mult * log10(10(n + 1)).
    """
    return math.ceil(retransmit_mult * math.log10(10 * (n + 1)))


def push_pull_scale(interval: float, n: int) -> float:
    """Full syncs slow down past 32 nodes so their total cost grows like n log n, not n^2."""
    threshold = 32
    if n <= threshold:
        return interval
    multiplier = math.ceil(math.log2(n) - math.log2(threshold)) + 1.0
    return interval * multiplier


def smooth_rtt(previous: float | None, sample: float, alpha: float = 0.25) -> float:
    """Exponentially weighted RTT, like TCP's SRTT: one slow probe does not flip source choice."""
    if previous is None:
        return sample
    return (1 - alpha) * previous + alpha * sample


def backoff(attempts: int, base: float, cap: float) -> float:
    """Delay before retrying something that failed `attempts` times (1, 2, 4 ... times base, capped)."""
    if attempts <= 0:
        return 0.0
    return min(cap, base * 2.0 ** (attempts - 1))

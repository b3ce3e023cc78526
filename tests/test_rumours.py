"""The rumour queue (mesh/protocol/rumours.py): what goes into the next gossip message."""

from mesh.protocol.rumours import BroadcastQueue
from mesh.protocol.wire import Alive, Suspect, encoded_size


def alive(node, inc=1):
    return Alive(node, node, "10.0.0.1:1", inc)


def test_least_sent_go_first_and_each_is_sent_at_most_limit_times():
    q = BroadcastQueue()
    q.push(("m", "a"), alive("a"))
    first = q.take(10_000, limit=2)
    q.push(("m", "b"), alive("b"))
    second = q.take(encoded_size(alive("a")), limit=2)  # room for one: the never-sent one wins
    assert first == [alive("a")] and second == [alive("b")]
    q.take(10_000, limit=2)
    assert len(q) == 0


def test_newest_first_among_equals_and_budget_respected():
    q = BroadcastQueue()
    for name in "abc":
        q.push(("m", name), alive(name))
    size = encoded_size(alive("a"))
    assert q.take(2 * size, limit=5) == [alive("c"), alive("b")]


def test_a_newer_rumour_about_the_same_subject_replaces_the_old():
    q = BroadcastQueue()
    q.push(("m", "a"), alive("a"))
    q.take(10_000, limit=3)
    q.push(("m", "a"), Suspect("a", 1, "x"))
    assert len(q) == 1
    assert q.take(10_000, limit=3) == [Suspect("a", 1, "x")]


def test_prune_drops_rumours_past_a_smaller_limit():
    q = BroadcastQueue()
    q.push(("m", "a"), alive("a"))
    q.take(10_000, limit=10)
    q.take(10_000, limit=10)
    q.prune(2)
    assert len(q) == 0

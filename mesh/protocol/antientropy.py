"""Anti-entropy digests. Pure.

A push-pull opens with a digest of the sender's view: members are hashed into 64 buckets by ID,
and each bucket's value is the XOR of its live members' (ID, incarnation, state, manifest
version) hashes. Equal views cost one 64-number message to confirm. Where buckets differ, the
two sides swap the members of those buckets only (`SyncSummary`), merge them, and ask each other
for the manifest versions they lack. Dead and left members are left out of the digest, so views
that only differ in what they have already forgotten do not trigger exchanges; they still travel
in summaries, which is how a partition's two sides learn that the other declared them dead and
refute it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from functools import lru_cache

from mesh.protocol.liveness import State
from mesh.protocol.membership import Member
from mesh.protocol.wire import DIGEST_BUCKETS, SummaryEntry

_LIVE = (State.ALIVE, State.SUSPECT)


@lru_cache(maxsize=65536)
def bucket_of(node: str) -> int:
    return hashlib.blake2b(node.encode(), digest_size=2).digest()[0] % DIGEST_BUCKETS


def _member_key(m: Member, mversion: int) -> tuple[int, int, int]:
    return (m.incarnation, int(m.state), mversion)


def _member_hash(node: str, key: tuple[int, int, int]) -> int:
    incarnation, state, mversion = key
    text = f"{node}\0{incarnation}\0{state}\0{mversion}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


def compute_digest(members: Iterable[Member], mversion_of: Callable[[str], int]) -> tuple[int, ...]:
    """The digest from scratch: the reference DigestCache is checked against."""
    buckets = [0] * DIGEST_BUCKETS
    for m in members:
        if m.state in _LIVE:
            buckets[bucket_of(m.id)] ^= _member_hash(m.id, _member_key(m, mversion_of(m.id)))
    return tuple(buckets)


class DigestCache:
    """The digest kept up to date incrementally: a member whose incarnation, state or manifest version
    may have changed is marked, and only marked members whose key really changed are re-hashed (a
    thousand-node digest is asked for every few seconds; recomputing it each time dominated the
    simulator)."""

    def __init__(self) -> None:
        self._buckets = [0] * DIGEST_BUCKETS
        self._contrib: dict[str, tuple[tuple[int, int, int], int]] = {}  # node -> (key, its hash)
        self._dirty: dict[str, None] = {}

    def mark(self, node: str) -> None:
        self._dirty[node] = None

    def value(self, members: dict[str, Member], mversion_of: Callable[[str], int]) -> tuple[int, ...]:
        buckets = self._buckets
        contrib = self._contrib
        for node in self._dirty:
            m = members.get(node)
            key = _member_key(m, mversion_of(node)) if m is not None and m.state in _LIVE else None
            old = contrib.get(node)
            if old is not None and old[0] == key:
                continue
            bucket = bucket_of(node)
            if old is not None:
                buckets[bucket] ^= old[1]
                del contrib[node]
            if key is not None:
                value = _member_hash(node, key)
                buckets[bucket] ^= value
                contrib[node] = (key, value)
        self._dirty.clear()
        return tuple(buckets)


def differing(mine: tuple[int, ...], theirs: tuple[int, ...]) -> list[int]:
    return [i for i in range(DIGEST_BUCKETS) if mine[i] != theirs[i]]


class SummaryCache:
    """Summary entries of members, reused while a member's fields are unchanged (a thousand-node
    summary is built every few seconds). Kept here, keyed by node ID, not on the members."""

    def __init__(self) -> None:
        self._entries: dict[str, SummaryEntry] = {}

    def entries(
        self, members: Iterable[Member], buckets: Iterable[int], mversion_of: Callable[[str], int]
    ) -> list[SummaryEntry]:
        wanted = set(buckets)
        cache = self._entries
        out = []
        for m in members:
            if bucket_of(m.id) not in wanted:
                continue
            mversion = mversion_of(m.id)
            entry = cache.get(m.id)
            if (
                entry is None
                or entry.incarnation != m.incarnation
                or entry.state != m.state
                or entry.mversion != mversion
                or entry.addr != m.addr
                or entry.name != m.name
            ):
                entry = cache[m.id] = SummaryEntry(
                    m.id, m.name, m.addr, m.incarnation, int(m.state), mversion
                )
            out.append(entry)
        return out

    def forget(self, node: str) -> None:
        self._entries.pop(node, None)


def split_by_size(entries: list[SummaryEntry], max_entries: int) -> list[list[SummaryEntry]]:
    """Summaries of very large clusters go out in several messages."""
    return [entries[i : i + max_entries] for i in range(0, len(entries), max_entries)] or [[]]

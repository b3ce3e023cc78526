"""The rumour queue: which pending rumours go into the next gossip message.

Like memberlist's TransmitLimitedQueue: the least-sent rumours go first (newest first among
equals), each is sent at most `limit` times, and a newer rumour about the same subject (same
key) replaces the older one. Rumours sit in one bucket per transmit count, so taking k rumours
costs O(k), not a sort of the whole queue: after a partition heals a node may hold a thousand.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from mesh.protocol.wire import Message, encoded_size


@dataclass(slots=True)
class _Rumour:
    key: Hashable
    message: Message
    size: int
    transmits: int


class BroadcastQueue:
    def __init__(self) -> None:
        self._by_key: dict[Hashable, _Rumour] = {}
        # transmits -> rumours in insertion order (dicts keep order; newest last)
        self._levels: dict[int, dict[Hashable, _Rumour]] = {}

    def __len__(self) -> int:
        return len(self._by_key)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._by_key

    def get(self, key: Hashable) -> Message | None:
        rumour = self._by_key.get(key)
        return None if rumour is None else rumour.message

    def push(self, key: Hashable, message: Message) -> None:
        old = self._by_key.pop(key, None)
        if old is not None:
            del self._levels[old.transmits][key]
        rumour = _Rumour(key, message, encoded_size(message), 0)
        self._by_key[key] = rumour
        level = self._levels.get(0)
        if level is None:
            level = self._levels[0] = {}
        level[key] = rumour

    def take(self, budget: int, limit: int) -> list[Message]:
        """Rumours for one gossip message, within `budget` encoded bytes; counts them as sent."""
        chosen: list[_Rumour] = []
        used = 0
        full = budget - 16  # nothing useful fits in the last few bytes
        for transmits in sorted(self._levels):
            for rumour in reversed(self._levels[transmits].values()):
                if used + rumour.size <= budget:
                    chosen.append(rumour)
                    used += rumour.size
                    if used >= full:
                        break
            if used >= full:
                break
        for rumour in chosen:
            del self._levels[rumour.transmits][rumour.key]
            if not self._levels[rumour.transmits]:
                del self._levels[rumour.transmits]
            rumour.transmits += 1
            if rumour.transmits >= limit:
                del self._by_key[rumour.key]
            else:
                level = self._levels.get(rumour.transmits)
                if level is None:
                    level = self._levels[rumour.transmits] = {}
                level[rumour.key] = rumour
        return [r.message for r in chosen]

    def prune(self, limit: int) -> None:
        """Drop rumours already sent `limit` times (the limit shrinks when the cluster does)."""
        for transmits in [t for t in self._levels if t >= limit]:
            for key in self._levels.pop(transmits):
                del self._by_key[key]

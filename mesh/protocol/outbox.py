"""Messages the pure core wants sent, grouped per destination address, drained into envelopes."""

from __future__ import annotations

from dataclasses import dataclass

from mesh.protocol.wire import (
    MAX_NAME,
    Ack,
    Alive,
    Dead,
    Envelope,
    Message,
    Ping,
    PingReq,
    Suspect,
    SyncDigest,
    encoded_size,
)

ENVELOPE_OVERHEAD = 64  # protocol version, sender ID and address, list header

# Upper bounds of the fixed-shape messages (three strings of at most MAX_NAME, a few integers), so
# queueing them costs no encoding. Everything else is measured exactly (its bytes are cached).
_BOUND = 3 * (MAX_NAME + 3) + 64
_FIXED: dict[type, int] = {t: _BOUND for t in (Ping, Ack, PingReq, Alive, Suspect, Dead)}
_FIXED[SyncDigest] = 64 * 9 + 16


@dataclass(frozen=True, slots=True)
class Outgoing:
    addr: str
    envelope: Envelope


class Outbox:
    def __init__(self, sender: str, addr: str, max_bytes: int) -> None:
        self.sender = sender
        self.addr = addr
        self.max_bytes = max_bytes
        self.incarnation = 0
        self._pending: dict[str, list[Message]] = {}
        self._bound: dict[str, int] = {}  # per destination: an upper bound of its envelope's size

    def send(self, addr: str, message: Message) -> None:
        size = _FIXED.get(type(message))
        if size is None:
            size = encoded_size(message)
        queue = self._pending.get(addr)
        if queue is None:
            self._pending[addr] = [message]
            self._bound[addr] = ENVELOPE_OVERHEAD + size
        else:
            queue.append(message)
            self._bound[addr] += size

    def __bool__(self) -> bool:
        return bool(self._pending)

    def _envelope(self, messages: list[Message]) -> Envelope:
        return Envelope(self.sender, self.addr, tuple(messages), self.incarnation)

    def drain(self) -> list[Outgoing]:
        """Envelopes to send, each under max_bytes; split only where the bound says it may not fit."""
        out: list[Outgoing] = []
        pending, bounds = self._pending, self._bound
        self._pending, self._bound = {}, {}
        for addr, messages in pending.items():
            if bounds[addr] <= self.max_bytes:
                out.append(Outgoing(addr, self._envelope(messages)))
                continue
            batch: list[Message] = []
            used = ENVELOPE_OVERHEAD
            for message in messages:
                size = encoded_size(message)
                if batch and used + size > self.max_bytes:
                    out.append(Outgoing(addr, self._envelope(batch)))
                    batch, used = [], ENVELOPE_OVERHEAD
                batch.append(message)
                used += size
            if batch:
                out.append(Outgoing(addr, self._envelope(batch)))
        return out

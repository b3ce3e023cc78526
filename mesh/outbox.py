"""Messages the pure core wants sent, grouped per destination address, drained into envelopes."""

from __future__ import annotations

from dataclasses import dataclass

from mesh.wire import Ack, Alive, Dead, Envelope, Message, Ping, PingReq, Suspect, SyncDigest, encoded_size

ENVELOPE_OVERHEAD = 64  # protocol version, sender ID and address, list header


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

    def send(self, addr: str, message: Message) -> None:
        self._pending.setdefault(addr, []).append(message)

    def __bool__(self) -> bool:
        return bool(self._pending)

    def drain(self) -> list[Outgoing]:
        """Envelopes to send, each under max_bytes. Small batches skip the size arithmetic."""
        out: list[Outgoing] = []
        pending, self._pending = self._pending, {}
        for addr, messages in pending.items():
            if len(messages) <= 4 and all(_small(m) for m in messages):
                out.append(
                    Outgoing(addr, Envelope(self.sender, self.addr, tuple(messages), self.incarnation))
                )
                continue
            batch: list[Message] = []
            used = ENVELOPE_OVERHEAD
            for message in messages:
                size = encoded_size(message)
                if batch and used + size > self.max_bytes:
                    out.append(
                        Outgoing(addr, Envelope(self.sender, self.addr, tuple(batch), self.incarnation))
                    )
                    batch, used = [], ENVELOPE_OVERHEAD
                batch.append(message)
                used += size
            if batch:
                out.append(Outgoing(addr, Envelope(self.sender, self.addr, tuple(batch), self.incarnation)))
        return out


_SMALL = (Ping, Ack, PingReq, Alive, Suspect, Dead, SyncDigest)


def _small(message: Message) -> bool:
    return isinstance(message, _SMALL)

"""The core's messages on the wire: what it drains goes out as sealed datagrams when they fit
(most gossip) or over the peer API; what peers send comes back in. The node's core loop ticks the
core and waits on `wake`; this part only moves messages.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

from mesh.net.client import PeerClient
from mesh.net.datagram import GossipSocket, Opened, Sealer
from mesh.protocol import wire
from mesh.protocol.core import MeshCore
from mesh.protocol.outbox import Outgoing
from mesh.ui.metrics import Metrics

log = logging.getLogger("cachemesh.node")

MAX_SENDS_PER_PEER = 4  # more in flight to one peer means it is not answering; drop (SWIM copes)


class Gossip:
    def __init__(
        self,
        core: MeshCore,
        client: PeerClient,
        metrics: Metrics,
        *,
        advertise: str,
        sealer: Sealer | None,
        max_message_bytes: int,
        datagrams: bool,
    ) -> None:
        """`sealer`: seals datagrams (None: every message goes over the peer API); `datagrams`:
        --gossip-datagrams, whether to send them (received ones are taken either way)."""
        self.core = core
        self.advertise = advertise
        self.client = client
        self.metrics = metrics
        self.wake = asyncio.Event()
        self.secrets: dict[str, int] = {}  # node ID -> which held secret sealed its datagrams
        self.clock_offsets: dict[str, float] = {}  # node ID -> this clock minus its, last datagram
        self.socket = (
            None
            if sealer is None
            else GossipSocket(
                sealer,
                self.on_datagram,
                max_bytes=max_message_bytes,
                on_refused=lambda reason: metrics.gossip_refused.labels(reason).inc(),
            )
        )
        self._send_datagrams = datagrams
        self._sends: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

    def flush(self) -> None:
        for out in self.core.drain():
            self.dispatch(out)

    def dispatch(self, out: Outgoing) -> None:
        """Send one envelope: sealed in a datagram when it fits, else over the peer API in the
        background, unless too many requests are already in flight to that peer."""
        if self.socket is not None and self._send_datagrams and members_at(self.core, out.addr):
            # Only to members: a first contact (a seed, an mDNS find) goes over TLS, which checks
            # the peer and says why when it is refused.
            body = wire.encode(out.envelope)
            if Sealer.fits(len(body)) and self.socket.send(out.addr, body):
                self.metrics.gossip_datagrams.labels("out").inc()
                return
        if self._sends[out.addr] >= MAX_SENDS_PER_PEER:
            self.metrics.gossip_errors.inc()
            return
        self._sends[out.addr] += 1
        task = asyncio.create_task(self.send(out.addr, out.envelope))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def send(self, addr: str, envelope: wire.Envelope) -> None:
        try:
            reply = await self.client.exchange(addr, envelope)
        except Exception as exc:  # refused, unreachable, timed out: to SWIM, a lost message
            self.metrics.gossip_errors.inc()
            log.debug("gossip to %s lost: %s", addr, exc)
            return
        finally:
            self._sends[addr] -= 1
            if self._sends[addr] <= 0:
                del self._sends[addr]
        if reply is not None and not self._stopping:
            self.core.receive(reply, time.monotonic())
            self.wake.set()

    def on_datagram(self, envelope: wire.Envelope, opened: Opened) -> None:
        """A sealed gossip datagram: what the core says back goes out as datagrams of its own."""
        self.metrics.gossip_datagrams.labels("in").inc()
        if envelope.sender in self.secrets or len(self.secrets) < 100_000:  # bounded, like the socket's
            self.secrets[envelope.sender] = opened.secret
            self.clock_offsets[envelope.sender] = opened.clock_offset
        if not self._stopping:
            self.core.receive(envelope, time.monotonic())
            self.flush()
            self.wake.set()

    def on_envelope(self, envelope: wire.Envelope) -> wire.Envelope | None:
        """An envelope over the peer API: the first reply to its sender goes back in the answer."""
        self.core.receive(envelope, time.monotonic())
        reply: list[wire.Message] = []
        for out in self.core.drain():
            if out.addr == envelope.addr and not reply:
                reply.extend(out.envelope.messages)
            else:
                self.dispatch(out)
        self.wake.set()
        if not reply:
            return None
        view = self.core.view
        return wire.Envelope(view.node_id, self.advertise, tuple(reply), view.incarnation)

    async def stop(self) -> None:
        """Stop taking messages in and cancel the sends in flight."""
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.socket is not None:
            self.socket.close()


def members_at(core: MeshCore, addr: str) -> set[str]:
    """Node IDs of the members at `addr`: a peer's certificate must name one of them."""
    return {i for i, m in core.view.peers().items() if m.addr == addr}

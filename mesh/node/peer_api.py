"""What the peer server asks of the node, and nothing more: envelopes in, save streams out, counters.

The server in mesh/net sees this object (a PeerHandler), not the Node: it can hand an envelope to
the core loop and open a save of an image this node shares, and that is all.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

from mesh.engine.base import Engine, EngineError
from mesh.net.contract import SaveStream
from mesh.net.server import SaveRefused
from mesh.node.local_images import LocalImages
from mesh.node.transfer import Transfer
from mesh.protocol import wire
from mesh.protocol.planner import chain_of
from mesh.protocol.view import MeshView
from mesh.ui.metrics import Metrics


class PeerApi:
    def __init__(
        self,
        on_envelope: Callable[[wire.Envelope], wire.Envelope | None],
        view: MeshView,
        local: LocalImages,
        engine: Engine,
        metrics: Metrics,
    ) -> None:
        self.on_envelope = on_envelope
        self._view = view
        self._local = local
        self._engine = engine
        self._metrics = metrics
        self.serving: dict[int, Transfer] = {}  # saves in progress, for the status page

    async def open_save(self, image: str, requester: str) -> SaveStream:
        if image not in self._local.shared:
            raise SaveRefused(404, f"{image[:19]} is not shared by this node")
        chain = chain_of(image, self._local.metas())
        peer = self._view.peer(requester)
        record = Transfer(
            image,
            self._local.shared[image],
            peer.addr if peer else "?",
            peer.name if peer else requester,
            "out",
            self._local.images[image].meta.size,
        )
        self.serving[id(record)] = record

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in self._engine.save(chain):
                    record.done += len(chunk)
                    yield chunk
            except EngineError as exc:
                record.error = str(exc)
                raise
            finally:
                record.finished = time.time()
                self.serving.pop(id(record), None)

        return SaveStream(chain, chunks())

    def count_request(self, endpoint: str, status: int) -> None:
        self._metrics.peer_requests.labels(endpoint, str(status)).inc()

    def count_bytes_out(self, n: int) -> None:
        self._metrics.transfer_bytes.labels("out").inc(n)

    def save_finished(self, image: str, ok: bool) -> None:
        self._metrics.transfers.labels("out", "ok" if ok else "failed").inc()

"""What the peer server asks of the node, and nothing more: envelopes in, save streams out, counters.

The server in mesh/net sees this object (a PeerHandler), not the Node: it can hand an envelope to
the core loop and open a save of an image this node shares, and that is all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from mesh.engine.base import Engine, EngineError
from mesh.engine.delta import DeltaReport, LayerNames, without_layers
from mesh.engine.tarstream import TarStreamError
from mesh.net.contract import SaveStream
from mesh.net.server import SaveRefused
from mesh.node.local_images import LocalImages
from mesh.node.transfer import Transfer
from mesh.protocol import wire
from mesh.protocol.planner import chain_of
from mesh.protocol.view import MeshView
from mesh.ui.metrics import Metrics

log = logging.getLogger("cachemesh.node")


class PeerApi:
    def __init__(
        self,
        on_envelope: Callable[[wire.Envelope], wire.Envelope | None],
        view: MeshView,
        local: LocalImages,
        engine: Engine,
        metrics: Metrics,
        spool: Path | None = None,
    ) -> None:
        self.on_envelope = on_envelope
        self._view = view
        self._local = local
        self._engine = engine
        self._metrics = metrics
        self.serving: dict[int, Transfer] = {}  # saves in progress, for the status page
        self.layer_names = LayerNames()  # which file of a save stream holds which layer
        self._spool = spool

    async def open_save(self, image: str, requester: str, have: int, store: str) -> SaveStream:
        """A save of `image` and its chain, leaving out the files of its first `have` layers,
        which the requester holds, where its `store` can load the result (docs/engines.md)."""
        if image not in self._local.shared:
            raise SaveRefused(404, f"{image[:19]} is not shared by this node")
        # The containerd store records no parent links for loaded images (a classic build finds
        # its cache through --cache-from and the image's history there), and it does not load
        # several unnamed images from one tar reliably: send it the image alone.
        chain = [image] if store == "containerd" else chain_of(image, self._local.metas())
        try:
            info = await self._engine.info()
        except EngineError as exc:
            raise SaveRefused(503, f"engine unavailable: {exc}") from None
        layers = self._local.images[image].meta.layers
        # The containerd store refuses a legacy-format tar with a layer missing (Engine < 25 writes
        # only that format); and a layer that recurs above `have` must stay in.
        drop = set(layers[:have]) - set(layers[have:]) if info.oci_save or store == "graph" else set()
        delta = DeltaReport()
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
            saved = self._engine.save(chain)
            try:
                async for chunk in without_layers(
                    saved, drop, self.layer_names, delta, spool_dir=self._spool
                ):
                    record.done += len(chunk)
                    yield chunk
                if delta.dropped:
                    self._metrics.layers_left_out.inc(len(delta.dropped))
                    self._metrics.layer_bytes_left_out.inc(delta.dropped_bytes)
                    log.info(
                        "left %d held layers (%.1f MB) out of %s for %s",
                        len(delta.dropped),
                        delta.dropped_bytes / 1e6,
                        image[:19],
                        record.peer_name,
                    )
            except (EngineError, TarStreamError) as exc:
                record.error = str(exc)
                raise EngineError(str(exc)) from None
            finally:
                await saved.aclose()  # type: ignore[attr-defined]
                record.finished = time.time()
                self.serving.pop(id(record), None)

        return SaveStream(chain, chunks())

    def count_request(self, endpoint: str, status: int) -> None:
        self._metrics.peer_requests.labels(endpoint, str(status)).inc()

    def count_bytes_out(self, n: int) -> None:
        self._metrics.transfer_bytes.labels("out").inc(n)

    def save_finished(self, image: str, ok: bool) -> None:
        self._metrics.transfers.labels("out", "ok" if ok else "failed").inc()

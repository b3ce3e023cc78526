"""What the peer server asks of the node, and nothing more: envelopes in, save streams out, counters.

The server in mesh/net sees this object (a PeerHandler), not the Node: it can hand an envelope to
the core loop and open a save of an image this node shares, and that is all.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from mesh.engine.base import Engine, EngineError
from mesh.engine.delta import DeltaReport, LayerNames, without_layers
from mesh.engine.tarstream import TarStreamError
from mesh.net.contract import SaveRequest, SaveStream
from mesh.net.server import SaveRefused
from mesh.node.local_images import LocalImages
from mesh.node.relay import RelayBroken, Relays, Spool
from mesh.node.transfer import Transfer
from mesh.protocol import wire
from mesh.protocol.oci import is_registry_entry
from mesh.protocol.planner import chain_of
from mesh.protocol.sources import Downstream, common_prefix, covers, cut_for, left_out, relay_to, widen_for
from mesh.protocol.view import MeshView
from mesh.ui.metrics import Metrics

log = logging.getLogger("cachemesh.node")

# A promised stream (PeerApi._promise) that has not started by then never will: its requester went.
PROMISE_SECONDS = 30.0


class PeerApi:
    def __init__(
        self,
        on_envelope: Callable[[wire.Envelope], wire.Envelope | None],
        view: MeshView,
        local: LocalImages,
        engine: Engine,
        metrics: Metrics,
        *,
        spool: Path | None,
        relays: Relays | None,
        on_load: Callable[[], None],
        chunk_bytes: int,
        relay_start_timeout: float,
    ) -> None:
        """`spool`: where received deltas wait for the engine (None: straight in); `relays`: the
        streams this node passes on (None: it relays nothing); `on_load`: the upload count changed."""
        self.on_envelope = on_envelope
        self._view = view
        self._local = local
        self._engine = engine
        self._metrics = metrics
        self.serving: dict[int, Transfer] = {}  # saves in progress, for the status page
        self.layer_names = LayerNames()  # which file of a save stream holds which layer
        self._spool = spool
        self._relays = relays
        self._on_load = on_load
        self._chunk_bytes = chunk_bytes
        self._relay_start_timeout = relay_start_timeout
        self.uploads = 0  # saves in flight plus queued: the load figure this node gossips
        self.sending: list[Downstream] = []  # streams going out now, oldest first
        # requests handed to each stream's receiver while it lasts (sources.relay_to's `routed`)
        self.routed: dict[Downstream, int] = {}
        self._promised: dict[Downstream, float] = {}  # streams promised, not started (_promise)

    def uploads_changed(self, uploads: int) -> None:
        self.uploads = uploads
        self._on_load()

    def handoff(self, request: SaveRequest) -> str:
        """A relay to send the requester to: one this node already streams the image to, for the
        requester's store, whose stream covers the requester's `have`, chosen by
        mesh.protocol.sources.relay_to (a chain, then a tree, by the hand-offs the request has
        followed)."""
        self._expire_promises(time.monotonic())
        chosen = relay_to(
            request.image,
            request.store,
            request.requester,
            self.sending,
            have=request.have,
            hops=request.hops,
            routed=self.routed,
        )
        if chosen is None:
            return ""
        self.routed[chosen] = self.routed.get(chosen, 0) + 1
        return chosen.peer

    def _lacking(self, image: str, requester: str) -> list[int]:
        """What each other live peer that lacks `image` holds of it, in leading layers, by the
        images its gossip says it holds (mesh.protocol.sources.widen_for)."""
        metas = self._view.metas()
        meta = metas.get(image) or self._local.images[image].meta
        out = []
        for peer in self._view.live_peers():
            if peer.id == requester:
                continue
            holdings = self._view.holdings(peer.id)
            if image in holdings:
                continue
            held = [metas[i].layers for i in holdings if i in metas and not is_registry_entry(holdings[i])]
            out.append(max((common_prefix(meta.layers, layers) for layers in held), default=0))
        return out

    def _prefix_bytes(self, layers: tuple[str, ...]) -> dict[int, int]:
        """Bytes of each leading run of `layers` that an image here consists of (a base it was
        built on, an older build), from the engine's sizes: what widening a stream would add."""
        out = {0: 0}
        for local in self._local.images.values():
            n = len(local.meta.layers)
            if n <= len(layers) and tuple(local.meta.layers) == tuple(layers[:n]):
                out[n] = local.meta.size
        return out

    async def open_save(self, request: SaveRequest) -> SaveStream:
        """A save of the image and its chain, leaving out the files of its first `have` layers,
        which the requester holds, where its `store` can load the result (docs/engines.md). An
        image this node is still receiving is served from its relay spool (mesh/node/relay.py),
        to a requester of its store that holds at least the layers the spool leaves out; any
        other is refused, never sent a stream without a layer it lacks."""
        image, store = request.image, request.store
        if image not in self._local.shared:
            spool = self._relays.spools.get(image) if self._relays is not None else None
            if spool is not None and spool.store == store and not spool.ended:
                return await self._open_relay(spool, request)
            raise SaveRefused(404, f"{image[:19]} is not shared by this node")
        promise = self._promise(request)
        try:
            return await self._open_shared(request, promise)
        except BaseException:
            self._break_promise(promise)
            raise

    async def _open_shared(self, request: SaveRequest, promise: Downstream | None) -> SaveStream:
        image, requester, have, store = request.image, request.requester, request.have, request.store
        others = [out for out in self.sending if out is not promise]
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
        # only that format). `left` is what the receiver learns (HAVE_HEADER), tags its relay spool
        # with and serves by (the simulator's holders cut their streams by the same rule).
        have = cut_for(image, store, have, relays=request.relay, sending=others)
        first = not any(out.image == image and out.store == store for out in others)
        if first and request.relay and have:
            have = widen_for(
                have, self._lacking(image, requester), self._prefix_bytes(layers), relays=True, first=True
            )
        cut = left_out(layers, have, possible=info.oci_save or store == "graph")
        drop, left = cut.drop, cut.left
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
        downstream = Downstream(requester, image, store, request.relay, left)

        async def chunks() -> AsyncIterator[bytes]:
            # Registered once streaming starts: a response that never started leaves no trace
            # (but its promise, which expires).
            self.serving[id(record)] = record
            self._keep_promise(promise, downstream)
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
                self._stop_sending(downstream)

        return SaveStream(chain, chunks(), left)

    async def _open_relay(self, spool: Spool, request: SaveRequest) -> SaveStream:
        try:
            await spool.wait_started(self._relay_start_timeout)
        except RelayBroken as exc:
            raise SaveRefused(503, str(exc)) from None
        # Once started the spool knows what its stream leaves out (its upstream said so).
        if not covers(spool.have, request.have):
            raise SaveRefused(
                404,
                f"{spool.image[:19]} is relayed here only to receivers holding its first "
                f"{spool.have} layers (this one holds {request.have})",
            )
        peer = self._view.peer(request.requester)
        meta = self._view.metas().get(spool.image)
        record = Transfer(
            spool.image,
            (),
            peer.addr if peer else "?",
            peer.name if peer else request.requester,
            "out",
            meta.size if meta else 0,
            relay=True,
        )
        # The stream leaves out what this spool's does; the receiver tags its own spool so.
        downstream = Downstream(request.requester, spool.image, spool.store, request.relay, spool.have)

        async def chunks() -> AsyncIterator[bytes]:
            self.serving[id(record)] = record
            self.sending.append(downstream)
            self._metrics.relays_served.inc()
            log.info("relaying %s to %s as it arrives", spool.image[:19], record.peer_name)
            try:
                async for chunk in spool.read(self._chunk_bytes):
                    record.done += len(chunk)
                    yield chunk
            except EngineError as exc:
                record.error = str(exc)
                raise
            finally:
                record.finished = time.time()
                self.serving.pop(id(record), None)
                self._stop_sending(downstream)

        return SaveStream(spool.chain, chunks(), spool.have)

    def _promise(self, request: SaveRequest) -> Downstream | None:
        """A relaying request this node will serve counts as sending from now, not from its first
        byte: between the two the engine is asked about its save formats and the response starts,
        and a request arriving then would get a second copy from here instead of being handed
        on to the first (whose spool opened before it asked, and waits for its stream to start)."""
        if not request.relay:
            return None
        promise = Downstream(request.requester, request.image, request.store, True, request.have)
        self.sending.append(promise)
        self._promised[promise] = time.monotonic()
        return promise

    def _keep_promise(self, promise: Downstream | None, downstream: Downstream) -> None:
        """The stream starts: it takes its promise's place (and the requests handed to it)."""
        if promise is None or self._promised.pop(promise, None) is None:
            self.sending.append(downstream)
            return
        try:
            self.sending[self.sending.index(promise)] = downstream
        except ValueError:
            self.sending.append(downstream)
        handed = self.routed.pop(promise, 0)
        if handed:
            self.routed[downstream] = self.routed.get(downstream, 0) + handed

    def _break_promise(self, promise: Downstream | None) -> None:
        if promise is not None and self._promised.pop(promise, None) is not None:
            self._stop_sending(promise)

    def _expire_promises(self, now: float) -> None:
        """Promises whose stream never started (the requester went away first)."""
        for promise, since in list(self._promised.items()):
            if now - since > PROMISE_SECONDS:
                self._break_promise(promise)

    def _stop_sending(self, downstream: Downstream) -> None:
        with contextlib.suppress(ValueError):
            self.sending.remove(downstream)
        if downstream not in self.sending:
            self.routed.pop(downstream, None)

    def count_request(self, endpoint: str, status: int) -> None:
        self._metrics.peer_requests.labels(endpoint, str(status)).inc()

    def count_bytes_out(self, n: int) -> None:
        self._metrics.transfer_bytes.labels("out").inc(n)

    def save_finished(self, image: str, ok: bool) -> None:
        self._metrics.transfers.labels("out", "ok" if ok else "failed").inc()

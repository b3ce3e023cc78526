"""One cachemesh node: the pure core driven by an asyncio loop, with I/O at the edges.

The core loop ticks the core at its next deadline (or when woken), sends what it drained over
HTTP, and feeds replies back in. Around it: the local engine watcher, the puller, seed discovery,
the peer API and the status page. SIGTERM leaves gracefully: peers are told directly, so they
drop this node at once instead of timing it out.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

from aiohttp import web

from mesh import __version__
from mesh.config import Config, format_hostport, parse_hostport
from mesh.discovery.addresses import derive_advertise
from mesh.discovery.mdns import MdnsDiscovery, mdns_usable
from mesh.discovery.seeds import resolve_seeds
from mesh.engine.base import Engine, chain_ids
from mesh.engine.docker_api import DockerEngine
from mesh.net.auth import Signer, derive_key
from mesh.net.client import PeerClient
from mesh.net.datagram import GossipSocket, Sealer, bind_datagram_socket
from mesh.net.pki import CERT_RENEW_AFTER
from mesh.net.server import PeerServer
from mesh.net.tls_contexts import TLSSockSite, limit_tls_read_buffers, node_tls
from mesh.net.tls_peers import TLSClient, TLSObserver
from mesh.node.disk import DiskKeeper
from mesh.node.local_images import LocalImages
from mesh.node.peer_api import PeerApi
from mesh.node.persistence import NodeState
from mesh.node.puller import Puller
from mesh.node.readiness import Readiness, ReadinessSnapshot
from mesh.node.registry_view import RegistryCounters, RegistryView
from mesh.node.relay import Relays
from mesh.node.status import StatusFacts, build_status
from mesh.node.transfer import Transfer
from mesh.protocol import wire
from mesh.protocol.core import MeshCore
from mesh.protocol.events import ManifestChanged, MetaLearned, PeerJoined, PeerStateChanged
from mesh.protocol.liveness import State
from mesh.protocol.nodestatus import NodeStatus, announce, status_key, status_meta
from mesh.protocol.oci import is_registry_entry
from mesh.protocol.outbox import Outgoing
from mesh.protocol.wire import ImageMeta, Tags
from mesh.registry.ports import RegistrySettings
from mesh.registry.router import registry_app
from mesh.registry.service import Registry
from mesh.ui.metrics import Metrics
from mesh.ui.status_page import StatusSources, status_app

log = logging.getLogger("cachemesh.node")

STATUS_INTERVAL = 0.5  # seconds between announcements of this node's transfer status, at most
MAX_SENDS_PER_PEER = 4  # more in flight to one peer means it is not answering; drop (SWIM copes)


class Node:
    def __init__(self, config: Config, engine: Engine | None = None) -> None:
        self.config = config
        self.state = NodeState(config.data_dir)
        self.node_id = self.state.node_id()
        self.incarnation = self.state.next_incarnation()
        self.engine: Engine = engine or DockerEngine(config.docker_host)
        self.started = time.time()
        self.started_monotonic = time.monotonic()  # for --ready-timeout: immune to clock steps
        keys = [derive_key(secret, config.cluster) for secret in config.signing_secrets]
        self.signer = Signer(keys[0], config.cluster, self.node_id, tuple(keys[1:]))
        self.tls = node_tls(
            mode=config.tls,
            secrets=config.signing_secrets,
            cluster=config.cluster,
            node_id=self.node_id,
            data_dir=config.data_dir,
            cert_file=config.tls_cert,
            key_file=config.tls_key,
            ca_file=config.tls_ca,
        )
        self.tls_peers = TLSObserver(self.tls)
        if self.tls is not None:
            limit_tls_read_buffers()
        self.client = PeerClient(
            self.signer,
            max_message_bytes=config.max_message_bytes,
            timeout=config.peer_timeout,
            tls=TLSClient(self.tls.client, self.tls_peers, self._members_at) if self.tls else None,
        )
        self.metrics = Metrics(self._snapshot)
        self.local = LocalImages(
            config, self.engine, self.state, self._on_local_change, self._on_engine_error
        )
        self.readiness = Readiness(self._readiness_snapshot)
        # The registry's view of the mesh reads the core's view once start() has made the core.
        self.registry_view = RegistryView(zone=config.zone, publish=self.publish_local)
        self.registry = Registry(
            RegistrySettings.from_config(config),
            self.client,
            self.registry_view,
            RegistryCounters(self.metrics),
        )
        self.registry_addr = ""
        self._engine_shared: dict[str, Tags] = {}
        self._engine_metas: dict[str, ImageMeta] = {}
        self._chain_cache: dict[str, tuple[str, ...]] = {}
        # Bound in start(): the advertised address needs the listening port, which may be 0.
        self.advertise = ""
        self.core: MeshCore
        self.puller: Puller
        self.peer_api: PeerApi
        self.status_facts: StatusFacts
        self.mdns: MdnsDiscovery | None = None
        self.candidates: set[str] = set()  # addresses found by mDNS
        self.peer_addr = ""
        self.status_addr = ""
        self._wake = asyncio.Event()
        self._sends: Counter[str] = Counter()
        self._tasks: list[asyncio.Task[None]] = []
        self._send_tasks: set[asyncio.Task[None]] = set()
        self._runners: list[web.AppRunner] = []
        self._stopping = False
        self._status_due: asyncio.TimerHandle | None = None
        self._status_at = float("-inf")
        self.datagrams: GossipSocket | None = None
        self.gossip_secrets: dict[str, int] = {}  # node ID -> which held secret sealed its datagrams

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        # With an operator's PKI a certificate admits a node, which a datagram cannot show:
        # gossip stays on TLS there (docs/protocol.md).
        peer_sock, udp_sock = bind_peer_sockets(
            self.config.listen, datagrams=self.tls is None or self.tls.mode == "derived"
        )
        status_sock = bind_socket(self.config.status_listen)
        registry_sock = None
        if self.config.registry_listen != "off":
            registry_sock = bind_socket(self.config.registry_listen)
        host, _ = parse_hostport(self.config.listen)
        port = peer_sock.getsockname()[1]
        self.advertise = self.config.advertise or derive_advertise(
            format_hostport(host, port), self.config.seeds
        )
        self.core = MeshCore(
            self.config,
            self.node_id,
            self.config.node_name,
            self.advertise,
            now=time.monotonic(),
            incarnation=self.incarnation,
            manifest_version=int(time.time() * 1000),
        )
        self.registry_view.attach(self.core.view)
        self.relays = Relays(Path(self.config.data_dir) / "relay", self._status_changed)
        self.puller = Puller(
            self.config, self.core.view, self.engine, self.local, self.client, self.metrics, self.relays
        )
        self.local.mesh_layers = self._mesh_layers
        self.local.winning_sets = lambda: self.puller.plan.tagsets if self.puller.plan else {}
        self.disk = DiskKeeper(
            self.config,
            self.engine,
            self.local,
            serving=lambda: [t.image for t in self.serving.values()],
            metas=self.core.view.metas,
            registry=self.registry,
        )
        self.disk.on_evict = lambda kind, reason, size: self.metrics.evictions.labels(kind, reason).inc()
        self.puller.skip = self.disk.skip
        self.peer_api = PeerApi(
            self.on_envelope,
            self.core.view,
            self.local,
            self.engine,
            self.metrics,
            spool=Path(self.config.data_dir),
            relays=self.relays,
            on_load=self._status_changed,
            chunk_bytes=self.config.transfer_chunk_bytes,
            relay_start_timeout=self.config.transfer_idle_timeout,
        )
        peer = PeerServer(
            self.peer_api,
            self.signer,
            max_body=self.config.max_message_bytes,
            request_timeout=self.config.request_timeout,
            auth_window=self.config.auth_window,
            max_saves=self.config.max_transfers_out,
            upload_queue=self.config.upload_queue,
            tls=self.tls_peers,
            content=self.registry,
        )
        if self.config.mdns and mdns_usable(self.advertise):
            self.mdns = MdnsDiscovery(
                self.config.cluster, self.node_id, self.config.node_name, self.advertise, self._found
            )
            try:
                await self.mdns.start()
            except (OSError, ValueError) as exc:
                log.warning("mDNS unavailable (%s): finding peers through --seeds only", exc)
                self.mdns = None
        self.peer_server = peer
        self.peer_addr = await self._serve(peer.app, peer_sock, tls=True)
        if udp_sock is not None:
            sealer = Sealer(self.config.signing_secrets, self.config.cluster, self.config.auth_window)
            _, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: GossipSocket(
                    sealer,
                    self.on_datagram,
                    max_bytes=self.config.max_message_bytes,
                    on_refused=lambda reason: self.metrics.gossip_refused.labels(reason).inc(),
                ),
                sock=udp_sock,
            )
            self.datagrams = protocol
        mdns = self.mdns
        self.status_facts = StatusFacts(
            view=self.core.view,
            node_id=self.node_id,
            name=self.config.node_name,
            address=self.advertise,
            cluster=self.config.cluster,
            version=self.version,
            engine=self.config.docker_host,
            seeds=self.config.seeds,
            started=self.started,
            started_monotonic=self.started_monotonic,
            ready_timeout=self.config.ready_timeout,
            readiness=self.readiness.check,
            local=self.local,
            puller=self.puller,
            serving=lambda: self.serving.values(),
            tls=self.tls,
            tls_peers=self.tls_peers,
            gossip_secrets=self.gossip_secrets,
            mdns_found=None if mdns is None else lambda: mdns.found.values(),
            registry=lambda: self.registry.status(self.registry_addr or "off"),
            disk=self.disk.status,
        )
        sources = StatusSources(
            status=lambda: build_status(self.status_facts),
            readiness=self.readiness.check,
            engine_available=lambda: self.local.available,
            metrics=self.metrics.render,
        )
        self.status_addr = await self._serve(status_app(sources), status_sock)
        if registry_sock is not None:
            self.registry_addr = await self._serve(registry_app(self.registry), registry_sock)
            if not is_loopback(self.config.registry_listen):
                log.warning(
                    "the registry endpoint listens on %s, beyond loopback: anyone who reaches it can "
                    "push and pull without credentials",
                    self.registry_addr,
                )
        await self.registry.start()
        self.publish_local()
        server = self._runners[0].server
        assert server is not None
        self._tasks.append(asyncio.create_task(peer.sweep(server)))
        if self.tls is not None and self.tls.mode == "derived":
            self._tasks.append(asyncio.create_task(self._renew_cert()))
        loops = (
            self._core_loop(),
            self.local.run(),
            self.puller.run(),
            self._discovery_loop(),
            self.disk.run(),
        )
        for coro in loops:
            self._tasks.append(asyncio.create_task(coro))
        log.info(
            "node %s (%s) up: peers dial %s, status http://%s/, registry %s, cluster %r%s",
            self.config.node_name,
            self.node_id,
            self.advertise,
            self.status_addr,
            self.registry_addr or "off",
            self.config.cluster,
            "" if self.config.secret else " (INSECURE: no cluster secret)",
        )
        log.info("peer API: %s", self.tls_state())

    def tls_state(self) -> str:
        if self.tls is None:
            return "plain HTTP (--tls off: traffic is NOT encrypted)"
        if self.tls.mode == "operator":
            return "TLS 1.3, mutual, operator PKI (--tls-ca)"
        rotation = " (rotation: also admits the previous secret)" if len(self.tls.holds) > 1 else ""
        return f"TLS 1.3, mutual, CA derived from the cluster secret {self.tls.holds[0]}{rotation}"

    def _members_at(self, addr: str) -> set[str]:
        """Node IDs of the members at `addr`: a peer's certificate must name one of them."""
        if not hasattr(self, "core"):
            return set()
        return {i for i, m in self.core.view.peers().items() if m.addr == addr}

    async def _renew_cert(self) -> None:
        """Node certificates are short-lived: issue a fresh one well before the current one ends."""
        assert self.tls is not None
        while True:
            await asyncio.sleep(min(3600.0, CERT_RENEW_AFTER.total_seconds()))
            if self.tls.renew_due(time.time()):
                self.tls.renew(time.time())
                log.info("issued a fresh TLS certificate")

    async def _serve(self, app: web.Application, sock: socket.socket, *, tls: bool = False) -> str:
        # lingering_time=0: after a 408 or 413 the rest of an unread body is not waited for; the
        # connection is closed at once (a peer never leaves a body unread).
        runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=2.0, keepalive_timeout=30.0, lingering_time=0
        )
        await runner.setup()
        if tls and self.tls is not None:
            site: web.SockSite = TLSSockSite(
                runner,
                sock,
                ssl_context=self.tls.server,
                handshake_timeout=self.config.request_timeout,
            )
        else:
            site = web.SockSite(runner, sock)
        await site.start()
        self._runners.append(runner)
        host, port = sock.getsockname()[:2]
        return format_hostport(host, port)

    async def stop(self, *, leave: bool = True) -> None:
        """Leave the cluster (telling every live peer directly), then shut everything down."""
        if self._stopping:
            return
        self._stopping = True
        if self._status_due is not None:
            self._status_due.cancel()
        if not hasattr(self, "core"):
            await self.client.close()
            await self.engine.close()
            return
        if leave:
            self.core.leave(time.monotonic())
            incarnation = self.core.view.incarnation
            notice = wire.Envelope(
                self.node_id,
                self.advertise,
                (wire.Dead(self.node_id, incarnation, self.node_id),),
                incarnation,
            )
            peers = self.core.view.live_addrs()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await asyncio.gather(
                        *(self._send(addr, notice) for addr in peers), return_exceptions=True
                    )
        if self.mdns is not None:
            await self.mdns.stop()  # an mDNS goodbye: other browsers drop this node at once
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.puller.stop()
        await self.registry.stop()
        for task in list(self._send_tasks):
            task.cancel()
        await asyncio.gather(*self._send_tasks, return_exceptions=True)
        if self.datagrams is not None:
            self.datagrams.close()
        for runner in self._runners:
            await runner.cleanup()
        await self.client.close()
        await self.engine.close()
        log.info("node %s stopped", self.config.node_name)

    # --- the core loop ------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    async def _core_loop(self) -> None:
        while True:
            now = time.monotonic()
            self.core.tick(now)
            self._flush()
            self._handle_events()
            delay = max(0.0, self.core.next_deadline() - time.monotonic())
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that lands just as
            # the wait completes, and the loop would then outlive stop().
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            self._wake.clear()

    def _flush(self) -> None:
        for out in self.core.drain():
            self._dispatch(out)

    def _dispatch(self, out: Outgoing) -> None:
        """Send one envelope: sealed in a datagram when it fits (most gossip), else over the peer
        API in the background, unless too many requests are already in flight to that peer."""
        if self.datagrams is not None and self.config.gossip_datagrams and self._members_at(out.addr):
            # Only to members: a first contact (a seed, an mDNS find) goes over TLS, which checks
            # the peer and says why when it is refused.
            body = wire.encode(out.envelope)
            if Sealer.fits(len(body)) and self.datagrams.send(out.addr, body):
                self.metrics.gossip_datagrams.labels("out").inc()
                return
        if self._sends[out.addr] >= MAX_SENDS_PER_PEER:
            self.metrics.gossip_errors.inc()
            return
        self._sends[out.addr] += 1
        task = asyncio.create_task(self._send(out.addr, out.envelope))
        self._send_tasks.add(task)
        task.add_done_callback(self._send_tasks.discard)

    async def _send(self, addr: str, envelope: wire.Envelope) -> None:
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
            self.wake()

    def _handle_events(self) -> None:
        replan = False
        for event in self.core.drain_events():
            if isinstance(event, ManifestChanged | MetaLearned):
                replan = True
            elif isinstance(event, PeerJoined):
                member = self.core.view.peer(event.node)
                log.info(
                    "peer joined: %s (%s)",
                    member.name if member else event.node,
                    member.addr if member else "?",
                )
                replan = True
            elif isinstance(event, PeerStateChanged):
                if event.node == self.node_id:
                    continue
                member = self.core.view.peer(event.node)
                name = member.name if member else event.node
                log.info("peer %s: %s -> %s", name, event.old.label, event.new.label)
                replan = True
        if self.core.incarnation != self.incarnation:
            self.incarnation = self.core.incarnation
            self.state.save_incarnation(self.incarnation)
        if replan:
            self.local.redecide()  # what the mesh holds changed: what is worth sharing may too
            self.puller.poke()
            self.registry.poke()

    # --- the peer API ---------------------------------------------------------------------------

    def on_datagram(self, envelope: wire.Envelope, secret: int) -> None:
        """A sealed gossip datagram: what the core says back goes out as datagrams of its own."""
        self.metrics.gossip_datagrams.labels("in").inc()
        self.gossip_secrets[envelope.sender] = secret
        if not self._stopping:
            self.core.receive(envelope, time.monotonic())
            self._flush()
            self.wake()

    def on_envelope(self, envelope: wire.Envelope) -> wire.Envelope | None:
        self.core.receive(envelope, time.monotonic())
        reply: list[wire.Message] = []
        for out in self.core.drain():
            if out.addr == envelope.addr and not reply:
                reply.extend(out.envelope.messages)
            else:
                self._dispatch(out)
        self.wake()
        if not reply:
            return None
        return wire.Envelope(self.node_id, self.advertise, tuple(reply), self.core.view.incarnation)

    # --- the rest ------------------------------------------------------------------------------

    def _on_local_change(self, shared: dict[str, Tags], metas: dict[str, ImageMeta]) -> None:
        self._engine_shared, self._engine_metas = shared, metas
        self.publish_local()
        self.puller.poke()
        if hasattr(self, "disk"):
            self.disk.poke()

    def _status_changed(self) -> None:
        """Uploads or relays changed: announce the status, at most every STATUS_INTERVAL (a burst
        starts and ends many streams a second; peers need the gist, not every step)."""
        if self._status_due is not None:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, self._status_at + STATUS_INTERVAL - loop.time())
        self._status_due = loop.call_later(delay, self._publish_status)

    def _publish_status(self) -> None:
        self._status_due = None
        self._status_at = asyncio.get_running_loop().time()
        if not self._stopping:
            self.publish_local()

    def publish_local(self) -> None:
        """The local manifest: the engine's shared images, the registry's held manifests (IDs of
        their own namespace, see mesh/protocol/oci.py) and this node's transfer status (zone, load
        figure, images it relays: mesh/protocol/nodestatus.py)."""
        if not hasattr(self, "core"):
            return
        entries, metas = self.registry.announcement()
        receiving = {**self.relays.receiving(), **dict.fromkeys(self.registry.relaying(), "blob")}
        status = NodeStatus(self.config.zone, self.peer_api.uploads, receiving, self.local.tagsets)
        shared = {**self._engine_shared, **entries, status_key(self.node_id): announce(status)}
        all_metas = [*self._engine_metas.values(), *metas, status_meta(self.node_id)]
        if self.core.set_local_images(shared, all_metas, time.monotonic()):
            self.wake()

    def _mesh_layers(self) -> set[str]:
        """Chain IDs of every layer that a live peer holds (the share rule's "already in the mesh")."""
        view = self.core.view
        metas = view.metas()
        held = {
            image
            for peer in view.live_peers()
            for image, tags in view.holdings(peer.id).items()
            if not is_registry_entry(tags)
        }
        out: set[str] = set()
        for image in held:
            meta = metas.get(image)
            if meta is not None:
                chains = self._chain_cache.get(image)
                if chains is None:
                    chains = self._chain_cache[image] = tuple(chain_ids(meta.layers))
                out.update(chains)
        if len(self._chain_cache) > 4 * len(held) + 1000:  # forget images the mesh let go of
            self._chain_cache = {i: c for i, c in self._chain_cache.items() if i in held}
        return out

    def _on_engine_error(self) -> None:
        self.metrics.engine_errors.inc()

    def _found(self, addr: str) -> None:
        """mDNS saw a peer: join it now, and keep it as a candidate like a seed."""
        if addr != self.advertise:
            self.candidates.add(addr)
            self.core.join([addr], time.monotonic())
            self.wake()

    async def _discovery_loop(self) -> None:
        # Seeds are resolved again every round (a DNS name may change); the core skips addresses
        # that are already live members and retries the others at most every reconnect_interval.
        while True:
            addrs = await resolve_seeds(self.config.seeds) if self.config.seeds else []
            addrs += sorted(self.candidates)
            if addrs:
                self.core.join([a for a in addrs if a != self.advertise], time.monotonic())
                self.wake()
            await asyncio.sleep(self.config.reconnect_interval)

    @property
    def serving(self) -> dict[int, Transfer]:
        return self.peer_api.serving

    def _readiness_snapshot(self) -> ReadinessSnapshot:
        view = self.core.view
        live = [p for p in view.live_peers() if p.state is State.ALIVE]
        metas, local = view.metas(), self.local.images
        pending = next((p.name for p in live if view.manifest_pending(p.id)), "")
        return ReadinessSnapshot(
            engine_available=self.local.available,
            engine_error=self.local.last_error or "",
            scanned=self.local.scanned,
            synced=self.core.synced_with_peer,
            has_leads=bool(self.config.seeds or view.live_peers() or self.candidates),
            in_join_grace=time.time() - self.started < self.config.join_grace,
            manifest_pending=pending,
            metas_missing=any(
                i not in metas and i not in local for p in view.live_peers() for i in view.holdings(p.id)
            ),
            plan=self.puller.plan,
            registry_pending=self.registry.warm_reason(),
            since_start=time.monotonic() - self.started_monotonic,
            ready_timeout=self.config.ready_timeout,
        )

    def _snapshot(self) -> dict[str, Any]:
        states = Counter(p.state.label for p in self.core.view.peers().values())
        mesh_images = {
            i
            for held in self.core.view.all_holdings().values()
            for i, tags in held.items()
            if not is_registry_entry(tags)
        }
        plan = self.puller.plan
        return {
            "peers": {s.label: states.get(s.label, 0) for s in State},
            "images_local": len(self.local.images),
            "images_mesh": len(mesh_images),
            "ready": 1 if self.readiness.ready else 0,
            "missing": len(plan.missing) if plan else 0,
            "in_flight": len(self.puller.active),
            "registry_fetches": len(self.registry.fetcher.active),
            "incarnation": self.core.incarnation,
            "core": self.core.stats,
            "disk": self.disk.status() if hasattr(self, "disk") else None,
            "share": Counter(
                ("shared" if d.share else "local", d.code) for d in self.local.decisions.values()
            ),
        }

    @property
    def version(self) -> str:
        return __version__


def is_loopback(listen: str) -> bool:
    host, _ = parse_hostport(listen)
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def bind_peer_sockets(listen: str, *, datagrams: bool) -> tuple[socket.socket, socket.socket | None]:
    """The peer API's TCP socket and, with `datagrams`, a UDP socket on the same port number. With
    port 0 the kernel picks a free TCP port whose UDP twin may be taken: then try another."""
    attempts = 10 if parse_hostport(listen)[1] == 0 else 1
    for attempt in range(attempts):
        tcp = bind_socket(listen)
        if not datagrams:
            return tcp, None
        try:
            return tcp, bind_datagram_socket(parse_hostport(listen)[0], tcp.getsockname()[1])
        except OSError:
            tcp.close()
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def bind_socket(listen: str) -> socket.socket:
    """A listening TCP socket for host:port (port 0 picks a free one)."""
    host, port = parse_hostport(listen)
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    sock.listen(512)
    sock.setblocking(False)
    return sock

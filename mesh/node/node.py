"""One cachemesh node's lifecycle: bind, assemble (mesh/node/assemble.py), start, run, stop.

The core loop ticks the pure core at its next deadline (or when woken), sends what it drained, and
acts on its events. The changes loop publishes the local manifest when a part says it changed.
Around them run the engine watcher, the puller, the peer finder and the disk keeper. SIGTERM
leaves gracefully: peers are told directly, so they drop this node at once instead of timing it out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time

from aiohttp import web

from mesh import __version__
from mesh.config import Config
from mesh.engine.base import Engine
from mesh.engine.docker_api import DockerEngine
from mesh.engine.none import NoEngine
from mesh.hostport import format_hostport
from mesh.net.pki import CERT_RENEW_AFTER
from mesh.net.tls_contexts import TLSSockSite, limit_tls_read_buffers
from mesh.node.assemble import Parts, assemble
from mesh.node.disk import DiskKeeper
from mesh.node.local_images import LocalImages
from mesh.node.peer_api import PeerApi
from mesh.node.puller import Puller
from mesh.node.readiness import Readiness
from mesh.node.sockets import bind_sockets, is_loopback
from mesh.node.transfer import Transfer
from mesh.protocol import wire
from mesh.protocol.core import MeshCore
from mesh.protocol.events import ManifestChanged, MetaLearned, PeerJoined, PeerStateChanged
from mesh.registry.service import Registry
from mesh.ui.metrics import Metrics

log = logging.getLogger("cachemesh.node")


class NotStarted(RuntimeError):
    pass


class Node:
    def __init__(self, config: Config, engine: Engine | None = None) -> None:
        self.config = config
        self.engine: Engine = engine or (
            NoEngine() if config.engine == "off" else DockerEngine(config.docker_host)
        )
        self._parts: Parts | None = None
        self.peer_addr = self.status_addr = self.registry_addr = ""
        self._tasks: list[asyncio.Task[None]] = []
        self._runners: list[web.AppRunner] = []
        self._stopping = False
        self._incarnation = 0

    @property
    def parts(self) -> Parts:
        if self._parts is None:
            raise NotStarted("the node has not started")
        return self._parts

    # The parts that tests, the lab and the CLI look at.
    @property
    def node_id(self) -> str:
        return self.parts.core.node_id

    @property
    def advertise(self) -> str:
        return self.parts.advertise

    @property
    def core(self) -> MeshCore:
        return self.parts.core

    @property
    def local(self) -> LocalImages:
        return self.parts.local

    @property
    def puller(self) -> Puller:
        return self.parts.puller

    @property
    def registry(self) -> Registry:
        return self.parts.registry

    @property
    def disk(self) -> DiskKeeper:
        return self.parts.disk

    @property
    def metrics(self) -> Metrics:
        return self.parts.metrics

    @property
    def readiness(self) -> Readiness:
        return self.parts.readiness

    @property
    def peer_api(self) -> PeerApi:
        return self.parts.peer_api

    @property
    def serving(self) -> dict[int, Transfer]:
        return self.parts.peer_api.serving

    @property
    def version(self) -> str:
        return __version__

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        sockets = bind_sockets(self.config)
        try:
            parts = self._parts = assemble(self.config, self.engine, sockets)
        except BaseException:
            sockets.close()
            raise
        self._incarnation = parts.core.incarnation
        if parts.tls is not None:
            limit_tls_read_buffers()
        await parts.finder.start()
        self.peer_addr = await self._serve(parts.peer_server.app, sockets.peer, tls=True)
        if sockets.datagrams is not None and parts.gossip.socket is not None:
            gossip_socket = parts.gossip.socket
            await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: gossip_socket, sock=sockets.datagrams
            )
        self.status_addr = await self._serve(parts.status_app, sockets.status)
        parts.state.save_status_addr(self.status_addr)
        if parts.registry_app is not None and sockets.registry is not None:
            self.registry_addr = await self._serve(parts.registry_app, sockets.registry)
            if not is_loopback(self.config.registry_listen):
                log.warning(
                    "the registry endpoint listens on %s, beyond loopback: anyone who reaches it can "
                    "pull, and %s",
                    self.registry_addr,
                    "push with its token"
                    if self.config.registry_push_token_file
                    else "push without credentials",
                )
        await parts.registry.start()
        parts.announcer.publish()
        server = self._runners[0].server
        assert server is not None
        self._tasks.append(asyncio.create_task(parts.peer_server.sweep(server)))
        if parts.tls is not None and parts.tls.mode == "derived":
            self._tasks.append(asyncio.create_task(self._renew_cert()))
        loops = (
            self._core_loop(),
            self._changes_loop(),
            parts.local.run(),
            parts.finder.run(),
            parts.disk.run(),
            # An engine-less node (--engine off) pulls no images: it shares registry content only.
            *([parts.puller.run()] if self.config.engine != "off" else []),
        )
        for coro in loops:
            self._tasks.append(asyncio.create_task(coro))
        log.info(
            "node %s (%s) up: peers dial %s, status http://%s/, registry %s, cluster %r%s",
            self.config.node_name,
            self.node_id,
            parts.advertise,
            self.status_addr,
            self.registry_addr or "off",
            self.config.cluster,
            "" if self.config.secret else " (INSECURE: no cluster secret)",
        )
        log.info("peer API: %s", self.tls_state())

    def tls_state(self) -> str:
        tls = self.parts.tls
        if tls is None:
            return "plain HTTP (--tls off: traffic is NOT encrypted)"
        if tls.mode == "operator":
            return "TLS 1.3, mutual, operator PKI (--tls-ca)"
        rotation = " (rotation: also admits the previous secret)" if len(tls.holds) > 1 else ""
        return f"TLS 1.3, mutual, CA derived from the cluster secret {tls.holds[0]}{rotation}"

    async def _renew_cert(self) -> None:
        """Node certificates are short-lived: issue a fresh one well before the current one ends."""
        tls = self.parts.tls
        assert tls is not None
        while True:
            await asyncio.sleep(min(3600.0, CERT_RENEW_AFTER.total_seconds()))
            if tls.renew_due(time.time()):
                tls.renew(time.time())
                log.info("issued a fresh TLS certificate")

    async def _serve(self, app: web.Application, sock: socket.socket, *, tls: bool = False) -> str:
        # lingering_time=0: after a 408 or 413 the rest of an unread body is not waited for; the
        # connection is closed at once (a peer never leaves a body unread).
        runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=2.0, keepalive_timeout=30.0, lingering_time=0
        )
        await runner.setup()
        self._runners.append(runner)
        node_tls = self.parts.tls
        if tls and node_tls is not None:
            site: web.SockSite = TLSSockSite(
                runner,
                sock,
                ssl_context=node_tls.server,
                handshake_timeout=self.config.request_timeout,
            )
        else:
            site = web.SockSite(runner, sock)
        await site.start()
        host, port = sock.getsockname()[:2]
        return format_hostport(host, port)

    async def stop(self, *, leave: bool = True) -> None:
        """Leave the cluster (telling every live peer directly), then shut everything down."""
        if self._stopping:
            return
        self._stopping = True
        parts = self._parts
        if parts is None:  # never started, or binding failed
            await self.engine.close()
            return
        parts.announcer.stop()
        if leave:
            await self._leave(parts)
        await parts.finder.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await parts.puller.stop()
        await parts.registry.stop()
        await parts.gossip.stop()
        for runner in self._runners:
            await runner.cleanup()
        parts.sockets.close()  # the ones no server took (a start that failed half way)
        await parts.client.close()
        await self.engine.close()
        log.info("node %s stopped", self.config.node_name)

    async def _leave(self, parts: Parts) -> None:
        parts.core.leave(time.monotonic())
        incarnation = parts.core.view.incarnation
        notice = wire.Envelope(
            self.node_id, parts.advertise, (wire.Dead(self.node_id, incarnation, self.node_id),), incarnation
        )
        peers = parts.core.view.live_addrs()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await asyncio.gather(
                    *(parts.gossip.send(addr, notice) for addr in peers), return_exceptions=True
                )

    # --- loops ---------------------------------------------------------------------------------

    def wake(self) -> None:
        self.parts.gossip.wake.set()

    async def _core_loop(self) -> None:
        parts = self.parts
        core, wake = parts.core, parts.gossip.wake
        while True:
            core.tick(time.monotonic())
            parts.gossip.flush()
            self._handle_events(parts)
            delay = max(0.0, core.next_deadline() - time.monotonic())
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that lands just as
            # the wait completes, and the loop would then outlive stop().
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await wake.wait()
            wake.clear()

    def _handle_events(self, parts: Parts) -> None:
        core = parts.core
        replan = False
        for event in core.drain_events():
            if isinstance(event, ManifestChanged | MetaLearned):
                replan = True
            elif isinstance(event, PeerJoined):
                member = core.view.peer(event.node)
                log.info(
                    "peer joined: %s (%s)",
                    member.name if member else event.node,
                    member.addr if member else "?",
                )
                replan = True
            elif isinstance(event, PeerStateChanged):
                if event.node == self.node_id:
                    continue
                member = core.view.peer(event.node)
                name = member.name if member else event.node
                log.info("peer %s: %s -> %s", name, event.old.label, event.new.label)
                replan = True
        if core.incarnation != self._incarnation:  # refuted a suspicion: survive a restart with it
            self._incarnation = core.incarnation
            parts.state.save_incarnation(core.incarnation)
        if replan:
            parts.local.redecide()  # what the mesh holds changed: what is worth sharing may too
            parts.puller.poke()
            parts.registry.poke()

    async def _changes_loop(self) -> None:
        parts = self.parts
        while True:
            rung = await parts.changes.next()
            if rung.engine or rung.manifest:
                parts.announcer.publish()
            if rung.engine:
                parts.puller.poke()
                parts.disk.poke()
            if rung.status:
                parts.announcer.status_changed()

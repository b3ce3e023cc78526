"""Every part of a node, built in one pass: each with its collaborators passed in, none patched
afterwards. Read top to bottom, this is the node's wiring; `Node` (mesh/node/node.py) only starts,
runs and stops what is built here.

Callbacks that point at parts made later go through `Changes` (rung by the early parts, acted on
by the node's loop) and `LatestPlan` (written by the puller, read by the engine watcher).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from mesh import __version__
from mesh.config import Config
from mesh.discovery.addresses import derive_advertise
from mesh.engine.base import Engine
from mesh.engine.none import OFF as NO_ENGINE
from mesh.hostport import format_hostport, parse_hostport
from mesh.net.auth import Signer, derive_key
from mesh.net.client import PeerClient
from mesh.net.datagram import Sealer
from mesh.net.server import PeerServer
from mesh.net.tls_contexts import NodeTLS, node_tls
from mesh.net.tls_peers import TLSClient, TLSObserver
from mesh.net.trust_keys import TrustKeys
from mesh.node.announcer import Announcer
from mesh.node.changes import Changes
from mesh.node.disk import DiskKeeper
from mesh.node.finder import PeerFinder
from mesh.node.gossip import Gossip, members_at
from mesh.node.latest_plan import LatestPlan
from mesh.node.local_images import LocalImages
from mesh.node.mesh_layers import MeshLayers
from mesh.node.peer_api import PeerApi
from mesh.node.persistence import NodeState
from mesh.node.puller import Puller
from mesh.node.readiness import Readiness, ReadinessSnapshot
from mesh.node.registry_view import RegistryCounters, RegistryView
from mesh.node.relay import Relays
from mesh.node.sockets import Sockets
from mesh.node.status import StatusFacts, build_status
from mesh.node.trust_view import TrustView
from mesh.protocol.core import MeshCore
from mesh.protocol.liveness import State
from mesh.protocol.oci import is_registry_entry
from mesh.protocol.planner import Plan
from mesh.registry.ports import RegistrySettings
from mesh.registry.push_auth import PushAuth
from mesh.registry.router import registry_app
from mesh.registry.service import Registry
from mesh.ui.metrics import Metrics
from mesh.ui.status_doc import MetricsSnapshot
from mesh.ui.status_page import StatusSources, status_app


@dataclass(frozen=True)
class Parts:
    config: Config
    engine: Engine
    sockets: Sockets
    state: NodeState
    started: float  # wall clock, for the uptime
    started_monotonic: float  # for --ready-timeout: immune to clock steps
    advertise: str  # the address peers dial
    signer: Signer
    tls: NodeTLS | None
    tls_peers: TLSObserver
    core: MeshCore
    client: PeerClient
    metrics: Metrics
    gossip: Gossip
    changes: Changes
    relays: Relays
    local: LocalImages
    registry: Registry
    peer_api: PeerApi
    peer_server: PeerServer
    disk: DiskKeeper
    puller: Puller
    finder: PeerFinder
    announcer: Announcer
    readiness: Readiness
    status_facts: StatusFacts
    metrics_snapshot: Callable[[], MetricsSnapshot]  # the gauges, read at each scrape
    status_app: web.Application
    registry_app: web.Application | None


def assemble(config: Config, engine: Engine, sockets: Sockets) -> Parts:
    state = NodeState(config.data_dir)
    node_id = state.node_id()
    incarnation = state.next_incarnation()
    started, started_monotonic = time.time(), time.monotonic()
    host, _ = parse_hostport(config.listen)
    advertise = config.advertise or derive_advertise(
        format_hostport(host, sockets.peer.getsockname()[1]), config.seeds
    )

    keys = [derive_key(secret, config.cluster) for secret in config.signing_secrets]
    signer = Signer(keys[0], config.cluster, node_id, tuple(keys[1:]))
    tls = node_tls(
        mode=config.tls,
        secrets=config.signing_secrets,
        cluster=config.cluster,
        node_id=node_id,
        data_dir=config.data_dir,
        cert_file=config.tls_cert,
        key_file=config.tls_key,
        ca_file=config.tls_ca,
    )
    metrics = Metrics()
    tls_peers = TLSObserver(tls, on_failure=metrics.tls_failed)
    trust_keys = TrustKeys.load(config.cluster, config.trust_key, config.trust_pub)
    registry_settings = RegistrySettings.from_config(config)

    core = MeshCore(
        config.timings,
        node_id,
        config.node_name,
        advertise,
        now=started_monotonic,
        incarnation=incarnation,
        manifest_version=int(started * 1000),
        sign=trust_keys.sign if trust_keys is not None and trust_keys.trusted else None,
    )
    view = core.view
    trust = TrustView(view, trust_keys, config.protect, on_refused=metrics.claim_refused)
    client = PeerClient(
        signer,
        max_message_bytes=config.max_message_bytes,
        timeout=config.peer_timeout,
        tls=TLSClient(tls.client, tls_peers, lambda addr: members_at(core, addr)) if tls else None,
    )
    gossip = Gossip(
        core,
        client,
        metrics,
        advertise=advertise,
        sealer=(
            Sealer(config.signing_secrets, config.cluster, config.auth_window)
            if sockets.datagrams is not None
            else None
        ),
        max_message_bytes=config.max_message_bytes,
        datagrams=config.gossip_datagrams,
    )

    changes = Changes()
    latest_plan = LatestPlan()
    relays = Relays(Path(config.data_dir) / "relay", on_change=changes.status_changed)
    local = LocalImages(
        config,
        engine,
        state,
        on_change=changes.engine_changed,
        on_error=metrics.engine_errors.inc,
        mesh_layers=MeshLayers(view),
        winning_sets=latest_plan.tagsets,
    )
    registry = Registry(
        registry_settings,
        client,
        RegistryView(view, zone=config.zone, publish=changes.manifest_changed, trust=trust),
        RegistryCounters(metrics),
    )
    peer_api = PeerApi(
        gossip.on_envelope,
        view,
        local,
        engine,
        metrics,
        spool=Path(config.data_dir),
        relays=relays,
        on_load=changes.status_changed,
        chunk_bytes=config.transfer_chunk_bytes,
        relay_start_timeout=config.transfer_idle_timeout,
    )
    peer_server = PeerServer(
        peer_api,
        signer,
        max_body=config.max_message_bytes,
        request_timeout=config.request_timeout,
        auth_window=config.auth_window,
        max_saves=config.max_transfers_out,
        upload_queue=config.upload_queue,
        tls=tls_peers,
        content=registry,
    )
    disk = DiskKeeper(
        config,
        engine,
        local,
        serving=lambda: [t.image for t in peer_api.serving.values()],
        metas=view.metas,
        registry=registry,
        on_evict=metrics.evicted,
    )
    puller = Puller(
        config,
        view,
        engine,
        local,
        client,
        metrics,
        relays=relays,
        latest=latest_plan,
        skip=disk.skip,
        trust=trust,
    )
    finder = PeerFinder(
        core,
        gossip.wake,
        cluster=config.cluster,
        name=config.node_name,
        advertise=advertise,
        seeds=config.seeds,
        mdns=config.mdns,
        interval=config.reconnect_interval,
    )
    announcer = Announcer(
        core,
        gossip.wake,
        zone=config.zone,
        local=local,
        registry=registry,
        relays=relays,
        peer_api=peer_api,
    )

    # With --engine off the node holds no images and wants none: nothing to pull, so the image
    # plan never holds its warm-up (the registry's warm-up, --registry-warm, still does).
    nothing_to_pull = Plan([], [], [], [])
    pulls_images = config.engine != "off"

    def readiness_inputs() -> ReadinessSnapshot:
        live = [p for p in view.live_peers() if p.state is State.ALIVE]
        metas, images = view.metas(), local.images
        return ReadinessSnapshot(
            engine_available=local.available,
            engine_error=local.last_error or "",
            scanned=local.scanned,
            synced=core.synced_with_peer,
            has_leads=finder.has_leads,
            answered=bool(view.live_peers()),
            in_join_grace=time.time() - started < config.join_grace,
            manifest_pending=next((p.name for p in live if view.manifest_pending(p.id)), ""),
            metas_missing=any(
                i not in metas and i not in images for p in view.live_peers() for i in view.holdings(p.id)
            ),
            plan=puller.plan if pulls_images else nothing_to_pull,
            registry_pending=registry.warm_reason(),
            since_start=time.monotonic() - started_monotonic,
            ready_timeout=config.ready_timeout,
        )

    readiness = Readiness(readiness_inputs)

    def metrics_snapshot() -> MetricsSnapshot:
        states = Counter(p.state.label for p in view.peers().values())
        mesh_images = {
            i
            for held in view.all_holdings().values()
            for i, tags in held.items()
            if not is_registry_entry(tags)
        }
        plan = puller.plan
        return {
            "peers": {s.label: states.get(s.label, 0) for s in State},
            "images_local": len(local.images),
            "images_mesh": len(mesh_images),
            "ready": 1 if readiness.ready else 0,
            "missing": len(plan.missing) if plan else 0,
            "in_flight": len(puller.active),
            "registry_fetches": len(registry.fetcher.active),
            "incarnation": core.incarnation,
            "core": core.stats,
            "disk": disk.status(),
            "share": Counter(("shared" if d.share else "local", d.code) for d in local.decisions.values()),
        }

    mdns = finder.mdns
    push_auth = PushAuth(registry_settings.push_token) if registry_settings.push_token else None
    registry_addr = _address(sockets.registry) if sockets.registry is not None else "off"
    status_facts = StatusFacts(
        view=view,
        node_id=node_id,
        name=config.node_name,
        address=advertise,
        cluster=config.cluster,
        version=__version__,
        engine=config.docker_host if pulls_images else NO_ENGINE,
        seeds=config.seeds,
        started=started,
        started_monotonic=started_monotonic,
        ready_timeout=config.ready_timeout,
        readiness=readiness.check,
        local=local,
        puller=puller,
        serving=lambda: peer_api.serving.values(),
        tls=tls,
        tls_peers=tls_peers,
        gossip_secrets=gossip.secrets,
        clock_offsets=gossip.clock_offsets,
        clock_refused=lambda: gossip.socket.clock_off if gossip.socket is not None else {},
        mdns_found=None if mdns is None else lambda: mdns.found.values(),
        registry=lambda: registry.status(registry_addr),
        disk=disk.status,
        trust=trust,
        trust_fingerprints=trust_keys.fingerprints if trust_keys is not None else (),
        push_token=bool(registry_settings.push_token),
    )
    sources = StatusSources(
        status=lambda: build_status(status_facts),
        readiness=readiness.check,
        engine_available=lambda: local.available,
        metrics=lambda: metrics.render(metrics_snapshot()),
    )
    return Parts(
        config=config,
        engine=engine,
        sockets=sockets,
        state=state,
        started=started,
        started_monotonic=started_monotonic,
        advertise=advertise,
        signer=signer,
        tls=tls,
        tls_peers=tls_peers,
        core=core,
        client=client,
        metrics=metrics,
        gossip=gossip,
        changes=changes,
        relays=relays,
        local=local,
        registry=registry,
        peer_api=peer_api,
        peer_server=peer_server,
        disk=disk,
        puller=puller,
        finder=finder,
        announcer=announcer,
        readiness=readiness,
        status_facts=status_facts,
        metrics_snapshot=metrics_snapshot,
        status_app=status_app(sources),
        registry_app=registry_app(registry, push_auth) if sockets.registry is not None else None,
    )


def _address(sock: Any) -> str:
    host, port = sock.getsockname()[:2]
    return format_hostport(host, port)

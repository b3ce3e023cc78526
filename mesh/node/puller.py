"""Runs the planner against the live state and carries out its decisions: pulls and tag moves."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from mesh.config import Config
from mesh.engine.base import Engine, EngineError, chain_ids, prefix_held
from mesh.net.client import HandedOff, PeerBusy, PeerClient
from mesh.node.latest_plan import LatestPlan
from mesh.node.local_images import LocalImages
from mesh.node.relay import Relays, Spool
from mesh.node.transfer import DeltaRefused, Transfer, TransferFailed, pull_image
from mesh.node.trust_view import TrustView
from mesh.node.warmup import RateMeter, WarmupProgress, progress
from mesh.protocol import planner
from mesh.protocol.formulas import backoff
from mesh.protocol.liveness import State
from mesh.protocol.planner import Failure, Plan, Pull
from mesh.protocol.sources import Penalty, penalise, worth_relaying
from mesh.protocol.view import MeshView, PeerInfo
from mesh.protocol.wire import ImageMeta
from mesh.ui.metrics import Metrics

log = logging.getLogger("cachemesh.pull")

FAILOVER_PAUSE = 0.5
"""Seconds before a pull that failed once is retried, from the best-ranked other source."""
SUSPECT_SILENCE = 2.0
"""Seconds without bytes after which a pull from a source the mesh suspects fails over."""
MAX_HANDOFFS = 32
"""Hand-offs followed in one attempt; then the last relay is asked to serve. A burst's hand-offs
make a chain of sources.CHAIN_DEPTH hops and then a binary tree (mesh/protocol/sources.py), so
32 leaves room for 2^26 receivers and still ends a loop of hand-offs between confused nodes."""


class _PlanAgain(Exception):
    """A refused delta came from a relay the plan chose, and no holder is known here to pull it
    from in full: end this attempt (not a failure) and let the next plan choose a full source."""


class Puller:
    def __init__(
        self,
        config: Config,
        view: MeshView,
        engine: Engine,
        local: LocalImages,
        client: PeerClient,
        metrics: Metrics,
        *,
        relays: Relays,
        latest: LatestPlan,
        skip: Callable[[list[str]], Mapping[str, str]],
        trust: TrustView | None = None,
    ) -> None:
        """`latest`: where each plan goes once made; `skip`: of the images a plan wants, those not
        to pull (they do not fit the disk budget); `trust`: the tag claims this node believes
        (mesh.node.trust_view; none: every claim)."""
        self.config = config
        self.trust = trust or TrustView(view, None)
        self.relays = relays
        self.penalties: dict[str, Penalty] = {}  # peer -> its recent failures (any image)
        self.store = ""  # the engine's image store, once known: relays serve only their own
        self.view = view
        self.engine = engine
        self.local = local
        self.client = client
        self.metrics = metrics
        self.active: dict[str, Transfer] = {}
        self.recent: deque[Transfer] = deque(maxlen=50)
        self.failures: dict[str, Failure] = {}
        # Images whose delta the engine refused: planned and pulled in full until held.
        self.full: set[str] = set()
        self._chains: dict[str, tuple[str, ...]] = {}  # image -> its chain IDs (for `have`)
        self._latest = latest
        # For the warm-up's progress: every image found missing since start, the bytes received.
        self.wanted: set[str] = set()
        self.received = 0
        self.meter = RateMeter()
        self.skip = skip
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()

    @property
    def plan(self) -> Plan | None:
        return self._latest.plan

    @plan.setter
    def plan(self, plan: Plan) -> None:
        self._latest.plan = plan

    def poke(self) -> None:
        self._wake.set()

    def compute(self) -> Plan:
        view = self.view
        peers = {}
        for i, p in view.peers().items():
            status = view.status(i)
            peers[i] = planner.Peer(
                i,
                p.state is State.ALIVE,
                p.rtt,
                status.zone,
                status.uploads,
                status.receiving,
                status.relay_have,
            )
        trust = self.trust
        remote = {node: trust.holdings(node) for node, peer in peers.items() if peer.alive}
        remote_sets = {node: trust.tagsets(node) for node in remote}
        local_tags = self.local.tags()
        local_claims = trust.local_claims(local_tags)
        now = time.monotonic()
        self.penalties = {p: penalty for p, penalty in self.penalties.items() if penalty.until > now}
        metas = {**view.metas(), **self.local.metas()}
        have = self._haves(metas)

        def plan(evicted: Mapping[str, str]) -> Plan:
            return planner.plan(
                local=local_tags,
                local_claims=local_claims,
                remote=remote,
                metas=metas,
                peers=peers,
                in_flight={i: t.peer for i, t in self.active.items()},
                failures=self.failures,
                evicted=evicted,
                include=self.config.include,
                exclude=self.config.exclude,
                max_pulls=self.config.max_transfers_in,
                max_attempts=self.config.max_attempts,
                now=now,
                me=view.node_id,
                zone=self.config.zone,
                store=self.store,
                penalties=self.penalties,
                local_sets=trust.local_sets(self.local.tagsets),
                remote_sets=remote_sets,
                brought=self.local.brought.keys(),
                have=have,
            )

        first = plan(self.local.evicted)
        self.full &= {*first.missing, *self.active}
        # What does not fit the disk budget is treated like an evicted image: not pulled, not waited
        # for. Pulls under way count: they will be held (the budget evicts later if need be).
        skip = {i: v for i, v in self.skip(first.missing).items() if i not in self.active}
        return plan({**self.local.evicted, **skip}) if skip else first

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._wake.wait()
            self._wake.clear()
            if not self.local.scanned or not self.local.available:
                continue
            if not self.store:
                try:
                    self.store = (await self.engine.info()).store
                except EngineError:
                    continue
            self.plan = plan = self.compute()
            self.wanted.update(plan.missing)
            for action in plan.tags:
                try:
                    await self.engine.tag(action.image, action.tag)
                    self.local.note_tagged(action.image, action.tag)
                    why = "rollback of" if action.tag in plan.tagsets else "newest for"
                    log.info("tagged %s as %s (the mesh's %s that tag)", action.image[:19], action.tag, why)
                except EngineError as exc:
                    self.metrics.engine_errors.inc()
                    log.warning("cannot tag %s as %s: %s", action.image[:19], action.tag, exc)
            for pull in plan.pulls:
                member = self.view.peer(pull.source)
                if member is None:
                    continue
                record = Transfer(
                    pull.image, pull.tags, member.addr, member.name, "in", pull.size, relay=pull.via_relay
                )
                # In flight from now, not from when the task first runs: the next plan may be
                # computed before that, and must not start the same pull again.
                self.active[pull.image] = record
                task = asyncio.create_task(self._pull(pull, member, record))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _haves(self, metas: Mapping[str, ImageMeta]) -> dict[str, int]:
        """image -> how many of its leading layers this engine holds (by chain ID), for images not
        held here: what a pull of it asks to be left out, and which relays can serve it. 0 for an
        image whose delta the engine refused."""
        held = self.local.held_chains()
        self._chains = {i: c for i, c in self._chains.items() if i in metas}
        have: dict[str, int] = {}
        for image, meta in metas.items():
            if image in self.local.images or image in self.full:
                continue
            chains = self._chains.get(image)
            if chains is None:
                chains = self._chains[image] = tuple(chain_ids(meta.layers))
            have[image] = prefix_held(chains, held)
        return have

    async def _pull(self, pull: Pull, member: PeerInfo, record: Transfer) -> None:
        have = 0 if pull.image in self.full else pull.have  # what the plan chose the source for
        failure = self.failures.get(pull.image)
        source, hops = pull.source, 0
        spools: list[Spool] = []
        try:
            # A source may hand this pull on to a relay of the image (a burst's chain, see
            # mesh/protocol/sources.py); after a failure, sources are asked to serve it themselves.
            # Each turn follows a hand-off (at most MAX_HANDOFFS in a row) or, once, takes a
            # refused delta back to a source of a full stream.
            for _turn in range(2 * (MAX_HANDOFFS + 1)):
                log.info(
                    "pulling %s %s from %s (%s)%s",
                    pull.image[:19],
                    ",".join(pull.tags) or "",
                    member.name,
                    member.addr,
                    " as it relays it" if record.relay else "",
                )
                try:
                    chain = await self._watched(
                        source,
                        record,
                        pull_image(
                            self.engine,
                            self.client,
                            pull,
                            member.addr,
                            record,
                            have=have,
                            chunk_bytes=self.config.transfer_chunk_bytes,
                            idle_timeout=self.config.transfer_idle_timeout,
                            on_bytes=self._received,
                            open_spool=functools.partial(self._open_spool, pull.image, source, spools),
                            handoff=failure is None and hops < MAX_HANDOFFS,
                            hops=hops,
                            queue_wait=self.config.transfer_queue_wait,
                        ),
                    )
                    break
                except HandedOff as handed:
                    relay = self.view.peer(handed.relay)
                    if relay is None or relay.state not in (State.ALIVE, State.SUSPECT):
                        raise TransferFailed(f"{member.name} handed the pull to an unknown relay") from None
                    log.info(
                        "%s handed %s on to %s, which relays it", member.name, pull.image[:19], relay.name
                    )
                    self.metrics.handoffs.inc()
                    source, member, hops = handed.relay, relay, hops + 1
                    record.peer, record.peer_name, record.relay = relay.addr, relay.name, True
                    record.done = 0
                except DeltaRefused as refused:
                    have = 0
                    self.full.add(pull.image)
                    self.metrics.delta_fallbacks.inc()
                    source, member = self._full_source(pull, source, member, record, refused.reason)
                    record.peer, record.peer_name, record.relay = member.addr, member.name, False
                    record.done, hops = 0, 0
            else:
                raise TransferFailed(f"{pull.image[:19]}: sources kept handing the pull on")
        except _PlanAgain as again:
            record.outcome, record.error = "replanned", str(again)
        except (TransferFailed, PeerBusy) as exc:
            record.outcome, record.error = "failed", str(exc)
            self._failed(pull, source, member.name, exc)
        else:
            record.outcome = "ok"
            self.failures.pop(pull.image, None)
            self.full.discard(pull.image)
            self.local.note_brought(list(chain), time.time())
            try:
                await self.local.rescan()  # so the next plan sees the image here, not as missing
            except EngineError as exc:
                log.warning("rescan after pull failed: %s", exc)
            self.metrics.transfers.labels("in", "ok").inc()
            self.metrics.transfer_seconds.observe(time.time() - record.started)
            log.info(
                "pulled %s (%d images in chain, %.1f MB, %.1f MB/s) from %s%s",
                pull.image[:19],
                len(chain),
                record.done / 1e6,
                record.rate / 1e6,
                member.name,
                " (a relay)" if record.relay else "",
            )
        finally:
            for spool in spools:
                self.relays.close(spool)
            record.finished = time.time()
            self.active.pop(pull.image, None)
            self.recent.appendleft(record)
            self.poke()  # plan again: the next pull may start, or this one be retried

    def _full_source(
        self, pull: Pull, source: str, member: PeerInfo, record: Transfer, reason: str
    ) -> tuple[str, PeerInfo]:
        """Where a pull whose delta the engine refused goes in full: the source itself when it
        holds the image; from a relay (whose stream may leave layers out, and which refuses a
        requester holding fewer), back to the holder that handed the pull on to it; when the plan
        chose the relay, the next plan (_PlanAgain), which with `have` 0 weighs only holders and
        relays of full streams."""
        if not record.relay:
            target: tuple[str, PeerInfo] | None = (source, member)
        elif not pull.via_relay and (holder := self.view.peer(pull.source)) is not None:
            target = (pull.source, holder)
        else:
            target = None
        where = f"from {target[1].name}" if target else "from a source of a full stream"
        log.warning(
            "engine refused a delta of %s from %s (%s); pulling it in full %s",
            pull.image[:19],
            member.name,
            reason,
            where,
        )
        if target is None:
            raise _PlanAgain(f"the engine refused the delta from relay {member.name}: planned again, in full")
        return target

    def _received(self, n: int) -> None:
        self.metrics.transfer_bytes.labels("in").inc(n)
        self.received += n
        self.meter.add(time.monotonic(), n)

    def progress(self) -> WarmupProgress:
        plan = self.plan
        return progress(
            wanted=self.wanted,
            held=self.local.images.keys(),
            missing=plan.missing if plan else (),
            given_up=plan.given_up if plan else (),
            metas={**self.view.metas(), **self.local.metas()},
            in_flight={i: t.done for i, t in self.active.items()},
            received=self.received,
            rate=self.meter.rate(time.monotonic()),
        )

    def _failed(self, pull: Pull, source: str, name: str, exc: Exception) -> None:
        now = time.monotonic()
        failure = self.failures.setdefault(pull.image, Failure(0, 0.0))
        failure.attempts += 1
        failure.bad_sources.add(source)
        # The first failure fails over after a short pause (the planner then ranks the failed
        # source last); repeated failures back off.
        delay = backoff(failure.attempts - 1, self.config.retry_backoff, self.config.retry_backoff_max)
        delay = max(delay, FAILOVER_PAUSE)
        if isinstance(exc, PeerBusy):
            delay = max(delay, exc.retry_after)  # busy is not a fault: no penalty, but respect the ask
        else:
            # A peer that fails repeatedly loses preference for a while, for every image.
            self.penalties[source] = penalise(
                self.penalties.get(source), now, self.config.retry_backoff * 4, self.config.retry_backoff_max
            )
            self.metrics.failovers.inc()
        failure.retry_at = now + delay
        asyncio.get_running_loop().call_later(delay, self.poke)  # plan again as soon as it may retry
        self.metrics.transfers.labels("in", "failed").inc()
        log.warning(
            "pull of %s from %s failed (attempt %d): %s", pull.image[:19], name, failure.attempts, exc
        )

    def _open_spool(
        self, image: str, source: str, spools: list[Spool], store: str, have: int
    ) -> Spool | None:
        others = {p.id: self.view.holdings(p.id).keys() for p in self.view.live_peers()}
        if not worth_relaying(image, source, others):
            return None
        spool = self.relays.open(image, store, have)
        spools.append(spool)
        return spool

    async def _watched(
        self, source: str, record: Transfer, pulling: Coroutine[Any, Any, list[str]]
    ) -> list[str]:
        """Run a pull, cut short when the mesh declares its source dead or gone, or suspects it
        while its stream has been silent for SUSPECT_SILENCE: a stopped source sends nothing, and
        the mesh's failure detector notices that sooner than a generous idle timeout would (and
        also while the pull still waits in the source's queue, where no idle timeout runs)."""
        task = asyncio.ensure_future(pulling)
        loop = asyncio.get_running_loop()
        seen, progress_at = record.done, loop.time()
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=0.25)
                if done:
                    return task.result()
                if record.done != seen:
                    seen, progress_at = record.done, loop.time()
                peer = self.view.peer(source)
                silent = loop.time() - progress_at
                if peer is None or peer.state in (State.DEAD, State.LEFT):
                    reason = f"the source {peer.name if peer else source} left the mesh or died"
                elif peer.state is State.SUSPECT and silent >= SUSPECT_SILENCE:
                    reason = f"the source {peer.name} is suspect and sent nothing for {silent:.0f}s"
                else:
                    continue
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                raise TransferFailed(reason)
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

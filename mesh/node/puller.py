"""Runs the planner against the live state and carries out its decisions: pulls and tag moves."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping

from mesh.config import Config
from mesh.engine.base import Engine, EngineError, held_prefix
from mesh.net.client import PeerClient
from mesh.node.local_images import LocalImages
from mesh.node.transfer import Transfer, TransferFailed, pull_image
from mesh.protocol import planner
from mesh.protocol.formulas import backoff
from mesh.protocol.liveness import State
from mesh.protocol.planner import Failure, Plan, Pull
from mesh.protocol.view import MeshView
from mesh.ui.metrics import Metrics

log = logging.getLogger("cachemesh.pull")


class Puller:
    def __init__(
        self,
        config: Config,
        view: MeshView,
        engine: Engine,
        local: LocalImages,
        client: PeerClient,
        metrics: Metrics,
    ) -> None:
        self.config = config
        self.view = view
        self.engine = engine
        self.local = local
        self.client = client
        self.metrics = metrics
        self.active: dict[str, Transfer] = {}
        self.recent: deque[Transfer] = deque(maxlen=50)
        self.failures: dict[str, Failure] = {}
        self.plan: Plan | None = None
        self.skip: Callable[[list[str]], Mapping[str, str]] = lambda wanted: {}
        """Of the images a plan wants, those not to pull (they do not fit the disk budget)."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()

    def poke(self) -> None:
        self._wake.set()

    def compute(self) -> Plan:
        view = self.view
        peers = {i: planner.Peer(i, p.state is State.ALIVE, p.rtt) for i, p in view.peers().items()}
        remote = {node: view.holdings(node) for node, peer in peers.items() if peer.alive}
        metas = {**view.metas(), **self.local.metas()}

        def plan(evicted: Mapping[str, str]) -> Plan:
            return planner.plan(
                local=self.local.tags(),
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
                now=time.monotonic(),
            )

        first = plan(self.local.evicted)
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
            self.plan = self.compute()
            for action in self.plan.tags:
                try:
                    await self.engine.tag(action.image, action.tag)
                    log.info(
                        "tagged %s as %s (the mesh's newest for that tag)", action.image[:19], action.tag
                    )
                except EngineError as exc:
                    self.metrics.engine_errors.inc()
                    log.warning("cannot tag %s as %s: %s", action.image[:19], action.tag, exc)
            for pull in self.plan.pulls:
                task = asyncio.create_task(self._pull(pull))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _pull(self, pull: Pull) -> None:
        member = self.view.peer(pull.source)
        if member is None:
            return
        record = Transfer(pull.image, pull.tags, member.addr, member.name, "in", pull.size)
        self.active[pull.image] = record
        log.info(
            "pulling %s %s from %s (%s)", pull.image[:19], ",".join(pull.tags) or "", member.name, member.addr
        )
        meta = self.view.metas().get(pull.image)
        have = held_prefix(meta.layers, self.local.held_chains()) if meta else 0
        try:
            chain = await pull_image(
                self.engine,
                self.client,
                pull,
                member.addr,
                record,
                have=have,
                on_fallback=self.metrics.delta_fallbacks.inc,
                chunk_bytes=self.config.transfer_chunk_bytes,
                idle_timeout=self.config.transfer_idle_timeout,
                on_bytes=self.metrics.transfer_bytes.labels("in").inc,
            )
        except TransferFailed as exc:
            record.outcome, record.error = "failed", str(exc)
            failure = self.failures.setdefault(pull.image, Failure(0, 0.0))
            failure.attempts += 1
            failure.bad_sources.add(pull.source)
            failure.retry_at = time.monotonic() + backoff(
                failure.attempts, self.config.retry_backoff, self.config.retry_backoff_max
            )
            self.metrics.transfers.labels("in", "failed").inc()
            log.warning(
                "pull of %s from %s failed (attempt %d): %s",
                pull.image[:19],
                member.name,
                failure.attempts,
                exc,
            )
        else:
            record.outcome = "ok"
            self.failures.pop(pull.image, None)
            self.local.note_brought(list(chain), time.time())
            try:
                await self.local.rescan()  # so the next plan sees the image here, not as missing
            except EngineError as exc:
                log.warning("rescan after pull failed: %s", exc)
            self.metrics.transfers.labels("in", "ok").inc()
            self.metrics.transfer_seconds.observe(time.time() - record.started)
            log.info(
                "pulled %s (%d images in chain, %.1f MB, %.1f MB/s) from %s",
                pull.image[:19],
                len(chain),
                record.done / 1e6,
                record.rate / 1e6,
                member.name,
            )
        finally:
            record.finished = time.time()
            self.active.pop(pull.image, None)
            self.recent.appendleft(record)
            self.poke()  # plan again: the next pull may start, or this one be retried

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

"""The soak: a fleet of namespaced hosts (a private dockerd and a node process each) run through a
seeded schedule of builds, pushes and faults, watched all along (docs/testing.md#soak).

This module is the I/O: the hosts, the fault injectors, the observer thread. What happens when is
mesh.lab.soak_schedule, what must hold is mesh.lab.soak_invariants, the table is
mesh.lab.soak_summary. Hosts are slots: a replaced host takes its slot with a fresh engine and
node, under a new name. Everything made here (namespaces, bridges, engines, node processes) is
taken down by `close`, which `run` calls whatever happens.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker

from mesh.engine.base import image_key
from mesh.engine.docker_api import settling
from mesh.lab.dockerd import Dockerd, busybox_rootfs
from mesh.lab.engines import EngineKind
from mesh.lab.netns import Host, Network, ip
from mesh.lab.nodes import REPO, NodeProcess
from mesh.lab.poll import wait_until
from mesh.lab.procstat import family
from mesh.lab.soak_invariants import (
    Convergence,
    Sample,
    Violation,
    attempts,
    converged,
    differences,
    health,
    own,
    retags,
    tagged,
)
from mesh.lab.soak_schedule import SETTLING, Event, Plan, budget_slots

SHARED = "soak/*"
BASE = "base:1"  # every host's own import of the same bytes: not shared
REGISTRY = "127.0.0.1:7613"  # each node's registry, on its own namespace's loopback
TAGGED = re.compile(r"tagged (sha256:[0-9a-f]+) as (\S+) ")
PUSHED = re.compile(r"digest: (sha256:[0-9a-f]{64})")
NO_WHEEL = "rolling upgrade: no previous release wheel"
NO_NETEM = (
    "netem: this kernel has no sch_netem (tc: unknown qdisc); loss by netfilter's random drop, "
    "delay as a 4 Mbit/s token bucket's queue"
)


@dataclass
class Slot:
    index: int
    kind: EngineKind
    budget: int  # bytes; 0: no --disk-budget
    gen: int = 0
    host: Host | None = None
    engine: Dockerd | None = None
    node: NodeProcess | None = None
    runs: int = 0
    epoch: int = 0  # bumped whenever the soak touches the node: a sample across a bump is dropped
    built: dict[str, str] = field(default_factory=dict)  # tag -> key of what this host built
    previous: bool = False  # its node runs the previous release until the rolling upgrade

    @property
    def name(self) -> str:
        return f"h{self.index}" if self.gen == 0 else f"h{self.index}g{self.gen}"


@dataclass
class RunFigures:
    """What the observer saw of one node process."""

    host: str
    points: list[tuple[float, int, int]] = field(default_factory=list)  # t, rss, fds
    peak_rss: int = 0
    bytes_in: int = 0


@dataclass
class Outcome:
    plan: Plan
    kinds: list[str]
    injected: dict[str, int]
    failed_actions: dict[str, int]
    violations: list[Violation]
    convergence: dict[str, list[float]]
    runs: dict[str, RunFigures]
    upgrade_note: str
    elapsed: float


class Soak:
    def __init__(
        self,
        workdir: Path,
        plan: Plan,
        kinds: list[EngineKind],
        *,
        budget_mb: int = 32,
        poll_every: float = 4.0,
        mbit: int = 100,
        previous: Previous | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        """`mbit`: every host's link speed, each way (a transfer then lasts long enough for a
        fault to land in it); 0 leaves the veths unshaped. `previous`: the release the first
        rolling upgrade's half of the fleet runs until that upgrade."""
        self.workdir = workdir
        self.previous = previous
        self.plan = plan
        self.log = log
        self.poll_every = poll_every
        self.mbit = mbit
        small = set(budget_slots(plan.hosts))
        self.slots = [
            Slot(i, kinds[i % len(kinds)], (budget_mb << 20) if i in small else 0) for i in range(plan.hosts)
        ]
        self.kinds = [k.name for k in kinds]
        self.network: Network | None = None
        self.netem: bool | None = None  # whether the kernel has tc netem: known at the first netem
        self.rootfs = busybox_rootfs()
        self.lock = threading.Lock()
        self.published: dict[str, str | None] = {}
        self.convergence = Convergence()
        self.violations: list[Violation] = []
        self._seen: set[tuple[str, str, str]] = set()
        self.injected: dict[str, int] = {}
        self.failed_actions: dict[str, int] = {}
        self.runs: dict[str, RunFigures] = {}
        self.t0 = 0.0
        self.stop_watch = threading.Event()
        self.builds = 0
        self._inspected: dict[str, str] = {}  # engine image ID -> mesh key

    # --- the run ------------------------------------------------------------------------------

    def run(self) -> Outcome:
        note = previous_release_note() if self.previous is None else self._start_on_previous()
        self.log(note)
        try:
            self._setup()
            self.t0 = time.monotonic()
            watcher = threading.Thread(target=self._watch, name="soak-watch", daemon=True)
            watcher.start()
            self._play()
            self._settle_at_end()
            self.stop_watch.set()
            watcher.join(timeout=60)
        finally:
            self.stop_watch.set()
            self.close()
        elapsed = time.monotonic() - self.t0
        return Outcome(
            self.plan,
            self.kinds,
            self.injected,
            self.failed_actions,
            self.violations,
            self.convergence.times(),
            self.runs,
            note,
            elapsed,
        )

    def now(self) -> float:
        return time.monotonic() - self.t0

    def _start_on_previous(self) -> str:
        """Marks the slots of the first upgrade to start on the previous release."""
        assert self.previous is not None
        first = next((e for e in self.plan.events if e.kind == "upgrade"), None)
        group = first.group if first is not None else ()
        for index in group:
            self.slots[index].previous = True
        names = ", ".join(self.slots[i].name for i in group) or "none (the schedule has no upgrade)"
        return (
            f"rolling upgrade: {names} start on {self.previous.label} and are upgraded to this "
            "commit one by one at the first upgrade; the rest run this commit throughout"
        )

    def _setup(self) -> None:
        self.network = Network()
        for slot in self.slots:
            self._bring_up(slot)
        self.log(f"{len(self.slots)} hosts up: {', '.join(f'{s.name} ({s.kind.name})' for s in self.slots)}")

    def _play(self) -> None:
        """Each event at its time (late if the one before ran long), and what undoes the lasting
        faults at theirs, in one queue."""
        queue: list[tuple[float, int, str, Any]] = []
        for i, planned in enumerate(self.plan.events):
            heapq.heappush(queue, (planned.at, i, "event", planned))
        order = len(queue)
        while queue:
            at, _, what, payload = heapq.heappop(queue)
            delay = at - self.now()
            if delay > 0:
                time.sleep(delay)  # the schedule's own clock, not a wait for a condition
            if what == "undo":
                payload()
                continue
            event: Event = payload
            undo = self._inject(event)
            if undo is not None:
                order += 1
                heapq.heappush(queue, (self.now() + event.lasts, order, "undo", undo))

    def _inject(self, event: Event) -> Callable[[], None] | None:
        slot = self.slots[event.slot]
        self.log(f"[{self.now():7.1f}s] {event.kind} on {slot.name} {_event_args(event)}")
        self.injected[event.kind] = self.injected.get(event.kind, 0) + 1
        try:
            act = getattr(self, f"_do_{event.kind}")
            undo: Callable[[], None] | None = act(event, slot)
        except Exception as exc:  # an action that fails is counted; the soak goes on
            self.failed_actions[event.kind] = self.failed_actions.get(event.kind, 0) + 1
            self.log(f"    {event.kind} failed: {str(exc)[-300:]}")
            self.convergence.open(event.kind, self.now())
            return None
        if event.kind in SETTLING:
            settles = self.now() + event.lasts
            self.convergence.open(event.kind, settles)
        else:
            self.convergence.open(event.kind, self.now())
        return undo

    def _settle_at_end(self) -> None:
        """After the last event: wait for the mesh to agree (or the bound to pass), then one
        last look at every node."""
        deadline = self.now() + 200
        while self.now() < deadline:
            due = self.convergence.deadline(self.now())
            if due is None:
                break
            if self.now() > due[0] + 2 * self.poll_every:
                break
            self.stop_watch.wait(self.poll_every)
        self.log(f"[{self.now():7.1f}s] schedule done")

    # --- hosts --------------------------------------------------------------------------------

    def _bring_up(self, slot: Slot) -> None:
        assert self.network is not None
        slot.host = self.network.add_host(slot.name)
        if self.mbit:
            self.network.limit(slot.host, self.mbit)
        slot.engine = Dockerd(
            self.workdir / f"engine-{slot.name}", slot.host.netns, slot.name, slot.kind
        ).start()
        slot.engine.cli("import", "-", BASE, input=self.rootfs)
        slot.built = {}
        self._start_node(slot)

    def _start_node(self, slot: Slot) -> None:
        assert slot.host is not None and slot.engine is not None
        slot.runs += 1
        run = f"{slot.name}.{slot.runs}"
        seeds = [f"{s.host.address}:7611" for s in self.slots if s is not slot and s.host and s.node][:3]
        env = {
            "CACHEMESH_DOCKER_HOST": slot.engine.host,
            "CACHEMESH_STATUS_LISTEN": f"{slot.host.address}:7612",
            "CACHEMESH_REGISTRY_LISTEN": REGISTRY,
            "CACHEMESH_DATA_DIR": str(self.workdir / f"{slot.name}-data"),
            "CACHEMESH_PRESET": "lan",
            "CACHEMESH_INCLUDE": SHARED,
            "CACHEMESH_NODE_NAME": slot.name,
            **({"CACHEMESH_SEEDS": ",".join(seeds)} if seeds else {}),
            **({"CACHEMESH_DISK_BUDGET": str(slot.budget)} if slot.budget else {}),
        }
        code = self.previous.code if self.previous is not None and slot.previous else REPO
        node = NodeProcess(
            run,
            self.workdir,
            env=env,
            prefix=slot.host.nsenter(),
            status=f"{slot.host.address}:7612",
            code=code,
        )
        node.wait_up(timeout=90)
        with self.lock:
            slot.node = node
            slot.epoch += 1
            self.runs[run] = RunFigures(slot.name)

    def _take_node(self, slot: Slot) -> NodeProcess | None:
        """The slot's node, no longer watched (the soak is about to stop it)."""
        with self.lock:
            node, slot.node = slot.node, None
            slot.epoch += 1
        return node

    def _kill_engine(self, slot: Slot) -> None:
        """SIGKILL the engine and all it started (its containerd, shims): a crash of the host's
        engine, not a shutdown."""
        assert slot.engine is not None and slot.engine.proc is not None
        proc = slot.engine.proc
        doomed = family(proc.pid)
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)
        # Started again while its containerd still exits, dockerd 20.10 waits a minute for it
        # and gives up ("timeout waiting for containerd to start").
        wait_until(lambda: not any(Path(f"/proc/{p}").exists() for p in doomed), 30, what="engine gone")

    def close(self) -> None:
        for slot in self.slots:
            node = self._take_node(slot)
            if node is not None:
                with contextlib.suppress(Exception):
                    node.stop(signal.SIGKILL)
            if slot.engine is not None:
                with contextlib.suppress(Exception):
                    slot.engine.destroy()
                slot.engine = None
        if self.network is not None:
            self.network.destroy()
            self.network = None

    # --- actions ------------------------------------------------------------------------------

    def _build(self, slot: Slot, size_mb: int, buildkit: bool) -> str:
        assert slot.engine is not None
        self.builds += 1
        tag = f"soak/b{self.builds}:1"
        self.published[tag] = None
        dockerfile = f"FROM {BASE}\nRUN head -c {size_mb << 20} /dev/urandom > /data-{self.builds}\n"
        env = {"DOCKER_BUILDKIT": "1" if buildkit else "0"}
        slot.engine.cli("build", "--network", "none", "-t", tag, "-", input=dockerfile.encode(), env=env)
        key = self._key_of(slot.engine, tag)
        self.published[tag] = key
        slot.built[tag] = key
        return tag

    def _do_build_classic(self, event: Event, slot: Slot) -> None:
        self._build(slot, event.size_mb, buildkit=False)

    def _do_build_buildkit(self, event: Event, slot: Slot) -> None:
        self._build(slot, event.size_mb, buildkit=True)

    def _do_disk(self, event: Event, slot: Slot) -> None:
        """An image larger than the small budget: the nodes that run with one must not evict
        what their host built to make room, nor pull it over and over."""
        self._build(slot, event.size_mb, buildkit=False)

    def _do_push(self, event: Event, slot: Slot) -> None:
        assert slot.engine is not None
        self.builds += 1
        repo, tag = f"soak/p{self.builds}", "1"
        ref = f"{REGISTRY}/{repo}:{tag}"
        dockerfile = f"FROM {BASE}\nRUN head -c {event.size_mb << 20} /dev/urandom > /pushed\n"
        slot.engine.cli(
            "build",
            "--network",
            "none",
            "-t",
            ref,
            "-",
            input=dockerfile.encode(),
            env={"DOCKER_BUILDKIT": "0"},
        )
        self.published[f"registry:{repo}:{tag}"] = None
        out = slot.engine.cli("push", ref).stdout
        found = PUSHED.search(out)
        if not found:
            raise RuntimeError(f"docker push printed no digest: {out[-500:]}")
        self.published[f"registry:{repo}:{tag}"] = found.group(1)

    def _do_kill_node(self, event: Event, slot: Slot) -> None:
        node = self._take_node(slot)
        if node is not None:
            node.stop(signal.SIGKILL)
        time.sleep(event.down)  # how long the host is without its node: part of the fault
        self._start_node(slot)

    def _do_kill_engine(self, event: Event, slot: Slot) -> None:
        assert slot.engine is not None
        self._kill_engine(slot)
        time.sleep(event.down)  # how long the engine stays down: part of the fault
        slot.engine.start()

    def _do_restart_engine(self, event: Event, slot: Slot) -> None:
        assert slot.engine is not None
        slot.engine.restart()

    def _do_replace_host(self, event: Event, slot: Slot) -> None:
        assert slot.engine is not None and slot.host is not None
        node = self._take_node(slot)
        if node is not None:
            node.stop(signal.SIGKILL)
        self._kill_engine(slot)
        slot.engine.destroy()
        ip("link", "del", slot.host.veth, check=False)
        ip("netns", "del", slot.host.netns, check=False)
        slot.gen += 1
        self._bring_up(slot)

    def _do_partition(self, event: Event, slot: Slot) -> Callable[[], None]:
        """The group loses the rest of the fleet: each of its hosts drops what comes from or goes
        to the others' addresses (its own netfilter, in its namespace). The bridge still carries
        the watcher's looks, which come from the bridge's own address."""
        cut = [s.host for i in event.group if (s := self.slots[i]).host]
        rest = [s.host.address for i, s in enumerate(self.slots) if i not in event.group and s.host]
        for host in cut:
            _iptables(host, "-N", "SOAKCUT", check=False)
            for chain in ("INPUT", "OUTPUT"):
                _iptables(host, "-I", chain, "-j", "SOAKCUT")
            for address in rest:
                _iptables(host, "-A", "SOAKCUT", "-s", address, "-j", "DROP")
                _iptables(host, "-A", "SOAKCUT", "-d", address, "-j", "DROP")

        def heal() -> None:
            self.log(f"[{self.now():7.1f}s] heal partition of {', '.join(h.name for h in cut)}")
            for host in cut:
                _iptables(host, "-F", "SOAKCUT", check=False)  # gone already if it was replaced

        return heal

    def _do_netem(self, event: Event, slot: Slot) -> Callable[[], None]:
        """Loss and delay on the host's link, both ways. With tc netem where the kernel has it;
        without (CONFIG_NET_SCH_NETEM unset, as on this lab's VM) loss by netfilter's random
        drop and delay as a queue: a 4 Mbit/s token bucket that holds up to the delay asked."""
        assert slot.host is not None
        host = slot.host
        rule = ["netem", "loss", f"{event.loss}%", "delay", f"{event.delay_ms}ms", f"{event.delay_ms // 4}ms"]
        devices = ((host.veth, None), ("eth0", host.netns))
        if self.netem is None:
            self.netem = _tc(None, "qdisc", "replace", "dev", host.veth, "root", *rule, check=False)
            if not self.netem:
                self.log(f"    {NO_NETEM}")
        if self.netem:
            for dev, netns in devices:
                _tc(netns, "qdisc", "replace", "dev", dev, "root", *rule)
        else:
            queue = ["tbf", "rate", "4mbit", "burst", "32k", "latency", f"{max(event.delay_ms, 50)}ms"]
            for dev, netns in devices:
                _tc(netns, "qdisc", "replace", "dev", dev, "root", *queue)
            drop = [
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                f"{event.loss / 100:.3f}",
                "-j",
                "DROP",
            ]
            _iptables(host, "-N", "SOAKLOSS", check=False)
            for chain in ("INPUT", "OUTPUT"):
                _iptables(host, "-I", chain, "-j", "SOAKLOSS")
            watcher = self._watcher_address()  # the watcher's looks are not the fault's
            _iptables(host, "-A", "SOAKLOSS", "!", "-s", watcher, "!", "-d", watcher, *drop)

        def clear() -> None:
            self.log(f"[{self.now():7.1f}s] clear netem on {host.name}")
            for dev, netns in devices:
                _tc(netns, "qdisc", "del", "dev", dev, "root", check=False)
            _iptables(host, "-F", "SOAKLOSS", check=False)
            if self.mbit and self.network is not None and slot.host is host:
                self.network.limit(host, self.mbit)  # the link as it was

        return clear

    def _watcher_address(self) -> str:
        assert self.network is not None
        return f"{self.network.subnet}.1"

    def _do_upgrade(self, event: Event, slot: Slot) -> None:
        """Half the fleet, one host at a time: the node stopped as an operator's upgrade stops it
        and started again on its data dir, on this commit. At the first upgrade, with --previous,
        those nodes ran the previous release until now; otherwise (and at later upgrades) both
        runs are this commit: the restart half of an upgrade, said so in the summary."""
        upgraded = [i for i in event.group if self.slots[i].previous]
        if upgraded:
            self.log(
                f"    upgrading {len(upgraded)} nodes from {self.previous.label if self.previous else '?'}"
            )
        else:
            why = NO_WHEEL if self.previous is None else "already upgraded"
            self.log(f"    {why}: restarting {len(event.group)} nodes on this commit")
        for index in event.group:
            target = self.slots[index]
            node = self._take_node(target)
            if node is not None:
                node.stop(signal.SIGTERM)
            target.previous = False
            self._start_node(target)

    # --- watching -----------------------------------------------------------------------------

    def _watch(self) -> None:
        while not self.stop_watch.is_set():
            started = time.monotonic()
            try:
                self._look()
            except Exception as exc:  # the watcher must outlive any one bad look
                self.log(f"    watcher: {exc!r}")
            self.stop_watch.wait(max(0.5, self.poll_every - (time.monotonic() - started)))

    def _look(self) -> None:
        samples = []
        for slot in self.slots:
            with self.lock:
                node, epoch, engine = slot.node, slot.epoch, slot.engine
            if node is None or engine is None:
                continue
            built = dict(slot.built)  # as it was before the look: a build may end during it
            sample = self._sample(slot, node, engine)
            with self.lock:
                if slot.epoch != epoch or slot.node is not node:
                    continue  # the soak touched this node meanwhile
            if sample is not None:
                samples.append((slot, sample, built, node))
        if not samples:
            return
        published = dict(self.published)
        for _, s, built, node in samples:
            self._record(
                health(s) + tagged(s, published) + own(s, built) + attempts(s) + self._retags(s, node)
            )
        live = [s for _, s, _, _ in samples]
        complete = len(live) == len(self.slots)
        agreed = complete and converged(live, published)
        why = differences(live, published) if not agreed else []
        if not complete:
            why = [f"{len(self.slots) - len(live)} nodes not watched this round", *why]
        self._record(self.convergence.observe(self.now(), agreed, why))

    def _retags(self, s: Sample, node: NodeProcess) -> list[Violation]:
        """Tag moves of one image to one tag by this node run, from its log: a node that keeps
        tagging what it already tagged is in a loop (the engine's tag events come from it)."""
        counts: dict[tuple[str, str], int] = {}
        for image, tag in TAGGED.findall(node.log.read_text(errors="replace")) if node.log.exists() else ():
            counts[(image, tag)] = counts.get((image, tag), 0) + 1
        return retags(s, counts)

    def _record(self, found: list[Violation]) -> None:
        for v in found:
            key = (v.invariant, v.host, v.detail)
            if key in self._seen:
                continue
            self._seen.add(key)
            self.violations.append(v)
            self.log(f"    VIOLATION {v}")

    def _sample(self, slot: Slot, node: NodeProcess, engine: Dockerd) -> Sample | None:
        t = self.now()
        healthz = _code(node, "/healthz")
        readyz, reason = None, ""
        try:
            readyz, body = node.get("/readyz", timeout=10)
            reason = str(body.get("reason", "")) if isinstance(body, dict) else ""
        except (OSError, urllib.error.URLError):
            pass
        try:
            status = node.get("/api/status", timeout=10)[1]
            metrics = _metrics(node)
        except (OSError, urllib.error.URLError, ValueError):
            return Sample(
                t, slot.name, node.name, healthz, readyz, reason, {}, None, {}, 0, 0, slot.budget == 0
            )
        if node.proc.poll() is not None:
            return None  # gone: the soak stopped it, or it died (the next look's healthz says)
        view = _view(status)
        figures = self.runs.get(node.name)
        rss, fds = _rss_fds(node.proc.pid)
        if figures is not None:
            figures.points.append((t, rss, fds))
            figures.peak_rss = max(figures.peak_rss, rss)
            figures.bytes_in = max(figures.bytes_in, metrics)
        failing = {f["image"]: int(f["attempts"]) for f in status.get("pull_failures", [])}
        return Sample(
            t,
            slot.name,
            node.name,
            healthz,
            readyz,
            reason,
            view,
            self._engine_tags(engine),
            failing,
            rss,
            fds,
            slot.budget == 0,
        )

    def _engine_tags(self, engine: Dockerd) -> dict[str, str] | None:
        """Shared tag -> mesh key on the engine, from its API (one listing, and an inspect of each
        image not seen before); None when the engine does not answer."""
        try:
            client = docker.APIClient(base_url=engine.host, timeout=10)
            try:
                out: dict[str, str] = {}
                for item in client.images():
                    tags = [t for t in item.get("RepoTags") or () if t.startswith("soak/")]
                    if not tags:
                        continue
                    key = self._inspected.get(item["Id"])
                    if key is None:
                        detail = client.inspect_image(item["Id"])
                        if settling(detail):
                            continue  # being written or removed: not an image yet
                        key = self._inspected[item["Id"]] = _key(detail)
                    out.update(dict.fromkeys(tags, key))
                return out
            finally:
                client.close()
        except Exception:
            return None

    def _key_of(self, engine: Dockerd, ref: str) -> str:
        client = docker.APIClient(base_url=engine.host, timeout=30)
        try:
            return _key(client.inspect_image(ref))
        finally:
            client.close()


def _key(detail: dict[str, Any]) -> str:
    """The mesh key of an inspected image, as the node's adapter computes it from the same fields."""
    return image_key(
        str(detail.get("Created") or ""),
        str(detail.get("Architecture") or ""),
        str(detail.get("Os") or ""),
        list(detail.get("RootFS", {}).get("Layers") or ()),
    )


def _view(status: dict[str, Any]) -> dict[str, str]:
    """The node's tag -> image view of the shared tags, and its registry's tag -> digest."""
    view: dict[str, str] = {}
    for image in status.get("images", []):
        for tag in image["tags"]:
            if tag.startswith("soak/"):
                view[tag] = image["id"]
    for repo in (status.get("registry") or {}).get("repositories", []):
        if repo["name"].startswith("soak/"):
            for t in repo["tags"]:
                view[f"registry:{repo['name']}:{t['tag']}"] = t["digest"]
    return view


def _code(node: NodeProcess, path: str) -> int | None:
    try:
        return node.get(path, timeout=10)[0]
    except (OSError, urllib.error.URLError, ValueError):
        return None


METRIC = re.compile(
    r'^cachemesh_(?:transfer_bytes_total\{direction="in"\}|registry_bytes_total\{source="peers"\}) (\S+)$',
    re.M,
)


def _metrics(node: NodeProcess) -> int:
    """Bytes this node run brought from peers: images and registry content."""
    with urllib.request.urlopen(f"http://{node.status}/metrics", timeout=10) as r:
        text = r.read().decode()
    return int(sum(float(v) for v in METRIC.findall(text)))


def _rss_fds(pid: int) -> tuple[int, int]:
    try:
        rss = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
        return rss, len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0, 0


def _tc(netns: str | None, *args: str, check: bool = True) -> bool:
    cmd = ["tc", *(["-n", netns] if netns else []), *args]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {result.stderr.strip()}")
    return result.returncode == 0


def _iptables(host: Host, *args: str, check: bool = True) -> bool:
    """iptables in the host's namespace: its own tables, gone with the namespace."""
    cmd = [*host.nsenter(), "iptables", "-w", *args]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {result.stderr.strip()}")
    return result.returncode == 0


def _event_args(event: Event) -> str:
    parts = []
    if event.size_mb:
        parts.append(f"{event.size_mb} MB")
    if event.group:
        parts.append(f"hosts {list(event.group)}")
    if event.lasts:
        parts.append(f"for {event.lasts:g}s")
    if event.loss:
        parts.append(f"loss {event.loss}% delay {event.delay_ms}ms")
    if event.down:
        parts.append(f"down {event.down:g}s")
    return ", ".join(parts)


@dataclass(frozen=True)
class Previous:
    """The release a rolling upgrade starts from: its `mesh` package under `code`."""

    label: str
    code: Path


def prepare_previous(spec: str, workdir: Path, repo: Path = REPO) -> Previous:
    """`spec`: a cachemesh wheel, or a git revision of this repository (until a release has a
    wheel, an older commit stands in for it). Unpacked under `workdir`; its dependencies are this
    Python's."""
    code = workdir / "previous"
    code.mkdir(parents=True, exist_ok=True)
    if spec.endswith(".whl"):
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(code), spec],
            check=True,
        )
        return Previous(Path(spec).name, code)
    rev = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", f"{spec}^{{commit}}"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", rev, "mesh"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(code)], input=archive.stdout, check=True)
    return Previous(f"commit {rev}", code)


def previous_release_note(repo: Path | None = None) -> str:
    """The line the summary prints about the rolling upgrade: why it has no previous release to
    start from (a wheel of one, or a tag to build it from). Running nodes from an older wheel is
    not built: no release has one to test it with."""
    root = repo or Path(__file__).resolve().parents[2]
    tags = subprocess.run(
        ["git", "-C", str(root), "tag", "--list"], capture_output=True, text=True
    ).stdout.split()
    wheels = sorted((root / "dist").glob("cachemesh-*.whl")) if (root / "dist").is_dir() else []
    released = re.findall(r"^## (\d+\.\d+\.\d+) \((?!unreleased)", _read(root / "CHANGELOG.md"), re.M)
    names = ", ".join(w.name for w in wheels) or "none"
    why = f"git tags: {', '.join(tags) or 'none'}; wheels in dist/: {names}"
    if released:
        why += f"; CHANGELOG names {', '.join(released)} released, with no tag or wheel to run"
    return f"{NO_WHEEL} ({why}); half the fleet restarts on this commit instead"


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""

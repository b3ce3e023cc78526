"""What the soak checks, over what it observed. Pure: samples in, violations and figures out.

A sample is one look at one live node: its /healthz, /readyz, /api/status (the tag -> image view
it holds of the mesh, registry tags included, and its failing pulls), its engine (each tag's image,
named by the mesh key computed from the engine's own inspect), and its process (RSS, open fds).

The invariants:
- health: /healthz answers 200; a 503 from /readyz carries a reason;
- tagged: every shared tag on an engine is the image its publisher built (same mesh key: the
  same layers, created at the same instant), so nothing partial or unverified is ever tagged;
- own: every image built on a host is still there under its tag while that host lives;
- attempts: no image has failed more than `ATTEMPTS_BOUND` pulls in a row on any node;
- retags: no node run tags one image with one tag more than `RETAG_BOUND` times (a tag loop);
- converged: after each fault (once it ends), every live node holds the same view, and it is the
  published one, within that fault's bound (`BOUNDS`);
- flat: each node's RSS and open fds do not grow over its life (`leaks`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

ATTEMPTS_BOUND = 10
"""Failed pulls of one image in a row on one node: twice --max-attempts. A source killed
mid-stream costs one; a pull that fails more often than this is a retry loop."""

BOUNDS = {
    "build_classic": 60.0,
    "build_buildkit": 60.0,
    "push": 60.0,
    "kill_node": 90.0,
    "kill_engine": 90.0,
    "restart_engine": 90.0,
    "replace_host": 150.0,
    "partition": 90.0,
    "netem": 90.0,
    "disk": 120.0,
    "upgrade": 120.0,
}
"""Seconds within which every live node must hold the same, published view after an event (after
a partition heals, a netem clears, a replaced host's node answers). Overlapping events share the
latest deadline. LAN preset timings, on a 2-core machine that runs every host."""


@dataclass(frozen=True)
class Sample:
    t: float
    host: str  # the host's name (a replacement has a new one)
    run: str  # the node process (a restart is a new run)
    healthz: int | None  # None: no answer
    readyz: int | None
    ready_reason: str
    view: Mapping[str, str]  # tag -> mesh key (images), "registry:repo:tag" -> digest
    engine: Mapping[str, str] | None  # shared tag -> mesh key on the engine; None: engine down
    attempts: Mapping[str, int]  # image -> failed pulls in a row
    rss: int  # bytes
    fds: int
    holds_all: bool = True  # False on a node with a small disk budget


@dataclass(frozen=True)
class Violation:
    t: float
    invariant: str
    host: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.t:7.1f}s] {self.invariant} on {self.host}: {self.detail}"


def health(s: Sample) -> list[Violation]:
    found = []
    if s.healthz != 200:
        found.append(Violation(s.t, "healthz", s.host, f"/healthz answered {s.healthz}"))
    if s.readyz == 503 and not s.ready_reason.strip():
        found.append(Violation(s.t, "readyz", s.host, "/readyz 503 without a reason"))
    return found


Published = Mapping[str, "str | None"]
"""tag -> the mesh key (or registry digest) its publisher made; None while the build or push is
under way (its tag may show before the publisher has read the key back)."""


def tagged(s: Sample, published: Published) -> list[Violation]:
    """Every shared tag on the engine is its publisher's image."""
    found = []
    for tag, key in sorted((s.engine or {}).items()):
        if tag in published and published[tag] is None:
            continue  # being built: its key is not known yet
        want = published.get(tag)
        if want is None:
            found.append(Violation(s.t, "tagged", s.host, f"{tag} is {key[:19]}, which nobody published"))
        elif key != want:
            found.append(
                Violation(s.t, "tagged", s.host, f"{tag} is {key[:19]}, its publisher built {want[:19]}")
            )
    return found


def own(s: Sample, built_here: Mapping[str, str]) -> list[Violation]:
    """Every image built on this host still carries its tag here."""
    if s.engine is None:
        return []
    return [
        Violation(s.t, "own", s.host, f"{tag} ({key[:19]}) built here is {_where(s.engine.get(tag))}")
        for tag, key in sorted(built_here.items())
        if s.engine.get(tag) != key
    ]


def _where(key: str | None) -> str:
    return "gone (evicted)" if key is None else f"now {key[:19]} (overwritten)"


def attempts(s: Sample, bound: int = ATTEMPTS_BOUND) -> list[Violation]:
    return [
        Violation(s.t, "attempts", s.host, f"{image[:19]} failed {n} pulls in a row (bound {bound})")
        for image, n in sorted(s.attempts.items())
        if n > bound
    ]


RETAG_BOUND = 6
"""Times one node run may tag one image with one tag: the pull's tags, and retags after the
operator or an engine restart took it. More is a loop."""


def retags(s: Sample, counts: Mapping[tuple[str, str], int], bound: int = RETAG_BOUND) -> list[Violation]:
    """`counts`: (image, tag) -> times this node run tagged it so."""
    return [
        Violation(s.t, "retags", s.host, f"{s.run} tagged {image[:19]} as {tag} {n} times (bound {bound})")
        for (image, tag), n in sorted(counts.items())
        if n > bound
    ]


def expected_view(samples: Sequence[Sample], published: Published) -> dict[str, str]:
    """The view every node should reach: each published image tag some live engine holds, and
    each published registry tag some live node's registry holds."""
    held: set[str] = set()
    for s in samples:
        held.update(t for t, k in (s.engine or {}).items() if published.get(t) == k)
        held.update(t for t, d in s.view.items() if t.startswith("registry:") and published.get(t) == d)
    return {t: k for t in sorted(held) if (k := published.get(t)) is not None}


def converged(samples: Sequence[Sample], published: Published) -> bool:
    """Every live node's view is the expected one, and every node that holds all the mesh does
    (no small disk budget) has each of its images tagged on its engine."""
    if not samples or any(s.engine is None for s in samples):
        return False
    want = expected_view(samples, published)
    images = {t: k for t, k in want.items() if not t.startswith("registry:")}
    for s in samples:
        if dict(s.view) != want:
            return False
        if s.holds_all and dict(s.engine or {}) != images:
            return False
    return True


def differences(samples: Sequence[Sample], published: Published) -> list[str]:
    """Why the samples have not converged, for the report of a missed bound."""
    want = expected_view(samples, published)
    out = []
    for s in samples:
        if s.engine is None:
            out.append(f"{s.host}: engine not answering")
            continue
        lacks = sorted(set(want) - set(s.view))
        extra = sorted(t for t in s.view if want.get(t) != s.view[t])
        missing_here = (
            []
            if not s.holds_all
            else sorted(
                t for t in want if not t.startswith("registry:") and (s.engine or {}).get(t) != want[t]
            )
        )
        if lacks or extra or missing_here:
            out.append(
                f"{s.host}: view lacks {lacks[:4]}, has other {extra[:4]}, engine lacks {missing_here[:4]}"
            )
    return out


@dataclass
class Episode:
    kind: str
    settles: float  # when the fault ended: the convergence clock starts here
    closed: float | None = None

    @property
    def took(self) -> float | None:
        return None if self.closed is None else self.closed - self.settles


@dataclass
class Convergence:
    """Episodes of convergence: each event opens one when it settles; the first look at which
    every live node agrees on the published view closes every settled one. While any is open,
    the deadline is the latest settle + bound among them: past it, a violation (one per deadline).
    Overlapping events so share the latest deadline, and an episode's time counts from its own
    settling to the first agreement, the later events' convergence included."""

    bounds: Mapping[str, float] = field(default_factory=lambda: dict(BOUNDS))
    episodes: list[Episode] = field(default_factory=list)
    missed: set[float] = field(default_factory=set)

    def open(self, kind: str, settles: float) -> None:
        self.episodes.append(Episode(kind, settles))

    def deadline(self, now: float) -> tuple[float, str] | None:
        """(when, for which kind) the mesh must agree by; None while nothing is pending, or while
        a fault is still on (a partition not yet healed holds every clock)."""
        open_ = [e for e in self.episodes if e.closed is None]
        pending = [e for e in open_ if e.settles <= now]
        if not pending or len(pending) < len(open_):
            return None
        last = max(pending, key=lambda e: e.settles + self.bounds[e.kind])
        return last.settles + self.bounds[last.kind], last.kind

    def observe(self, now: float, agreed: bool, why: Iterable[str] = ()) -> list[Violation]:
        if agreed:
            for e in self.episodes:
                if e.closed is None and e.settles <= now:
                    e.closed = now
            return []
        due = self.deadline(now)
        if due is None or now <= due[0] or due[0] in self.missed:
            return []
        self.missed.add(due[0])
        detail = "; ".join(list(why)[:6]) or "views differ"
        return [
            Violation(now, "converged", "mesh", f"not within {self.bounds[due[1]]:g}s of {due[1]}: {detail}")
        ]

    def times(self) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for e in self.episodes:
            if e.took is not None:
                out.setdefault(e.kind, []).append(max(0.0, e.took))
        return out


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (t, value) points, per second; 0 for fewer than 2 distinct t."""
    if len(points) < 2:
        return 0.0
    ts = [p[0] for p in points]
    mean_t, mean_v = statistics.fmean(ts), statistics.fmean(p[1] for p in points)
    var = sum((t - mean_t) ** 2 for t in ts)
    if var == 0:
        return 0.0
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / var


LEAK_MIN_LIFE = 300.0
"""A run shorter than this is mostly warm-up: its growth says nothing about a leak."""


def leaks(run: str, points: Sequence[tuple[float, int, int]]) -> list[Violation]:
    """(t, rss, fds) of one node run: its second half must not sit well above its first. RSS may
    grow with what the node learns (50 MB and half again are allowed); fds by 100."""
    if len(points) < 20 or points[-1][0] - points[0][0] < LEAK_MIN_LIFE:
        return []
    half = len(points) // 2
    first, second = points[:half], points[half:]
    found = []
    rss1, rss2 = statistics.median(p[1] for p in first), statistics.median(p[1] for p in second)
    if rss2 > rss1 * 1.5 + (50 << 20):
        found.append(
            Violation(points[-1][0], "flat", run, f"RSS {rss1 / 2**20:.0f} -> {rss2 / 2**20:.0f} MB")
        )
    fd1, fd2 = max(p[2] for p in first), statistics.median(p[2] for p in second)
    if fd2 > fd1 + 100:
        found.append(Violation(points[-1][0], "flat", run, f"open fds {fd1} -> {fd2:.0f}"))
    return found

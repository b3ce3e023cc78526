"""How far a node's warm-up has come: images and bytes done and left, the rate, the time left.

`progress` is a pure function of what the puller knows; `RateMeter` counts received bytes over a
sliding window (it takes `now`, so tests drive it). `/api/status` carries the result as `warmup`,
and `cachemesh wait-ready` and the status page show it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from mesh.protocol.planner import ancestors
from mesh.protocol.wire import ImageMeta
from mesh.ui.status_doc import WarmupFigures


@dataclass(frozen=True, slots=True)
class WarmupProgress:
    images_done: int
    """Images this node came to lack since it started and now holds."""
    images_left: int
    """Images it should hold and does not (in flight or waiting), given-up ones aside."""
    images_given_up: int
    """Images that failed too often to hold readiness back (still retried)."""
    bytes_done: int
    """Bytes received by pulls since the node started, the ones in flight included."""
    bytes_left: int
    """An estimate from image sizes: what the images left still weigh, less what is in flight.
    A delta pull (a base already here) carries less, so this errs high."""
    rate: float
    """Bytes per second received over the last few seconds."""
    eta: float | None
    """Seconds until the images left are here at that rate; None while nothing moves."""

    def as_dict(self) -> WarmupFigures:
        return {
            "images_done": self.images_done,
            "images_left": self.images_left,
            "images_given_up": self.images_given_up,
            "bytes_done": self.bytes_done,
            "bytes_left": self.bytes_left,
            "rate": round(self.rate),
            "eta": None if self.eta is None else round(self.eta, 1),
        }


def progress(
    *,
    wanted: Collection[str],
    held: Collection[str],
    missing: Collection[str],
    given_up: Collection[str],
    metas: Mapping[str, ImageMeta],
    in_flight: Mapping[str, int],
    received: int,
    rate: float,
) -> WarmupProgress:
    """wanted: every image that was missing here at some point since start; held: images here now;
    missing, given_up: the planner's; in_flight: image -> bytes received so far by its pull;
    received: bytes received by all pulls since start (in flight included); rate: bytes/s now."""
    left = [i for i in missing if i not in given_up]
    # A parent arrives inside its child's stream, and its size is counted in the child's.
    inside = {a for i in left for a in ancestors(i, metas)}
    bytes_left = sum(
        max(0, metas[i].size - in_flight.get(i, 0)) for i in left if i not in inside and i in metas
    )
    return WarmupProgress(
        images_done=sum(1 for i in wanted if i in held),
        images_left=len(left),
        images_given_up=sum(1 for i in missing if i in given_up),
        bytes_done=received,
        bytes_left=bytes_left,
        rate=rate,
        eta=bytes_left / rate if rate > 0 and left else (0.0 if not left else None),
    )


class RateMeter:
    """Bytes per second over the last `window` seconds, in buckets of `resolution` seconds."""

    def __init__(self, window: float = 10.0, resolution: float = 0.25) -> None:
        self.window = window
        self.resolution = resolution
        self._buckets: deque[list[float]] = deque()  # [bucket start, bytes]
        self._since: float | None = None  # when the current run of traffic began

    def add(self, now: float, n: int) -> None:
        self._prune(now)
        if not self._buckets:
            self._since = now  # after a silence, measure from the first new byte
        if self._buckets and now - self._buckets[-1][0] < self.resolution:
            self._buckets[-1][1] += n
        else:
            self._buckets.append([now, float(n)])

    def rate(self, now: float) -> float:
        self._prune(now)
        if not self._buckets or self._since is None:
            return 0.0
        span = min(self.window, now - self._since)
        # Under one bucket of history the rate is a guess: take the bucket's own length.
        span = max(span, self.resolution)
        return sum(b[1] for b in self._buckets) / span

    def _prune(self, now: float) -> None:
        while self._buckets and self._buckets[0][0] < now - self.window:
            self._buckets.popleft()

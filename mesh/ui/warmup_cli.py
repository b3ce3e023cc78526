"""`cachemesh wait-ready`: the node's warm-up as a progress bar on a terminal, as plain lines
elsewhere (a CI log, a pipe), until the node says ready or the wait times out.

It reads the node's `/api/status` (`ready`, `ready_reason`, `warmup`) through a callable, so the
view knows nothing of HTTP.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from mesh.ui.humanize import warmup_figures
from mesh.ui.status_doc import StatusDoc
from mesh.values import format_duration

Fetch = Callable[[], StatusDoc]
"""Returns the status document; raises OSError or ValueError when the node does not answer."""

PLAIN_EVERY = 5.0  # seconds between plain lines while nothing else changes
NO_NODE_WAIT = 300.0  # seconds to wait for a node to answer at all, when no --timeout is given
AFTER_READY_TIMEOUT = 60.0  # seconds past the node's own --ready-timeout before giving up


def plain_line(status: StatusDoc) -> str:
    w = status.get("warmup")
    if not w:
        return f"waiting: {status.get('ready_reason', '')}"
    f = warmup_figures(w)
    return (
        f"warming up: {f['images']}, {f['bytes']} ({f['left']}), {f['rate']}, {f['eta']}"
        f" · {status.get('ready_reason', '')}"
    )


def watch(
    fetch: Fetch,
    *,
    timeout: float | None,
    out: TextIO,
    err: TextIO,
    terminal: bool,
    clock: Callable[[], float] = time.monotonic,
    pause: Callable[[float], None] = time.sleep,
    interval: float = 0.5,
) -> int:
    """Show the warm-up until ready (0) or `timeout` seconds pass (1). With `timeout` None, wait
    as long as the node's own --ready-timeout has left, plus a minute (the node reports ready by
    then); forever if it has none; and NO_NODE_WAIT while no node answers."""
    started = clock()
    deadline = started + (NO_NODE_WAIT if timeout is None else timeout)
    learned = False  # the deadline from the node's own ready-timeout, once it answered
    view: _View = _Bar(out) if terminal else _Lines(out, clock)
    reason = "no answer yet"
    try:
        while True:
            try:
                status = fetch()
                reason = str(status.get("ready_reason", ""))
                warmup = status.get("warmup")
                if timeout is None and warmup and not learned:  # an older node may not say
                    learned, left = True, warmup["ready_timeout_left"]
                    deadline = math.inf if left is None else clock() + left + AFTER_READY_TIMEOUT
                if status.get("ready"):
                    view.show(status)  # the final figures: everything done, or what the timeout left
                    view.close()
                    print(f"ready: {reason}", file=out, flush=True)
                    return 0
                view.show(status)
            except (OSError, ValueError) as exc:
                reason = f"no node answers ({exc})"
                view.note(reason)
            if clock() >= deadline:
                view.close()
                waited = format_duration(round(clock() - started))
                print(f"cachemesh: not ready after {waited}: {reason}", file=err, flush=True)
                return 1
            pause(min(interval, max(0.0, deadline - clock())))
    finally:
        view.close()


class _View:
    def show(self, status: StatusDoc) -> None:
        raise NotImplementedError

    def note(self, text: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _Lines(_View):
    """One line per change of images, reason or what answers, and one every few seconds."""

    def __init__(self, out: TextIO, clock: Callable[[], float]) -> None:
        self.out = out
        self.clock = clock
        self.last_key: object = None
        self.last_at = float("-inf")

    def _emit(self, key: object, line: str) -> None:
        now = self.clock()
        if key != self.last_key or now - self.last_at >= PLAIN_EVERY:
            print(line, file=self.out, flush=True)
            self.last_key, self.last_at = key, now

    def show(self, status: StatusDoc) -> None:
        w = status.get("warmup")
        images = (w["images_done"], w["images_left"]) if w else (None, None)
        key = (*images, status.get("ready_reason"))
        self._emit(key, plain_line(status))

    def note(self, text: str) -> None:
        self._emit(text, f"waiting: {text}")


class _Bar(_View):
    """A rich progress bar over the bytes, with the node's own figures beside it."""

    def __init__(self, out: TextIO) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[images]}"),
            TextColumn("{task.fields[bytes]}"),
            TextColumn("{task.fields[rate]}"),
            TextColumn("{task.fields[eta]}"),
            console=Console(file=out, force_terminal=True),
            auto_refresh=False,
            transient=False,
        )
        self.task: TaskID | None = None
        self.started = False

    def _task(self) -> TaskID:
        if not self.started:
            self.progress.start()
            self.started = True
        if self.task is None:
            self.task = self.progress.add_task("warming up", total=None, images="", bytes="", rate="", eta="")
        return self.task

    def show(self, status: StatusDoc) -> None:
        task = self._task()
        w = status.get("warmup")
        reason = str(status.get("ready_reason", ""))
        if w:
            f = warmup_figures(w)
            total = w["bytes_done"] + w["bytes_left"]
            self.progress.update(
                task,
                description=reason,
                completed=w["bytes_done"],
                total=total or None,
                images=f["images"],
                bytes=f["bytes"],
                rate=f["rate"],
                eta=f["eta"],
            )
        else:
            self.progress.update(task, description=reason)
        self.progress.refresh()

    def note(self, text: str) -> None:
        self.progress.update(self._task(), description=text)
        self.progress.refresh()

    def close(self) -> None:
        if self.started:
            self.progress.stop()
            self.started = False

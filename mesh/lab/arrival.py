"""The moment a tag reaches an engine, for the benches, watched at no cost while the transfer runs.

Polled 20 ms apart, `docker image inspect` processes take 55% of a core on Engine 20.10 and 68%
on the containerd store (the CLI and the engine together), and even Engine API calls take 5% and
24%. On a 2-core machine whatever the watch costs is taken from the transfer it times, and from
the way that watches longest. So the watch follows the engine's image events and inspects once
per event.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable

import docker
import docker.errors


class Arrival:
    """Subscribed to an engine's image events when made, so make it before the clock starts. A
    thread inspects `ref` once per event (and every `recheck` seconds, should an event go missing)
    and notes the moment it names `image` (any image, if None)."""

    def __init__(self, host: str, ref: str, image: str | None = None, recheck: float = 0.5) -> None:
        self.ref = ref
        self.image = image
        self.recheck = recheck
        self.at: float | None = None
        self._done = threading.Event()
        self._events: queue.SimpleQueue[object] = queue.SimpleQueue()
        # One client for the event stream, one for inspections: each thread has its own.
        self._listener = docker.APIClient(base_url=host)
        self._inspector = docker.APIClient(base_url=host)
        self._stream = self._listener.events(decode=True, filters={"type": "image"})
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=self._watch, daemon=True).start()

    def wait(self, started: float, timeout: float = 900.0, failed: Callable[[], str] = lambda: "") -> float:
        """Seconds from `started` to the arrival, given up `timeout` seconds after `started`
        (several waits on one start share one deadline). `failed` says why it never will come."""
        deadline = started + timeout
        try:
            while not self._done.wait(0.5):
                if why := failed():
                    raise RuntimeError(why)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.ref} did not arrive within {timeout:.0f}s")
            assert self.at is not None
            return self.at - started
        finally:
            self.close()

    def close(self) -> None:
        self._done.set()
        with contextlib.suppress(Exception):
            self._stream.close()
        self._listener.close()

    def _pump(self) -> None:
        with contextlib.suppress(Exception):  # the stream ends when closed
            for event in self._stream:
                self._events.put(event)

    def _watch(self) -> None:
        try:
            while not self._done.is_set():
                with contextlib.suppress(queue.Empty):
                    self._events.get(timeout=self.recheck)
                if self._arrived():
                    self.at = time.monotonic()
                    self._done.set()
        finally:
            self._inspector.close()

    def _arrived(self) -> bool:
        try:
            found = self._inspector.inspect_image(self.ref)["Id"]
        except docker.errors.APIError:  # not there yet (404), or the engine busy loading
            return False
        return self.image is None or found == self.image

"""Shared fixtures and test hygiene (after python-zeroconf's conftest).

- Async tests fail if a callback blocks the event loop for more than 0.25 s, or if they leave
  tasks running.
- Real engines and network namespaces come from mesh.lab; tests that need them are marked
  `docker` / `netns` and skip with the reason on a machine that cannot run them. The marks are
  the tiers, and they are enforced: a test not marked `docker` that starts a real engine, or not
  marked `netns` that makes a network of namespaces, fails and says which mark it lacks. scripts/test
  installs everything they need and runs them all. Under CI=true any skip fails the run
  (tests/ci_skips.py).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.lab import dockerd as dockerd_mod
from mesh.lab.engines import DEFAULT, KINDS, EngineKind
from mesh.lab.netns import Network
from tests.ci_skips import pytest_sessionfinish, pytest_terminal_summary

__all__ = ["pytest_sessionfinish", "pytest_terminal_summary"]  # hooks: skips fail a CI run

ROOT = Path(os.environ.get("CACHEMESH_TEST_ROOT", "/tmp/cachemesh-tests"))


class _Stalls:
    """Notices when the whole test process was not running (a busy CI host descheduling it) or was
    collecting garbage (a full collection late in a long suite), so the blocking detector does not
    blame the event loop for time the code under test did not spend.

    A thread wakes every 20 ms. A wake-up late by more than 0.2 s during which this process used
    little CPU means it was descheduled: the loop blocking in Python or in a C call that holds the
    GIL would have burnt CPU, and a loop blocked in a system call would have let this thread run.
    """

    def __init__(self) -> None:
        self.spans: list[tuple[float, float]] = []
        self._lock = threading.Lock()
        self._collecting = 0.0
        threading.Thread(target=self._tick, name="stall-watch", daemon=True).start()
        gc.callbacks.append(self._gc)

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._collecting = time.monotonic()
        elif self._collecting and time.monotonic() - self._collecting > 0.05:
            with self._lock:
                self.spans.append((self._collecting, time.monotonic()))

    def _tick(self) -> None:
        while True:
            wall, cpu = time.monotonic(), time.process_time()
            time.sleep(0.02)
            late = time.monotonic() - wall - 0.02
            if late > 0.2 and time.process_time() - cpu < late / 2:
                with self._lock:
                    self.spans.append((wall, time.monotonic()))
                    del self.spans[:-100]

    def covered(self, start: float, end: float) -> float:
        """Seconds of [start, end] during which the process was descheduled."""
        with self._lock:
            return sum(max(0.0, min(end, b) - max(start, a)) for a, b in self.spans)


_STALLS = _Stalls()
_SLOW = 0.25


class _BlockingDetector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.slow: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        found = re.search(r"^Executing .* took (\d+\.\d+) seconds$", message, re.DOTALL)
        if not found:
            return
        took, end = float(found.group(1)), time.monotonic()
        if took - _STALLS.covered(end - took - 0.05, end) > _SLOW:
            self.slow.append(message)


@pytest.fixture(autouse=True)
def _event_loop_hygiene(request: pytest.FixtureRequest) -> Iterator[None]:
    if not asyncio.iscoroutinefunction(getattr(request.node, "obj", None)):
        yield
        return
    detector = _BlockingDetector()
    logger = logging.getLogger("asyncio")
    logger.addHandler(detector)
    yield
    logger.removeHandler(detector)
    assert not detector.slow, f"event loop blocked: {detector.slow[:3]}"


@pytest.fixture(autouse=True)
async def _loop_guard(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Runs inside each async test's loop: debug timing on, and no task may outlive the test."""
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = _SLOW
    before = asyncio.all_tasks()
    yield
    pending = [t for t in asyncio.all_tasks() - before if t is not asyncio.current_task() and not t.done()]
    if pending:  # tasks being cancelled (aiohttp connection handlers at shutdown) get a moment to finish
        await asyncio.wait(pending, timeout=1.0)
    leaked = [t for t in pending if not t.done()]
    for task in leaked:
        task.cancel()
    assert not leaked, f"tasks leaked: {[t.get_stack(limit=3) for t in leaked][:2]}"


# The tiers: what a test without each mark may not start. A fixture of a wider scope (a module's
# lab) is made before this guard is in place; the tests that use it carry the mark anyway.
TIER_GUARDS = {
    "docker": (dockerd_mod.Dockerd, "start", "starts a real dockerd"),
    "netns": (Network, "__init__", "makes network namespaces"),
}


def tier_refusal(test: str, mark: str, what: str) -> str:
    return f"{test} {what} but is not marked {mark}: add pytest.mark.{mark} (docs/testing.md, Tiers)"


@pytest.fixture(autouse=True)
def _tiers_are_marked(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    for mark, (cls, method, what) in TIER_GUARDS.items():
        if request.node.get_closest_marker(mark) is None:
            message = tier_refusal(request.node.nodeid, mark, what)

            def refuse(*args: object, _message: str = message, **kwargs: object) -> None:
                pytest.fail(_message, pytrace=False)

            monkeypatch.setattr(cls, method, refuse)


@pytest.fixture(scope="session", autouse=True)
def _no_engine_outlives_the_tests() -> Iterator[None]:
    """Engines left by a run that was killed before its teardown are stopped before this run
    starts; any engine this run leaves running is stopped at its end, and named."""
    if os.geteuid() == 0:
        dockerd_mod.reap_engines(ROOT)
    yield
    if os.geteuid() == 0:
        leaked = dockerd_mod.reap_engines(ROOT, owner=os.getpid())
        if leaked:
            logging.getLogger("tests").warning("stopped engines a test left running: %s", leaked)


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = ROOT / uuid.uuid4().hex[:8]
    path.mkdir(parents=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _need_engines() -> None:
    reason = dockerd_mod.available()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def engines(workdir: Path) -> Iterator[object]:
    """Factory: engines(name, netns=None, kind=DEFAULT) -> a started private Dockerd, destroyed
    after the test. `kind` is one of mesh.lab.engines.KINDS."""
    _need_engines()
    started: list[dockerd_mod.Dockerd] = []

    def make(name: str, netns: str | None = None, kind: EngineKind = DEFAULT) -> dockerd_mod.Dockerd:
        if kind.missing():
            pytest.fail(f"{kind.missing()}: scripts/test installs every engine of the matrix")
        engine = dockerd_mod.Dockerd(workdir / f"engine-{name}", netns=netns, name=name, kind=kind).start()
        started.append(engine)
        return engine

    yield make
    for engine in started:
        engine.destroy()


@pytest.fixture
def network() -> Iterator[Network]:
    _need_engines()
    net = Network()  # a free tag and subnet: other networks may exist on this machine
    yield net
    net.destroy()


@pytest.fixture(params=list(KINDS), ids=list(KINDS))
def engine_kind(request: pytest.FixtureRequest) -> EngineKind:
    """Every engine and image store of the matrix (docs/engines.md)."""
    return KINDS[request.param]

"""Shared fixtures and test hygiene (after python-zeroconf's conftest).

- Async tests fail if a callback blocks the event loop for more than 0.25 s, or if they leave
  tasks running.
- Real engines and network namespaces come from mesh.lab; tests that need them are marked
  `docker` / `netns` and skip with the reason on a machine that cannot run them. scripts/test
  installs everything they need and runs them all. Under CI=true any skip fails the run
  (tests/ci_skips.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
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


class _BlockingDetector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.slow: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Executing") and " took " in message:
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
    loop.slow_callback_duration = 0.25
    before = asyncio.all_tasks()
    yield
    pending = [t for t in asyncio.all_tasks() - before if t is not asyncio.current_task() and not t.done()]
    if pending:  # tasks being cancelled (aiohttp connection handlers at shutdown) get a moment to finish
        await asyncio.wait(pending, timeout=1.0)
    leaked = [t for t in pending if not t.done()]
    for task in leaked:
        task.cancel()
    assert not leaked, f"tasks leaked: {[t.get_stack(limit=3) for t in leaked][:2]}"


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

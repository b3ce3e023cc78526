"""The event-loop blocking detector itself: it must catch a blocked loop, and must not blame the
loop when the whole process was descheduled (what failed a CI run on a busy host once)."""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import time

from mesh.lab.poll import wait_until
from tests.conftest import _STALLS, _BlockingDetector


def _report(took: float) -> logging.LogRecord:
    message = f"Executing <Task pending name='Task-1' coro=<run()>> took {took:.3f} seconds"
    return logging.LogRecord("asyncio", logging.WARNING, __file__, 1, message, None, None)


def test_a_blocked_loop_is_reported() -> None:
    detector = _BlockingDetector()
    time.sleep(0.4)  # the loop "blocked" in a system call: this process kept running
    detector.emit(_report(0.4))
    assert detector.slow


def test_a_short_step_is_not_reported() -> None:
    detector = _BlockingDetector()
    detector.emit(_report(0.1))
    assert not detector.slow


def test_time_the_process_spent_stopped_is_not_blamed_on_the_loop() -> None:
    before = len(_STALLS.spans)
    # Another process stops this one for 0.6 s, as a host under load deschedules it.
    stopper = subprocess.Popen(["sh", "-c", f"kill -STOP {os.getpid()}; sleep 0.6; kill -CONT {os.getpid()}"])
    stopper.wait()
    wait_until(lambda: len(_STALLS.spans) > before, timeout=5, what="the stall watcher to see the stop")
    start, end = _STALLS.spans[-1]
    assert end - start >= 0.5
    detector = _BlockingDetector()
    detector.emit(_report(time.monotonic() - start))
    assert not detector.slow


def test_a_long_garbage_collection_is_not_blamed_on_the_loop() -> None:
    before = len(_STALLS.spans)
    cycles = []
    for _ in range(2_000_000):  # enough reference cycles for a collection well over 50 ms
        node: list[object] = []
        node.append(node)
        cycles.append(node)
    del cycles
    start = time.monotonic()
    gc.collect()
    assert len(_STALLS.spans) > before
    detector = _BlockingDetector()
    detector.emit(_report(time.monotonic() - start))
    assert not detector.slow

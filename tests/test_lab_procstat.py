"""The benches' CPU figures: a process's CPU time counts what it started, even in its own process
group, and the machine's busy time grows with work done."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mesh.lab.poll import wait_until
from mesh.lab.procstat import TICK, cpu_seconds, family, machine_cpu

# A parent that starts a grandchild-to-be in a session (and so a process group) of its own, as
# dockerd starts containerd; the grandchild spins until it has used 0.4 CPU-seconds, says so, and
# waits to be killed.
BURNER = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", '''
import sys, time
while time.process_time() < 0.4:
    pass
open(sys.argv[1], "w").write("done")
time.sleep(600)
''', sys.argv[1]], start_new_session=True)
time.sleep(600)
"""


def test_cpu_seconds_counts_descendants_in_their_own_process_group(tmp_path: Path) -> None:
    marker = tmp_path / "burned"
    parent = subprocess.Popen([sys.executable, "-c", BURNER, str(marker)])
    try:
        wait_until(marker.exists, 30, 0.05, what="the grandchild to burn 0.4 CPU-seconds")
        assert cpu_seconds({"parent": parent.pid})["parent"] >= 0.4
    finally:
        for pid in family(parent.pid) - {parent.pid}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        parent.kill()
        parent.wait()


def test_machine_busy_grows_with_work() -> None:
    wall = time.monotonic()
    before = machine_cpu()
    started = time.process_time()
    while time.process_time() - started < 0.3:
        pass
    spent = machine_cpu() - before
    wall = time.monotonic() - wall
    assert spent.busy >= 0.25
    # The three figures share out the machine's time in CPU-seconds: together, the wall time on
    # every core, give or take a tick per core at either read (less any time a hypervisor stole).
    # A figure in ticks rather than seconds overshoots by a hundredfold.
    cores = os.cpu_count() or 1
    total = spent.busy + spent.iowait + spent.idle
    assert wall * cores * 0.5 <= total <= wall * cores * 1.05 + 2 * cores / TICK, (spent, wall, cores)

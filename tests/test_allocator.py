"""Large buffers stay in the heap once the node has set glibc's thresholds: a stream of fresh
bytes objects of 0.3 to 2 MiB stops costing page faults (and the kernel's zeroing of each page)."""

from __future__ import annotations

import subprocess
import sys

FAULTS_OF_A_STREAM = """
import os, resource, sys
from mesh.allocator import keep_large_buffers_on_the_heap
if sys.argv[1] == "set":
    assert keep_large_buffers_on_the_heap()
pieces = [os.urandom(n) for n in (1 << 20, 700_000, 300_000, 2 << 20)]
def faults(n):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    alive = []
    for i in range(n):  # what a stream does: join, pass on, drop, a few buffers alive at once
        alive.append(b"".join((pieces[i % 4], b"x")))
        if len(alive) > 3:
            alive.pop(0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults(8)
print(faults(400))
"""


def faults(setting: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", FAULTS_OF_A_STREAM, setting], capture_output=True, text=True, check=True
    )
    return int(out.stdout)


def test_a_stream_of_large_buffers_stops_faulting_once_they_stay_in_the_heap() -> None:
    default, kept = faults("default"), faults("set")
    assert default > 400, f"glibc's defaults did not fault as this test expects ({default})"
    assert kept < 40, f"{kept} page faults for 400 buffers kept in the heap"

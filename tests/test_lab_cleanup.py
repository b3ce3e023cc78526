"""The lab cleans up after itself: an engine whose test process died before its teardown is
stopped by the next run, and nothing it mounted stays behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mesh.lab import dockerd as dockerd_mod
from tests.conftest import ROOT

pytestmark = [pytest.mark.docker]

ORPHAN = """
import os, sys
from pathlib import Path
from mesh.lab.dockerd import Dockerd
engine = Dockerd(Path(sys.argv[1]), name="orphan").start()
print(engine.proc.pid, flush=True)
os._exit(0)  # no teardown: the engine outlives this process, as when a test run is killed
"""


def _mounted_under(root: Path) -> list[str]:
    points = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    return [p for p in points if p == str(root) or p.startswith(f"{root}/")]


def test_an_engine_left_by_a_killed_run_is_stopped_and_unmounted(workdir, engines):
    mine = engines("mine")  # this session's own, running
    root = workdir / "engine-orphan"
    started = subprocess.run(
        [sys.executable, "-c", ORPHAN, str(root)], capture_output=True, text=True, timeout=120, check=True
    )
    pid = int(started.stdout.split()[-1])
    assert Path(f"/proc/{pid}").exists()  # orphaned, still running
    assert pid in dockerd_mod.reap_engines(ROOT)
    assert not Path(f"/proc/{pid}").exists()
    assert not _mounted_under(root)
    # A live session's engines are left alone.
    assert mine.proc is not None and mine.proc.poll() is None
    assert mine.cli("version", check=False).returncode == 0

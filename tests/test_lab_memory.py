"""The benches' memory warm-up (mesh.lab.memory) leaves nothing behind and never asks for more
than the machine has."""

from __future__ import annotations

import os
from pathlib import Path

from mesh.lab import memory


def test_touch_writes_then_removes_its_file(tmp_path: Path) -> None:
    memory.touch(tmp_path, 3 * memory.PIECE)
    assert list(tmp_path.iterdir()) == []


def test_usable_keeps_a_margin_of_what_is_available() -> None:
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert memory.usable(1 << 20) == min(1 << 20, max(0, available - (1 << 30)))
    assert memory.usable(1 << 60) < available  # never all of it

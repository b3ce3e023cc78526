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


def test_reporting_paused_sets_the_order_past_any_block_and_restores_it(tmp_path: Path) -> None:
    knob = tmp_path / "page_reporting_order"
    knob.write_text("9\n")
    with memory.reporting_paused(knob) as said:
        assert knob.read_text().strip() == str(memory.NEVER)
        assert "paused" in said
    assert knob.read_text().strip() == "9"


def test_reporting_paused_restores_the_order_when_the_bench_fails(tmp_path: Path) -> None:
    knob = tmp_path / "page_reporting_order"
    knob.write_text("9\n")
    try:
        with memory.reporting_paused(knob):
            raise RuntimeError("the bench failed")
    except RuntimeError:
        pass
    assert knob.read_text().strip() == "9"


def test_reporting_paused_leaves_a_machine_without_reporting_alone(tmp_path: Path) -> None:
    knob = tmp_path / "absent"
    with memory.reporting_paused(knob) as said:
        assert "left as it is" in said
    assert not knob.exists()

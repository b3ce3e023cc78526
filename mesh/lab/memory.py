"""A machine's memory made alike for both ways of a bench.

A virtual machine may back its memory lazily, or take back what the guest freed (virtio-balloon
free page reporting). Then the first write to each page costs a fault in the host: on the
machine these benches were measured on, page cache grew at about 450 MB/s into memory not
touched before, and at 2.4 to 4 GB/s into pages freed a moment earlier. A bench whose two ways
need new memory in unequal amounts, say a node that stores what it passes on while the reference
serves pages it already holds, would time the host's faults, not the software. So a bench
touches memory first (`touch`), and holds the guest's free page reporting off while it runs
(`reporting_paused`): without that, the kernel hands freed pages back to the host within
seconds, and each round meets untouched memory again.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# The kernel reports free blocks of at least this order (2^order pages) to the hypervisor.
REPORTING_ORDER = Path("/sys/module/page_reporting/parameters/page_reporting_order")
# Above the largest order of a free block (10 on x86-64): no block is reported.
NEVER = 11

PIECE = 1 << 20


def touch(directory: Path, nbytes: int) -> None:
    """Write `nbytes` to a file in `directory` and delete it: the page cache takes that much
    memory and gives it back, touched, to the kernel's free lists, where new pages come from."""
    path = directory / ".cachemesh-touch"
    piece = b"\0" * PIECE
    try:
        with open(path, "wb") as fh:
            for _ in range(nbytes // PIECE):
                fh.write(piece)
    finally:
        path.unlink(missing_ok=True)


def usable(nbytes: int) -> int:
    """`nbytes`, or less if the machine has less memory available than that and a margin."""
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return max(0, min(nbytes, available - (1 << 30)))


@contextmanager
def reporting_paused(knob: Path = REPORTING_ORDER) -> Iterator[str]:
    """Free page reporting off for the block, then as it was. Yields what was done, to print:
    a machine without reporting, or where it cannot be changed, is left alone and says so."""
    try:
        before = knob.read_text().strip()
        knob.write_text(f"{NEVER}\n")
    except OSError as exc:
        yield f"free page reporting left as it is ({exc.strerror or exc})"
        return
    try:
        yield f"free page reporting paused (page_reporting_order {before} -> {NEVER}; restored after)"
    finally:
        knob.write_text(f"{before}\n")

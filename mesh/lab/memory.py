"""Touching a machine's memory before a bench times anything.

A virtual machine may back its memory lazily, or take back what the guest freed (virtio-balloon
free page reporting). Then the first write to each page costs a fault in the host: on the
machine these benches were measured on, page cache grew at about 450 MB/s into memory not
touched before, and at 2.4 to 4 GB/s into pages freed a moment earlier. A bench whose two ways
need new memory in unequal amounts, say a node that stores what it passes on while the reference
serves pages it already holds, would time the host's faults, not the software.
"""

from __future__ import annotations

import os
from pathlib import Path

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

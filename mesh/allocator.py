"""Large buffers from the heap, not from fresh mappings (glibc's malloc).

A node moves hundreds of megabytes through bytes objects of 64 KiB to a few MiB: socket reads,
TLS records decrypted and joined, HTTP chunks joined before a write. glibc serves any allocation
above its mmap threshold with a fresh mmap, and on free returns heap space above its trim
threshold to the kernel. Either way, the next buffer of that size costs a page fault per 4 KiB
and the kernel zeroing every page: for a stream, more CPU than the copies themselves. Raising
both thresholds keeps those buffers in the heap, reused. Measured on a 2-core VM, 512 MB over
TLS with aiohttp on uvloop (1 MiB chunked writes): the sender's CPU fell from 0.83 s to 0.35 s,
the receiver's from 0.73 s to 0.42 s, with the same peak RSS (44 to 46 MB), because a streaming
node holds only a few such buffers at a time.
"""

from __future__ import annotations

import ctypes

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 16 << 20  # a few-MiB buffer comes from the heap
TRIM_THRESHOLD = 32 << 20  # up to this much free heap stays with the process, for the next ones


def keep_large_buffers_on_the_heap() -> bool:
    """Set the thresholds for this process. False where the C library has no such settings
    (not glibc): then nothing changes, and the node only runs slower."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mapped = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    trimmed = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return bool(mapped and trimmed)

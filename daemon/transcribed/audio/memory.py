"""Keep a long-running process's memory flat.

glibc serves large temporary buffers (the model's audio features, decoded blocks: a few to
tens of MB each) from mmap at first, then raises its mmap threshold after each free, so later
buffers come from the heap, which fragments and never shrinks: measured, resident memory
crept up by ~100 MiB per hour of audio. Pinning the threshold keeps big buffers on mmap,
returned to the system when freed: flat (see tests/test_load.py).
"""

import ctypes
import ctypes.util

_M_MMAP_THRESHOLD = -3  # from <malloc.h>
_THRESHOLD_BYTES = 1 << 20


def pin_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold at 1 MiB; False where the C library has no mallopt (musl)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False

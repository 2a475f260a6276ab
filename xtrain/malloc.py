"""Keep freed memory in the process instead of handing it back to the kernel every step.

Why: a CPU training or inference step allocates and frees the same few MB of activations
over and over.  glibc's malloc, by default, serves large blocks with ``mmap`` and trims
free memory at the top of the heap, with thresholds that move as the program runs.  So a
step can give pages back to the kernel and the next step faults them in again, zeroed.
Measured on the 2-core dev machine: ~4500 minor page faults per step and 18 % of the step
time for the width-8 U-Net of tests/test_malloc.py; 6-21 thousand faults per step and 0-25 %
of the step time (it varies from run to run with the heap's layout) for the U-Net of
bench/loader.py, more often in a process whose heap also holds a chunk cache.  With both
thresholds fixed the faults drop to about zero.

    keep_freed_memory()      # once per process, before the loop; forked children inherit it

The cost: up to ``trim_threshold_mb`` of freed memory stays in the process (it was about to
be used again anyway), and blocks under ``mmap_threshold_mb`` come from the heap.  glibc
only; elsewhere (macOS, musl) it does nothing and says so in the debug log.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

# mallopt(3) parameter numbers, from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD_MB = 32  # the largest value glibc documents for M_MMAP_THRESHOLD on 64-bit
TRIM_THRESHOLD_MB = 256


def keep_freed_memory(mmap_threshold_mb: int = MMAP_THRESHOLD_MB, trim_threshold_mb: int = TRIM_THRESHOLD_MB) -> bool:
    """Fix glibc's mmap and trim thresholds for this process; True when they were set.

    Setting either threshold explicitly also turns off glibc's dynamic adjustment of them.
    Calling it again is harmless.
    """
    try:
        # the symbols already loaded into this process (libc's among them): no library search,
        # which on Linux would run ldconfig in a subprocess
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        log.debug("no mallopt in this process's C library: allocator thresholds left as they are")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, mmap_threshold_mb << 20) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, trim_threshold_mb << 20) == 1 and ok
    if not ok:
        log.debug("mallopt refused mmap_threshold=%d MB / trim_threshold=%d MB", mmap_threshold_mb, trim_threshold_mb)
    return ok

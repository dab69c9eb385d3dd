"""Process-wide settings for the command-line programs: the memory allocator's thresholds."""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["tune_malloc"]


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)


def tune_malloc(mmap_threshold: int = 32 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Keep freed memory in this process's heap instead of returning it to the system at once (glibc only).

    Every batch allocates and frees the same large arrays (augmented images, the collated batch, activations and
    gradients). With glibc's defaults, blocks above the dynamic mmap threshold get fresh pages from the kernel
    each time, and freed memory above 2x that threshold is trimmed at once, so the next batch takes a page fault
    (a zeroed 4 KiB page) on every page again: ~150 faults per 320x320 loader item, ~30% of its time (measured,
    bench/README.md). A fixed mmap threshold of ``mmap_threshold`` (glibc's largest allowed, 32 MiB) and a trim
    threshold of ``trim_threshold`` bytes make the heap keep its peak working set instead; memory use stays at
    that peak rather than dipping between batches. Values are what glibc's MALLOC_MMAP_THRESHOLD_ and
    MALLOC_TRIM_THRESHOLD_ environment variables set; when the user set either (or GLIBC_TUNABLES), nothing is
    changed. Settings are inherited by forked DataLoader workers. Call from a program's ``main``, not on import.

    Returns:
        True when the settings were applied; False elsewhere (another C library, another OS, user settings).
    """
    if not sys.platform.startswith("linux") or any(
        k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
    ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no such symbol: not glibc (musl has none)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))
    return bool(ok) and bool(mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)))

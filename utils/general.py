"""Small CLI helpers: logging setup, input-file checks and the process's memory-allocator settings."""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["setup_logging", "check_file", "tune_malloc"]


class _PlainFormatter(logging.Formatter):
    """The message alone for INFO and below; ``WARNING: message`` above. No colours (logs end up in files)."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"{record.levelname}: {text}" if record.levelno >= logging.WARNING else text


def setup_logging(verbose: bool = False, rank: int = 0) -> None:
    """Configure the root logger for a command-line program (call once from ``main``, never from libraries).

    Rank 0 logs INFO (DEBUG with ``verbose``) to stderr; other DDP ranks log warnings and errors only, with
    a ``[rank N]`` prefix, so a multi-GPU run prints each message once. Calling again replaces the handler
    installed by an earlier call and leaves other handlers (e.g. pytest's) alone.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_yolov3_cli", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._yolov3_cli = True  # type: ignore[attr-defined]
    handler.setFormatter(_PlainFormatter("%(message)s" if rank == 0 else f"[rank {rank}] %(message)s"))
    root.addHandler(handler)
    if rank == 0:
        root.setLevel(logging.DEBUG if verbose else logging.INFO)
    else:
        root.setLevel(logging.WARNING)


def check_file(path: str | Path, kind: str, search_dirs: Sequence[str | Path] = ()) -> Path:
    """The existing file ``path`` (as given, else under each of ``search_dirs`` in order).

    Args:
        path: the file the user named.
        kind: what it is, for the message ('cfg', 'data', 'weights', 'hyp', ...).
        search_dirs: folders also tried for a relative ``path`` (e.g. ``cfg/`` for a bare cfg name).

    Raises:
        FileNotFoundError: naming every place that was looked at.
    """
    if str(path) == "":
        raise FileNotFoundError(f"no {kind} file given")
    path = Path(path)
    candidates = [path]
    if not path.is_absolute():
        candidates += [Path(d) / path for d in search_dirs]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(c.resolve()) + (" (a folder)" if c.is_dir() else "") for c in candidates)
    raise FileNotFoundError(f"{kind} file '{path}' not found; looked in: {looked}")


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

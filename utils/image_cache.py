"""The shared RAM image cache (``SharedImageCache``) and the memory check of ``--cache-images``.

The cache's memory is public-API shared memory (``SharedBytes``): an anonymous memory file (``os.memfd_create``;
elsewhere an unlinked temporary file) mapped ``MAP_SHARED`` with ``mmap``. Forked DataLoader workers inherit the
mapping; spawned and forkserver workers receive the file descriptor while the dataset is pickled for their start
(``multiprocessing.reduction.DupFd``, as ``multiprocessing.heap`` does), so every process sees the same pages.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import tempfile
import weakref
from multiprocessing.reduction import DupFd
from pathlib import Path

import numpy as np


def _memory_file(size: int) -> int:
    """A file descriptor of a new anonymous memory file of ``size`` bytes, all zero and not yet taking memory."""
    try:
        fd = os.memfd_create("image-cache", os.MFD_CLOEXEC)
    except (AttributeError, OSError):  # no memfd (not Linux): an unlinked temporary file, in RAM where possible
        with tempfile.TemporaryFile(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as f:
            fd = os.dup(f.fileno())
    os.ftruncate(fd, size)
    return fd


class SharedBytes:
    """``nbytes`` zero bytes (``array``, a writable uint8 numpy view) shared with the processes this one starts.

    A forked child shares them through the inherited ``MAP_SHARED`` mapping; a spawned or forkserver child gets
    the memory file's descriptor when the object is pickled for the child's start. Any other pickle or deepcopy
    gets its own copy of the bytes. Pages take memory only once written.
    """

    def __init__(self, nbytes: int) -> None:
        self.nbytes = int(nbytes)
        self._open(_memory_file(self.size))

    @property
    def size(self) -> int:
        """Bytes mapped (at least 1: an empty mapping cannot be made)."""
        return max(self.nbytes, 1)

    def _open(self, fd: int) -> None:
        self._fd = fd
        weakref.finalize(self, os.close, fd)
        self._map = mmap.mmap(fd, self.size)  # MAP_SHARED, read and write
        self.array = np.frombuffer(self._map, dtype=np.uint8, count=self.nbytes)

    def __getstate__(self) -> dict:
        if multiprocessing.context.get_spawning_popen() is not None:  # a child process being started
            return {"nbytes": self.nbytes, "fd": DupFd(self._fd)}
        return {"nbytes": self.nbytes, "copy": self.array.copy()}

    def __setstate__(self, state: dict) -> None:
        self.nbytes = state["nbytes"]
        if "fd" in state:
            self._open(state["fd"].detach())
        else:
            self._open(_memory_file(self.size))
            self.array[:] = state["copy"]


class SharedImageCache:
    """Decoded, resized images (``load_image`` results) in one shared-memory block, filled on first use.

    A mosaic item reads 4 images, so without a cache an epoch decodes every image about 4 times, and again in
    every epoch. The block is allocated by the process that builds the dataset, before any DataLoader worker
    starts, and is shared by that process and all its workers (fork, spawn or forkserver: ``SharedBytes`` passes
    the memory, not a copy), also across epochs when workers are re-created: each image is decoded once per run by
    whichever process needs it first. Pages take memory only once an image is written.

    Slots are given to images in index order while they fit in ``budget_bytes`` (fill until full, no eviction:
    under a random order every policy hits the same fraction); an image whose decoded size differs from the
    expected one is simply not cached. Slot i holds exactly the array ``load_image`` returned, so cached and
    uncached items are identical. A slot is claimed, written, then published under a lock; a process that sees
    it published reads it lock-free afterwards.
    """

    _EMPTY, _BUSY, _READY = 0, 1, 2
    _LOCK_TIMEOUT_S = 1.0  # a lock held this long (a worker killed inside it): treat as a miss rather than hang

    def __init__(self, shapes_hw: np.ndarray, budget_bytes: int) -> None:
        """``shapes_hw``: (n, 2) expected (h, w) of each resized image; ``budget_bytes``: the most memory used."""
        self.shapes_hw = np.asarray(shapes_hw, dtype=np.int64).reshape(-1, 2)
        nbytes = self.shapes_hw.prod(1) * 3
        end = np.cumsum(nbytes)
        fits = end <= budget_bytes
        self.offsets = np.where(fits, end - nbytes, -1)
        self.nbytes = int(end[fits][-1]) if fits.any() else 0
        self._block = SharedBytes(self.nbytes)  # the images; fresh pages, taken only when an image is written
        self._meta = SharedBytes(len(self.shapes_hw) * 3 * 8)  # (n, 3) int64 per slot: state, h0, w0
        # A spawn-context lock can be handed to fork, spawn and forkserver workers alike.
        self._lock = multiprocessing.get_context("spawn").Lock()
        self._views()

    def _views(self) -> None:
        self._buf, self._meta_np = self._block.array, self._meta.array.view(np.int64).reshape(-1, 3)
        self._seen = np.zeros(len(self.shapes_hw), dtype=bool)  # per process: slots known to be published

    def __getstate__(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if k not in ("_buf", "_meta_np", "_seen")}
        if multiprocessing.context.get_spawning_popen() is None:
            # A plain pickle or deepcopy (not a worker start) copies the memory, so the copy gets its own lock.
            state["_lock"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self._lock is None:
            self._lock = multiprocessing.get_context("spawn").Lock()
        self._views()

    def __len__(self) -> int:
        """Number of images cached so far (in any process)."""
        return int((self._meta_np[:, 0] == self._READY).sum())

    def get(self, i: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]] | None:
        """``load_image``'s result for image i as a read-only view, or None when it is not cached."""
        o = self.offsets[i]
        if o < 0:
            return None
        if not self._seen[i]:
            if not self._lock.acquire(timeout=self._LOCK_TIMEOUT_S):
                return None
            try:
                state = self._meta_np[i, 0]
            finally:
                self._lock.release()
            if state != self._READY:
                return None
            self._seen[i] = True
        h, w = self.shapes_hw[i]
        img = self._buf[o : o + h * w * 3].reshape(h, w, 3)
        img.flags.writeable = False
        return img, (int(self._meta_np[i, 1]), int(self._meta_np[i, 2])), (int(h), int(w))

    def put(self, i: int, img: np.ndarray, shape_hw0: tuple[int, int]) -> None:
        """Store image i's ``load_image`` result if it has a slot, the expected shape and nobody stored it yet."""
        o = self.offsets[i]
        if o < 0 or img.shape != (*self.shapes_hw[i], 3) or img.dtype != np.uint8:
            return
        if not self._lock.acquire(timeout=self._LOCK_TIMEOUT_S):
            return
        try:
            claimed = self._meta_np[i, 0] == self._EMPTY
            if claimed:
                self._meta_np[i, 0] = self._BUSY
        finally:
            self._lock.release()
        if not claimed:
            return
        self._buf[o : o + img.size] = img.reshape(-1)
        if not self._lock.acquire(timeout=self._LOCK_TIMEOUT_S):
            return  # the slot stays claimed and unused
        try:
            self._meta_np[i, 1:] = shape_hw0
            self._meta_np[i, 0] = self._READY
        finally:
            self._lock.release()


def mem_available(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """The memory available to new allocations, in bytes (MemAvailable of /proc/meminfo); None where unknown."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_preload_fits(nbytes: int, n: int, where: str, available: int | None, fraction: float = 0.5) -> None:
    """Refuse ``cache_images`` (--cache-images) when its ``nbytes`` of decoded images would take more than
    ``fraction`` of the ``available`` memory (at the start of the run, instead of an out-of-memory kill an hour
    later). Nothing is checked when the available memory is unknown.

    Raises:
        ValueError: naming the image count, the sizes and the fix.
    """
    if available is not None and nbytes > fraction * available:
        raise ValueError(
            f"{where}: --cache-images would keep {n:,} decoded images, {nbytes / 2**30:.1f} GiB, in this process's "
            f"memory, but only {available / 2**30:.1f} GiB is available (MemAvailable in /proc/meminfo) and at most "
            f"{fraction:.0%} of it may go to the image cache. Drop --cache-images: the default shared RAM cache "
            "(ram_cache_mb, 1024 MiB per dataset) keeps the images that fit and decodes the rest, with identical items"
        )


"""The label cache: validated labels and image sizes of a dataset source, keyed by its files, written atomically.

The cache is kept per image source (``cache_path_for``): a ``.txt`` list ``x/train.txt`` gets ``x/train.cache``, an
image folder ``images/train`` gets ``labels/train.cache``, so train and valid lists sharing a labels folder never
share a cache. The key holds the source, ``CACHE_VERSION``, ``nc`` and every image's and label file's path, size and
modification time (or, with ``cache_check='content'``, a hash of each label file's bytes), so editing any file
rebuilds it. An unreadable cache is rebuilt with a warning; writes are atomic and fsynced. Folders whose permission
bits forbid writing (read-only dataset mounts) get no cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from utils.files import fsync_dir

LOGGER = logging.getLogger(__name__)

CACHE_VERSION = 2  # bump when the cache layout or the validation rules change
CACHE_CHECKS = ("mtime", "content")
CACHE_CHECK_HELP = (
    "how the label cache notices edited label files: 'mtime' (default) keys it by every image's and label file's "
    "path, size and modification time; 'content' hashes each label file's bytes instead, for label tools that keep "
    "mtimes. Cost measured on coco128 (128 images, 126 label files, warm page cache, busy 2-core CPU): the key takes "
    "about 1 ms by mtime and 3 ms by content, i.e. some 17 us more per label file (about 2 s for COCO train2017's "
    "117k); a full rescan takes 220-540 ms"
)


def cache_path_for(sources: Sequence[str | Path], label_files: Sequence[str]) -> Path:
    """Where the label cache of an image source lives: one file per image list or folder.

    A single ``.txt`` list ``x/train.txt`` -> ``x/train.cache`` (beside the list, so two lists that share a labels
    folder get two caches); a single folder -> ``<labels folder>.cache`` beside the labels folder of its first
    image (``images/train`` -> ``labels/train.cache``); anything else (several sources, a glob, one image) ->
    ``<labels folder>.<hash of the sources>.cache``. A list in a folder that is not writable falls back to the
    last form.
    """
    labels_dir = Path(label_files[0]).parent
    if len(sources) == 1:
        src = Path(sources[0])
        if src.suffix.lower() == ".txt" and src.is_file() and _writable(src.parent):
            return src.with_suffix(".cache")
        if src.is_dir():
            return labels_dir.parent / f"{labels_dir.name}.cache"
    digest = hashlib.sha256("\n".join(os.path.abspath(s) for s in sources).encode()).hexdigest()[:10]
    return labels_dir.parent / f"{labels_dir.name}.{digest}.cache"


def _writable(folder: Path) -> bool:
    """The folder exists and may be written, by permission bits too (a read-only mount seen by root is not)."""
    try:
        return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)
    except OSError:
        return False


def cache_key(
    img_files: Sequence[str],
    label_files: Sequence[str],
    nc: int | None,
    sources: Sequence[str | Path] = (),
    cache_check: str = "mtime",
) -> str:
    """Hash of ``CACHE_VERSION``, ``nc``, the image sources the cache is made for, every image's path, size and
    modification time and every label file's path, size and modification time (``cache_check='mtime'``) or path
    and content hash (``'content'``).

    Raises:
        ValueError: an unknown ``cache_check``.
    """
    if cache_check not in CACHE_CHECKS:
        raise ValueError(f"cache_check={cache_check!r}: expected one of {', '.join(CACHE_CHECKS)}")
    src = "|".join(os.path.abspath(s) for s in sources)
    h = hashlib.sha256(f"v{CACHE_VERSION}|nc={nc}|n={len(img_files)}|{cache_check}|{src}\n".encode())
    for f in img_files:
        h.update(_stat_line(f))
    for f in label_files:
        if cache_check == "content":
            try:
                h.update(f"{f}|{hashlib.sha256(Path(f).read_bytes()).hexdigest()}\n".encode())
            except OSError:
                h.update(f"{f}|-\n".encode())
        else:
            h.update(_stat_line(f))
    return h.hexdigest()


def _stat_line(f: str) -> bytes:
    try:
        st = os.stat(f)
        return f"{f}|{st.st_size}|{st.st_mtime_ns}\n".encode()
    except OSError:
        return f"{f}|-\n".encode()


def load_cache(
    cache_path: Path, key: str, n: int | None = None
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, dict, list[int]] | None:
    """Labels, shapes, orientations, report and missing-label indices from ``cache_path`` if it exists, is
    readable, holds ``n`` images (when given) and matches ``key``; else None.

    A cache that exists but cannot be read for any reason (0 bytes after a power loss, truncated, random or
    flipped bytes, another layout) gets a one-line warning naming it; the caller rebuilds it.
    """
    if not cache_path.exists():
        return None
    try:
        with np.load(cache_path, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None  # made for other files or an older state of them: a normal rebuild, no warning
            counts = z["counts"].astype(np.int64)
            flat, shapes, orientation = z["labels"], z["shapes"], z["orientation"]
            missing = [int(i) for i in z["missing"]]
            report = json.loads(str(z["report"]))
        m = len(counts)
        if (n is not None and m != n) or flat.ndim != 2 or flat.shape[1] != 5 or int(counts.sum()) != len(flat) \
                or shapes.shape != (m, 2) or orientation.shape != (m,) or not isinstance(report, dict) \
                or any(not 0 <= i < m for i in missing):
            raise ValueError("its arrays do not fit together")
        labels = np.split(flat.astype(np.float32), np.cumsum(counts)[:-1]) if m else []
        return list(labels), shapes, orientation, report, missing
    except Exception as e:  # noqa: BLE001 - the cache is derived data: any failure to read it means "rebuild"
        reason = " ".join(str(e).split())[:200]  # one line, whatever the exception says
        LOGGER.warning("label cache %s is unreadable (%s: %s); rebuilding it", cache_path, type(e).__name__, reason)
        return None


def save_cache(
    cache_path: Path,
    key: str,
    labels: list[np.ndarray],
    shapes: np.ndarray,
    orientation: np.ndarray,
    report: dict,
    missing: Sequence[int] = (),
) -> None:
    """Write the cache atomically and durably: a temporary file, fsynced, renamed over the cache, then the folder
    fsynced (a rename that is not yet on disk when the power fails leaves a 0-byte file on some file systems).
    Skip it, with a debug log, where writing fails or the folder is read-only."""
    folder = cache_path.parent
    if not _writable(folder):
        LOGGER.debug("not writing label cache: %s is read-only", folder)
        return
    tmp = cache_path.with_name(f".{cache_path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(
                f,
                key=np.array(key),
                labels=np.concatenate(labels, 0) if labels else np.zeros((0, 5), np.float32),
                counts=np.array([len(x) for x in labels], dtype=np.int64),
                shapes=shapes,
                orientation=orientation,
                report=np.array(json.dumps(report)),
                missing=np.array(missing, dtype=np.int64),
            )
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, cache_path)
        fsync_dir(folder)
    except OSError as e:
        LOGGER.debug("not writing label cache %s: %s", cache_path, e)
        tmp.unlink(missing_ok=True)

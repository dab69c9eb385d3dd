"""Detection datasets: image lists, label validation and caching, ``LoadImagesAndLabels`` and ``.data`` files.

Labels are found as ultralytics users expect: the last ``images`` folder of an image's path becomes ``labels``
and the extension ``.txt`` (``data/x/images/train/a.jpg`` -> ``data/x/labels/train/a.txt``); an image with no
``images`` folder in its path has its label file beside it. A label file has one box per line,
``class x_center y_center width height``, normalised to 0..1.

Image lists (``.txt``, one image per line): an absolute entry is used as is; a relative entry resolves against the
working directory first, then against the list's folder (the reference trainer read entries relative to the
working directory); an entry starting with ``./`` tries the list's folder first (YOLOv5's convention, and what
``utils.convert`` writes). An entry found in neither place is an error naming the list, the line and both places.

Every label file and image is checked once, when the dataset is opened (in the main process, so no error can
surface from inside a DataLoader worker). All problems of the whole set are collected (``scan_source``) and
reported together, grouped by kind. The result is cached per image source (``cache_path_for``): a ``.txt`` list
``x/train.txt`` gets ``x/train.cache``, an image folder ``images/train`` gets ``labels/train.cache``, so train and
valid lists sharing a labels folder never share a cache. The key holds the source, ``CACHE_VERSION``, ``nc`` and
every image's and label file's path, size and modification time (or, with ``cache_check='content'``, a hash of
each label file's bytes), so editing any file rebuilds it. An unreadable cache is rebuilt with a warning; writes
are atomic and fsynced. Folders whose permission bits forbid writing (read-only dataset mounts) get no cache.

Speed: decoded, resized images are kept in a shared-memory RAM cache (``SharedImageCache``, ``ram_cache_mb``) that
the main process and every DataLoader worker fill and read, so each image is decoded once per run rather than
about four times per epoch (mosaic). The epoch lives in shared memory too, so DataLoader workers may be persistent.
With ``num_workers=0`` the images of a batch are decoded by a few threads (``threads``). None of this changes an item:
it stays a pure function of (seed, epoch, index).

Command line: ``python -m utils.datasets check data/coco128.data [--img-size 416] [--plot labels.png]
[--cache-check content]`` validates the train and valid sets of a ``.data`` file, prints every problem grouped by
kind, the counts and the per-class table, and exits 1 on any problem.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import logging
import math
import multiprocessing
import os
import shutil
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from utils.augmentations import (
    KEEP_MAX_AR,
    KEEP_MIN_WH,
    apply_hsv,
    hsv_gains,
    letterbox,
    mosaic_affine,
    random_affine,
)
from utils.boxes import xyxy2xywh
from utils.hyp import DEFAULT_HYP
from utils.parse_config import parse_data_cfg
from utils.shapes import ensure_builtin_dataset

LOGGER = logging.getLogger(__name__)

IMG_FORMATS = (".bmp", ".jpg", ".jpeg", ".png", ".tif", ".tiff", ".dng", ".webp")
CACHE_VERSION = 2  # bump when the cache layout or the validation rules change
MAX_LISTED = 10  # problems named in the error that stops training (python -m utils.datasets check lists all kinds)
AUGMENT_KEYS = ("hsv_h", "hsv_s", "hsv_v", "degrees", "translate", "scale", "shear")
_EXIF_ORIENTATION = 0x0112
_REDUCED_FLAGS = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


# ----------------------------------------------------------------------------------------------- problems
@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: ``kind`` groups it in reports, ``where`` is ``file:line`` or ``file``, and
    ``message`` is the full sentence (location, value, rule and fix)."""

    kind: str
    where: str
    message: str


class DatasetError(ValueError):
    """A dataset that cannot be trained on; ``problems`` holds every problem found, the message lists some."""

    def __init__(self, message: str, problems: Sequence[Problem]) -> None:
        super().__init__(message)
        self.problems = list(problems)


def group_problems(problems: Sequence[Problem]) -> dict[str, list[Problem]]:
    """Problems by kind, kinds in order of first appearance."""
    groups: dict[str, list[Problem]] = {}
    for p in problems:
        groups.setdefault(p.kind, []).append(p)
    return groups


def format_problems(problems: Sequence[Problem], per_kind: int = 5, limit: int | None = None) -> str:
    """Multi-line text of ``problems`` grouped by kind: ``kind: count`` then the first ``per_kind`` messages of
    the kind (and ``limit`` messages at most in all), then ``... and N more`` where some were left out."""
    lines, shown = [], 0
    for kind, group in group_problems(problems).items():
        lines.append(f"  {kind}: {len(group)}")
        room = len(group) if limit is None else max(limit - shown, 0)
        listed = group[: min(per_kind, room)]
        lines += [f"    {p.message}" for p in listed]
        shown += len(listed)
        if len(group) > len(listed):
            lines.append(f"    ... and {len(group) - len(listed)} more")
    return "\n".join(lines)


def problems_message(source: object, problems: Sequence[Problem], limit: int = MAX_LISTED) -> str:
    """The error that stops training: how many problems of which kinds in ``source``, up to ``limit`` of them
    named, and the command that lists them all."""
    kinds = group_problems(problems)
    head = (f"{source}: {len(problems)} problem{'s' if len(problems) != 1 else ''} in the dataset "
            f"({', '.join(f'{k}: {len(v)}' for k, v in kinds.items())}); it cannot be used until they are fixed:")
    return (f"{head}\n{format_problems(problems, per_kind=limit, limit=limit)}\n"
            "(python -m utils.datasets check DATA.data lists the problems of the train and valid sets, all kinds)")


def _first_few(items: Sequence[str], n: int = 5) -> str:
    """``a, b, c`` or ``a, b, c and 7 more``."""
    text = ", ".join(str(x) for x in items[:n])
    return text + (f" and {len(items) - n} more" if len(items) > n else "")


# ----------------------------------------------------------------------------------------------- file lists
def _resolve_list_entry(entry: str, list_file: Path, cwd: Path) -> tuple[str | None, list[Path]]:
    """``(path, places tried)`` of one relative or absolute image-list entry; path None when found nowhere.

    Absolute: as is. Relative: the working directory first, then the list's folder (the reference read entries
    relative to the working directory; lists written beside their images need the second). ``./``-prefixed
    entries try the list's folder first (YOLOv5's convention, and what ``utils.convert`` writes)."""
    p = Path(entry)
    if p.is_absolute():
        places = [p]
    elif entry.startswith(("./", ".\\")):
        places = [list_file.parent / p, cwd / p]
    else:
        places = [cwd / p, list_file.parent / p]
    places = list(dict.fromkeys(Path(os.path.abspath(c)) for c in places))  # one place when cwd is the list's folder
    found = next((c for c in places if c.is_file()), None)
    return (None if found is None else str(found)), places


def collect_image_files(
    path: str | Path | Sequence[str | Path], cwd: str | Path | None = None
) -> tuple[list[str], list[Problem]]:
    """Image paths of a dataset source, sorted and de-duplicated, and the list entries that were not found.

    ``path`` is a folder (its images, not recursive), a ``.txt`` file listing image paths one per line (see
    ``_resolve_list_entry`` for relative entries; ``cwd`` is the working directory, default the process's), a
    single image, a glob pattern, or a list of these. Image extensions are ``IMG_FORMATS`` (any case); list
    entries with other extensions are skipped.

    Returns:
        ``(files, problems)``: problems of kind ``image not found`` name the list, the line and every place looked
        at. A source that does not exist at all, an unreadable list, or no images at all are errors instead.

    Raises:
        FileNotFoundError: a source that does not exist (naming it).
        ValueError: an unreadable list, or no images found (naming the source).
    """
    sources = list(path) if isinstance(path, (list, tuple)) else [path]
    cwd = Path.cwd() if cwd is None else Path(cwd)
    files: list[str] = []
    problems: list[Problem] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            files += [str(q) for q in p.iterdir() if q.suffix.lower() in IMG_FORMATS]
        elif p.is_file() and p.suffix.lower() == ".txt":
            try:
                text = p.read_text()
            except (OSError, UnicodeDecodeError) as e:
                raise ValueError(f"{p}: cannot read image list ({e}); fix: make it a readable UTF-8 text file") from e
            for line_no, line in enumerate(text.splitlines(), 1):
                entry = line.strip()
                if not entry or Path(entry).suffix.lower() not in IMG_FORMATS:
                    continue
                found, places = _resolve_list_entry(entry, p, cwd)
                if found is not None:
                    files.append(found)
                    continue
                tried = " and ".join(str(c) for c in places)
                problems.append(Problem("image not found", f"{p}:{line_no}", (
                    f"{p}:{line_no}: image {entry} not found (looked at {tried}); fix: correct the entry (relative "
                    "entries resolve against the working directory, then the list's folder) or remove the line")))
        elif p.is_file():
            files.append(str(p))
        elif any(c in str(src) for c in "*?["):  # a glob pattern
            files += [f for f in glob.glob(str(src), recursive=True) if os.path.isfile(f)]
        else:
            raise FileNotFoundError(f"{src}: not an image folder, a .txt list of images, an image or a glob pattern")
    files = sorted({os.path.normpath(f) for f in files if Path(f).suffix.lower() in IMG_FORMATS})
    if not files and not problems:
        raise ValueError(f"{path}: no images found (extensions {', '.join(IMG_FORMATS)})")
    return files, problems


def list_image_files(path: str | Path | Sequence[str | Path], cwd: str | Path | None = None) -> list[str]:
    """``collect_image_files``'s paths; list entries found nowhere are an error.

    Raises:
        FileNotFoundError: a missing source, or list entries that were not found (the first few named with
            ``list:line`` and the places looked at, then a count).
        ValueError: as ``collect_image_files``.
    """
    files, problems = collect_image_files(path, cwd)
    if problems:
        raise FileNotFoundError(f"{len(problems)} image list entr{'y' if len(problems) == 1 else 'ies'} not found:\n"
                                + format_problems(problems, per_kind=MAX_LISTED))
    return files


def img2label_paths(img_files: Sequence[str]) -> list[str]:
    """Label file of each image: the last ``images`` folder of the path replaced by ``labels``, suffix ``.txt``."""
    out = []
    for f in img_files:
        parts = list(Path(f).parts)
        for k in range(len(parts) - 2, -1, -1):
            if parts[k] == "images":
                parts[k] = "labels"
                break
        out.append(str(Path(*parts).with_suffix(".txt")))
    return out


# ------------------------------------------------------------------------------------------ label validation
class LabelRowError(ValueError):
    """An invalid label row; ``kind`` names the rule it breaks (the key under which reports group it)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def read_label_rows(label_file: str | Path, nc: int | None = None) -> tuple[np.ndarray | None, int, list[Problem]]:
    """Read one YOLO label file, collecting every invalid row instead of stopping at the first.

    Returns:
        ``(labels, n_duplicates, problems)``: labels (n, 5) float32 ``class, x, y, w, h`` normalised from the valid
        rows, duplicate rows removed (first occurrence kept, a warning names the file), or None when the file does
        not exist; one ``Problem`` per invalid row (``file:line``, the value, the rule and the fix) or for a file
        that cannot be read as text.
    """
    try:
        text = Path(label_file).read_text()
    except FileNotFoundError:
        return None, 0, []
    except (OSError, UnicodeDecodeError) as e:
        return np.zeros((0, 5), dtype=np.float32), 0, [Problem("unreadable label file", str(label_file), (
            f"{label_file}: cannot read label file ({e}); fix: make it a readable UTF-8 text file"))]
    rows, problems = [], []
    for line_no, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        where = f"{label_file}:{line_no}"
        try:
            rows.append(_parse_label_line(fields, where, nc))
        except LabelRowError as e:
            problems.append(Problem(e.kind, where, str(e)))
    if not rows:
        return np.zeros((0, 5), dtype=np.float32), 0, problems
    labels = np.array(rows, dtype=np.float32)
    _, first = np.unique(labels, axis=0, return_index=True)
    n_dup = len(labels) - len(first)
    if n_dup:
        LOGGER.warning("%s: dropped %d duplicate label row(s)", label_file, n_dup)
        labels = labels[np.sort(first)]
    return labels, n_dup, problems


def read_label_file(label_file: str | Path, nc: int | None = None) -> tuple[np.ndarray | None, int]:
    """Read and validate one YOLO label file (``read_label_rows``), raising on the first invalid row.

    Returns:
        ``(labels, n_duplicates)``: labels (n, 5) float32 ``class, x, y, w, h`` normalised, with duplicate rows
        removed (first occurrence kept, a warning names the file), or None when the file does not exist.

    Raises:
        ValueError: ``"file:line: ..."`` naming the value, the rule and the fix for a row with the wrong number of
        columns, a non-numeric value, a class that is not an integer in ``[0, nc)``, a coordinate outside
        ``[0, 1]`` or a non-positive width or height; or naming the file when it cannot be read as text.
    """
    labels, n_dup, problems = read_label_rows(label_file, nc)
    if problems:
        raise ValueError(problems[0].message)
    return labels, n_dup


_FIELDS = ("class", "x_center", "y_center", "width", "height")


def _parse_label_line(fields: list[str], where: str, nc: int | None) -> list[float]:
    """Validate one label row split into fields; ``where`` is ``"file:line"`` for the error messages.

    Raises:
        LabelRowError: the row breaks a rule (its ``kind`` names the rule).
    """
    if len(fields) != 5:
        raise LabelRowError(
            f"{where}: {len(fields)} columns {' '.join(fields)!r}; expected 5: 'class x_center y_center width height'"
            " (fix: one box per line, normalised xywh)", "wrong number of columns"
        )
    values = []
    for name, field in zip(_FIELDS, fields):
        try:
            values.append(float(field))
        except ValueError:
            raise LabelRowError(f"{where}: {name} {field!r} is not a number (fix: every column must be numeric)",
                                "value not a number") from None
    c = values[0]
    if not (math.isfinite(c) and c >= 0 and c == int(c)):
        raise LabelRowError(f"{where}: class {fields[0]!r} must be an integer >= 0 (fix: use the 0-based class "
                            "index)", "class not an integer >= 0")
    if nc is not None and c >= nc:
        raise LabelRowError(
            f"{where}: class {int(c)} outside [0, nc={nc}) (fix: use indices 0..{nc - 1} or raise classes= in the "
            ".data file)", "class outside [0, nc)"
        )
    for name, v, field in zip(_FIELDS[1:], values[1:], fields[1:]):
        if not 0 <= v <= 1:
            raise LabelRowError(
                f"{where}: {name} {field} outside [0, 1] (fix: coordinates are normalised: divide pixels by the "
                "image width/height)", "coordinate outside [0, 1]"
            )
    for name, v, field in zip(_FIELDS[3:], values[3:], fields[3:]):
        if not v > 0:
            raise LabelRowError(f"{where}: {name} {field} must be > 0 (fix: remove the empty box)",
                                "width or height not > 0")
    return values


def read_image_size(path: str) -> tuple[int, int, int] | None:
    """``(w, h, orientation)`` of an image as ``cv2.imread`` will return it (after EXIF rotation), or None.

    The size and the EXIF orientation come from the file header (Pillow, fast); the image is then decoded at
    1/8 scale with OpenCV to make sure the loader can read it. ``orientation`` is the EXIF tag (1 = upright), or
    0 when unknown. None means the file cannot be decoded.
    """
    try:
        with Image.open(path) as im:
            w, h = im.size
            try:
                orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1))
            except (OSError, ValueError, SyntaxError, TypeError):
                orientation = 0
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        img = cv2.imread(path, cv2.IMREAD_COLOR)  # a format Pillow does not read: let OpenCV decide
        return None if img is None else (img.shape[1], img.shape[0], 0)
    if orientation in (5, 6, 7, 8):  # rotated by 90 degrees: OpenCV returns the image transposed
        w, h = h, w
    if cv2.imread(path, cv2.IMREAD_REDUCED_GRAYSCALE_8) is None:
        return None
    return w, h, orientation


def scan_dataset(
    img_files: Sequence[str], label_files: Sequence[str], nc: int | None = None, workers: int | None = None
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, dict[str, int], list[int], list[Problem]]:
    """Validate every label file and image, collecting every problem.

    Returns:
        ``(labels, shapes, orientation, report, missing, problems)``: per image (n, 5) float32 normalised labels
        (the valid rows), shapes (n, 2) int64 (w, h), EXIF orientations (n,), the counts ``found, missing, empty,
        duplicate, corrupt`` (label files with boxes / without a file / with no rows / with duplicate rows
        dropped; undecodable images), the indices of the images without a label file, and every problem (invalid
        rows, unreadable label files, undecodable images).
    """
    report = {"found": 0, "missing": 0, "empty": 0, "duplicate": 0, "corrupt": 0}
    labels, missing, problems = [], [], []
    for i, lf in enumerate(label_files):
        lab, n_dup, bad = read_label_rows(lf, nc)
        problems += bad
        if lab is None:
            report["missing"] += 1
            missing.append(i)
            lab = np.zeros((0, 5), dtype=np.float32)
        elif len(lab) == 0 and not bad:
            report["empty"] += 1
        elif len(lab):
            report["found"] += 1
        report["duplicate"] += int(n_dup > 0)
        labels.append(lab)
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        sizes = list(pool.map(read_image_size, img_files))
    for f, s in zip(img_files, sizes):
        if s is None:
            problems.append(Problem("image cannot be read or decoded", f,
                                    f"{f}: image cannot be read or decoded (fix: replace it or remove it from the "
                                    "dataset)"))
    report["corrupt"] = sum(s is None for s in sizes)
    shapes = np.array([s[:2] if s else (0, 0) for s in sizes], dtype=np.int64).reshape(-1, 2)
    orientation = np.array([s[2] if s else 0 for s in sizes], dtype=np.int64)
    return labels, shapes, orientation, report, missing, problems


# --------------------------------------------------------------------------------------------- label cache
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
        _fsync_dir(folder)
    except OSError as e:
        LOGGER.debug("not writing label cache %s: %s", cache_path, e)
        tmp.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass
class DatasetScan:
    """What ``scan_source`` found: the images, their label files, validated labels, sizes and the problems."""

    img_files: list[str]
    label_files: list[str]
    labels: list[np.ndarray]  # per image (n, 5) float32 class, x, y, w, h normalised
    shapes: np.ndarray  # (n, 2) int64 w, h after EXIF rotation
    orientation: np.ndarray  # (n,) EXIF orientation tags
    report: dict[str, int]  # found, missing, empty, duplicate, corrupt
    missing_labels: list[str]  # label files that do not exist (their images have no boxes)
    problems: list[Problem]
    cache_path: Path | None
    from_cache: bool

    def summary(self) -> str:
        """``Scanning labels <folder> (126 found, 2 missing, ...)`` and, when label files are missing, a line
        naming the first few of them."""
        r = self.report
        labels_dir = Path(self.label_files[0]).parent if self.label_files else Path(".")
        text = (f"Scanning labels {labels_dir} ({r['found']} found, {r['missing']} missing, {r['empty']} empty, "
                f"{r['duplicate']} duplicate, {r['corrupt']} corrupt)" + (" (from cache)" if self.from_cache else ""))
        if self.missing_labels:
            text += f"\n  no label file (trained as images without boxes): {_first_few(self.missing_labels)}"
        return text


def scan_source(
    path: str | Path | Sequence[str | Path],
    nc: int | None = None,
    cache_check: str = "mtime",
    cwd: str | Path | None = None,
) -> DatasetScan:
    """List the images of ``path`` (``collect_image_files``), then validate them and their labels, from the
    label cache when it is valid (``cache_path_for``, ``cache_key``) and else by a full scan, which is cached when
    it found no problem. Nothing raises on bad rows, undecodable images or list entries not found: they are all
    in ``problems``.

    Raises:
        FileNotFoundError, ValueError: a source that does not exist, an unreadable list, no images at all, or an
            unknown ``cache_check``.
    """
    sources = list(path) if isinstance(path, (list, tuple)) else [path]
    img_files, problems = collect_image_files(sources, cwd)
    label_files = img2label_paths(img_files)
    if not img_files:  # every list entry missing: nothing to scan or cache
        return DatasetScan([], [], [], np.zeros((0, 2), np.int64), np.zeros(0, np.int64),
                           {"found": 0, "missing": 0, "empty": 0, "duplicate": 0, "corrupt": 0}, [], problems,
                           None, False)
    cache_path = cache_path_for(sources, label_files)
    key = cache_key(img_files, label_files, nc, sources, cache_check)
    cached = load_cache(cache_path, key, len(img_files))
    if cached is not None:
        labels, shapes, orientation, report, missing = cached
    else:
        labels, shapes, orientation, report, missing, found = scan_dataset(img_files, label_files, nc)
        problems += found
        if not problems:
            save_cache(cache_path, key, labels, shapes, orientation, report, missing)
    return DatasetScan(img_files, label_files, labels, shapes, orientation, report,
                       [label_files[i] for i in missing], problems, cache_path, cached is not None)


# ------------------------------------------------------------------------------------------------ images
def load_image(
    path: str,
    img_size: int,
    augment: bool = False,
    shape_hw0: tuple[int, int] | None = None,
    orientation: int = 0,
    reduced: bool = False,
) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """Read an image as 3-channel BGR uint8 and resize it so its long side is ``img_size``.

    Grayscale, 16-bit (scaled to 8 bits) and 4-channel files come back as 3-channel BGR; EXIF rotation is applied.
    The file is decoded at full resolution with ``cv2.imread`` and resized with ``cv2.resize``: INTER_AREA when
    shrinking without augmentation, INTER_LINEAR otherwise, as the reference trainer does.

    ``reduced`` (opt-in, ``--reduced-decode``): when the original size ``shape_hw0`` is known, the EXIF orientation
    is 1 (OpenCV's reduced modes ignore EXIF rotation) and the image is a JPEG shrunk by 2x or more, it is decoded
    directly at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling) and only the rest is resized. The output size is the
    same as decoding in full but the pixels differ (about 20% faster at 640 -> 320; the README's parity table gives
    its measured mAP cost).

    Returns:
        ``(img, (h0, w0), (h, w))``: the resized (h, w, 3) image and the original and resized sizes.

    Raises:
        ValueError: the file cannot be decoded (naming it).
    """
    img = None
    if reduced and shape_hw0 is not None and orientation == 1 and path.lower().endswith((".jpg", ".jpeg")):
        h0, w0 = shape_hw0
        r = img_size / max(h0, w0)
        f = next((f for f in (8, 4, 2) if r <= 1 / f), 1)
        if f > 1:
            img = cv2.imread(path, _REDUCED_FLAGS[f])
            if img is not None and (
                abs(img.shape[0] - math.ceil(h0 / f)) > 1 or abs(img.shape[1] - math.ceil(w0 / f)) > 1
            ):
                img = None  # the file is not what the header scan recorded: decode in full
    if img is None:
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"{path}: cannot decode image (fix: replace or remove the file)")
        h0, w0 = img.shape[:2]
    r = img_size / max(h0, w0)
    if r != 1:
        size = (int(w0 * r), int(h0 * r))
        if (img.shape[1], img.shape[0]) != size:
            interp = cv2.INTER_AREA if r < 1 and not augment else cv2.INTER_LINEAR
            img = cv2.resize(img, size, interpolation=interp)
    return img, (h0, w0), img.shape[:2]


class SharedImageCache:
    """Decoded, resized images (``load_image`` results) in one shared-memory block, filled on first use.

    A mosaic item reads 4 images, so without a cache an epoch decodes every image about 4 times, and again in
    every epoch. The block is allocated by the process that builds the dataset, before any DataLoader worker
    starts, and is shared by that process and all its workers (fork, spawn or forkserver: torch passes the
    memory, not a copy), also across epochs when workers are re-created: each image is decoded once per run by
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
        # UntypedStorage._new_shared (what torch's default collate uses) maps fresh shared memory without
        # touching it; tensor.share_memory_() would copy, filling the whole budget at once.
        self._data = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(max(self.nbytes, 1)))
        self._meta = torch.zeros((len(self.shapes_hw), 3), dtype=torch.int64).share_memory_()  # state, h0, w0
        # A spawn-context lock can be handed to fork, spawn and forkserver workers alike.
        self._lock = multiprocessing.get_context("spawn").Lock()
        self._views()

    def _views(self) -> None:
        self._buf, self._meta_np = self._data.numpy(), self._meta.numpy()
        self._seen = np.zeros(len(self.shapes_hw), dtype=bool)  # per process: slots known to be published

    def __getstate__(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if k not in ("_buf", "_meta_np", "_seen")}
        if multiprocessing.context.get_spawning_popen() is None:
            # A plain pickle or deepcopy (not a worker start) copies the tensors, so the copy gets its own lock.
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


def resized_shapes(shapes_wh: np.ndarray, img_size: int) -> np.ndarray:
    """(n, 2) ``(h, w)`` that ``load_image`` gives images of original sizes ``shapes_wh`` (n, 2) ``(w, h)``."""
    wh = np.asarray(shapes_wh, dtype=np.int64).reshape(-1, 2)
    r = img_size / np.maximum(wh.max(1, keepdims=True), 1)
    return (wh[:, ::-1] * r).astype(np.int64)  # float64 products truncated, as load_image's int(w0 * r)


def rect_batch_shapes(
    shapes_wh: np.ndarray, batch_size: int, img_size: int, pad: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Per-batch letterbox shapes for rectangular batches of images already sorted by aspect ratio h/w.

    Returns:
        ``(batch, batch_shapes)``: the batch index of each image (n,) and (nb, 2) int ``(h, w)`` multiples of 32:
        the batch's most extreme aspect ratio fitted in ``img_size``, plus ``pad`` strides (0.5 for testing).
    """
    n = len(shapes_wh)
    batch = np.arange(n) // batch_size
    nb = int(batch[-1]) + 1 if n else 0
    ar = shapes_wh[:, 1] / shapes_wh[:, 0]
    shapes = np.ones((nb, 2))
    for i in range(nb):
        ari = ar[batch == i]
        lo, hi = ari.min(), ari.max()
        if hi < 1:
            shapes[i] = hi, 1
        elif lo > 1:
            shapes[i] = 1, 1 / lo
    return batch, np.ceil(shapes * img_size / 32 + pad).astype(int) * 32


# ------------------------------------------------------------------------------------------------ dataset
class LoadImagesAndLabels(Dataset):
    """YOLO detection dataset: validated labels, letterboxed or mosaic-augmented images.

    Args:
        path: image folder, ``.txt`` list, image, glob, or a list of these (see ``collect_image_files``).
        img_size: training/testing size s; images are resized so their long side is s.
        batch_size: used for the rectangular batch shapes.
        augment: mosaic (unless ``rect``), random affine, HSV jitter and left-right flips, from ``hyp``.
        hyp: hyperparameters (keys ``AUGMENT_KEYS``); ``utils.hyp.DEFAULT_HYP`` when None.
        rect: sort by aspect ratio and letterbox each batch to its own shape (``batch_shapes``).
        image_weights: stored; when True ``__getitem__(i)`` loads image ``indices[i]`` (the trainer sets
            ``indices`` from class-frequency weights, as the reference did).
        cache_images: decode and resize every image once, now, and keep them in RAM (the size is printed first).
        ram_cache_mb: without ``cache_images``, keep up to this many MiB of decoded, resized images in shared
            memory as they are first loaded (``SharedImageCache``: one copy shared by the main process and all
            DataLoader workers, kept across epochs), so each is decoded once per run instead of ~4 times per epoch
            (mosaic). Capped at half the free space of ``/dev/shm``; 0 disables it. Items are identical either way.
        threads: threads that decode the images of one batch (``__getitems__``) in the main process, i.e. with
            ``num_workers=0`` (workers decode one by one: they already use the cores). Default: the CPUs this
            process may run on, at most 4; 1 decodes one by one. Decoding releases the GIL.
        reduced_decode: decode JPEGs shrunk by 2x or more at reduced DCT scale (faster, other pixels; see
            ``load_image``). Off by default: full-resolution decoding as the reference.
        single_cls: every class becomes 0.
        nc: number of classes; labels with a class outside ``[0, nc)`` are errors.
        pad: extra strides around rect batch shapes (0.5 for testing, 0 for training).
        seed: augmentation seed: item i in epoch e draws from ``np.random.default_rng([seed, e, i])``, so the
            data are a pure function of (seed, epoch, index) whatever the worker count (see ``set_epoch``).
            The epoch (and ``indices``) live in shared memory, so ``set_epoch`` in the main process reaches
            DataLoader workers that already run (``persistent_workers=True``).
        verbose: print the scan summary (and the first few missing label files).
        cache_check: ``'mtime'`` or ``'content'``: how the label cache notices edited label files (``cache_key``;
            the CLIs' ``--cache-check``). ``'content'`` costs about 17 us per label file and start (coco128: 3 ms
            instead of 1 ms; ``CACHE_CHECK_HELP``).

    Raises:
        DatasetError (a ValueError): every problem of the set was collected (invalid label rows, unreadable label
            files, undecodable images, list entries not found); the message names up to ``MAX_LISTED`` of them,
            grouped by kind with counts, and points to ``python -m utils.datasets check``.
        FileNotFoundError: a source that does not exist.

    Items are ``(img, labels, path, shapes)``: img (3, h, w) uint8 RGB tensor, labels (n, 6) float32
    ``0, class, x, y, w, h`` normalised to the output image, the image path, and shapes None for mosaic or
    ``((h0, w0), ((h / h0, w / w0), (dw, dh)))`` (original size, resize ratios, letterbox half paddings).
    """

    def __init__(
        self,
        path: str | Path | Sequence[str | Path],
        img_size: int = 416,
        batch_size: int = 16,
        augment: bool = False,
        hyp: dict | None = None,
        rect: bool = False,
        image_weights: bool = False,
        cache_images: bool = False,
        single_cls: bool = False,
        nc: int | None = None,
        pad: float = 0.0,
        seed: int = 0,
        verbose: bool = True,
        ram_cache_mb: float = 1024,
        threads: int | None = None,
        reduced_decode: bool = False,
        cache_check: str = "mtime",
    ) -> None:
        if int(img_size) <= 0 or int(batch_size) <= 0:
            raise ValueError(f"img_size={img_size} and batch_size={batch_size} must be positive integers")
        if int(seed) < 0:
            raise ValueError(f"seed={seed} must be >= 0")
        if not ram_cache_mb >= 0:
            raise ValueError(f"ram_cache_mb={ram_cache_mb} must be >= 0 (0 disables the cache)")
        if threads is not None and int(threads) < 1:
            raise ValueError(f"threads={threads} must be >= 1 (or None for the available CPUs)")
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.threads = min(4, cpus) if threads is None else int(threads)
        self.hyp = dict(DEFAULT_HYP if hyp is None else hyp)
        missing_keys = [k for k in AUGMENT_KEYS if k not in self.hyp]
        if augment and missing_keys:
            raise ValueError(f"hyp is missing augmentation keys {missing_keys} (fix: start from utils.hyp.DEFAULT_HYP)")
        self.img_size = int(img_size)
        self.augment = augment
        self.rect = rect
        self.mosaic = augment and not rect
        self.image_weights = image_weights
        self.seed = int(seed)
        self.reduced_decode = bool(reduced_decode)
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()  # shared: see set_epoch

        scan = scan_source(path, nc, cache_check)
        if verbose and scan.img_files:
            print(scan.summary())
        if scan.problems:
            raise DatasetError(problems_message(path, scan.problems, limit=MAX_LISTED), scan.problems)
        self.img_files, self.label_files = scan.img_files, scan.label_files
        self.report, self.missing_labels, self.cache_path = scan.report, scan.missing_labels, scan.cache_path
        labels, shapes, orientation = scan.labels, scan.shapes, scan.orientation
        if single_cls:
            labels = [np.concatenate((np.zeros_like(x[:, :1]), x[:, 1:]), 1) for x in labels]
        self.labels = labels
        self.shapes = shapes
        self.orientation = orientation
        self.n = len(self.img_files)
        self._indices = torch.arange(self.n, dtype=torch.int64).share_memory_()

        self.batch = np.arange(self.n) // batch_size
        self.batch_shapes = None
        if rect:
            # numpy's default sort, as the reference: ties between equal aspect ratios then fall as they did there
            # (on the same numpy and CPU), which decides some images' letterbox shapes (README parity table)
            irect = (shapes[:, 1] / shapes[:, 0]).argsort()
            self.img_files = [self.img_files[i] for i in irect]
            self.label_files = [self.label_files[i] for i in irect]
            self.labels = [self.labels[i] for i in irect]
            self.shapes, self.orientation = shapes[irect], orientation[irect]
            self.batch, self.batch_shapes = rect_batch_shapes(self.shapes, batch_size, self.img_size, pad)

        self.imgs: list | None = None
        self.ram_cache: SharedImageCache | None = None
        if cache_images:
            self._cache_images(verbose)
        elif ram_cache_mb > 0:
            self._make_ram_cache(ram_cache_mb)

    def _cache_images(self, verbose: bool) -> None:
        r = self.img_size / self.shapes.max(1)
        nbytes = sum(int(w * ri) * int(h * ri) * 3 for (w, h), ri in zip(self.shapes, r))
        where = self.img_files[0] if self.n == 1 else f"{Path(self.img_files[0]).parent} ({self.n} images)"
        check_preload_fits(nbytes, self.n, where, mem_available())
        if verbose:
            print(f"Caching images ({nbytes / 1e9:.2f} GB)")
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            self.imgs = list(pool.map(self._read, range(self.n)))
        for img, *_ in self.imgs:
            img.flags.writeable = False  # items work in place on their own copies: a slip raises, never corrupts

    def _make_ram_cache(self, ram_cache_mb: float) -> None:
        budget = int(ram_cache_mb * 2**20)
        if os.path.isdir("/dev/shm"):  # shared memory lives there on Linux; a full /dev/shm kills with SIGBUS
            budget = min(budget, shutil.disk_usage("/dev/shm").free // 2)
        shapes_hw = resized_shapes(self.shapes, self.img_size)
        if budget < shapes_hw[0].prod() * 3:
            LOGGER.debug("no RAM image cache: budget %d bytes", budget)
            return
        self.ram_cache = SharedImageCache(shapes_hw, budget)
        LOGGER.debug("RAM image cache: %d of %d images, %.1f MiB", (self.ram_cache.offsets >= 0).sum(), self.n,
                     self.ram_cache.nbytes / 2**20)

    def _read(self, index: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        w0, h0 = self.shapes[index]
        return load_image(self.img_files[index], self.img_size, self.augment, (int(h0), int(w0)),
                          int(self.orientation[index]), reduced=self.reduced_decode)

    def _cached(self, index: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]] | None:
        """``load_image``'s result for image ``index`` from ``imgs`` or the RAM cache (read-only), else None."""
        if self.imgs is not None:
            return self.imgs[index]
        return None if self.ram_cache is None else self.ram_cache.get(index)

    def _load(self, index: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """``load_image``'s result for image ``index``: cached, or decoded now (and then cached when it fits)."""
        hit = self._cached(index)
        if hit is not None:
            return hit
        out = self._read(index)
        if self.ram_cache is not None:
            self.ram_cache.put(index, out[0], out[1])
        return out

    @property
    def epoch(self) -> int:
        """The epoch whose augmentation draws items use (see ``set_epoch``)."""
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (call every epoch, before iterating).

        The value is in shared memory: DataLoader workers see it, persistent ones included, as long as it is set
        before the epoch's iterator is created (or, with persistent workers, before iterating it).
        """
        self._epoch.fill_(int(epoch))

    @property
    def indices(self) -> np.ndarray:
        """(n,) image index of each item (``image_weights``); shared with workers like the epoch."""
        return self._indices.numpy()

    @indices.setter
    def indices(self, value: Sequence[int] | np.ndarray) -> None:
        value = np.asarray(value, dtype=np.int64)
        if value.shape != (self.n,) or (self.n and not (value.min() >= 0 and value.max() < self.n)):
            raise ValueError(f"indices must be {self.n} image indices in [0, {self.n}), got shape {value.shape}")
        self._indices.copy_(torch.from_numpy(value))

    def batch_indices(self) -> list[list[int]]:
        """Item indices grouped by ``batch`` (the rectangular batches, in order, when ``rect``)."""
        nb = int(self.batch[-1]) + 1
        return [np.flatnonzero(self.batch == i).tolist() for i in range(nb)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, str, tuple | None]:
        return self._build([i], threads=1)[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor, str, tuple | None]]:
        """The items ``[self[i] for i in indices]`` (a DataLoader fetches a batch through this).

        Outside DataLoader workers (``num_workers=0``) the images are decoded on ``threads`` threads; the threads
        live for one call, so none is left running when a DataLoader later forks its workers. Workers decode on
        one thread: they already use the cores."""
        threads = 1 if torch.utils.data.get_worker_info() is not None else min(self.threads, len(indices))
        return self._build(indices, threads)

    def _build(self, indices: Sequence[int], threads: int) -> list[tuple]:
        """Items in three stages: (1) the images the items need, each read once: from a cache, else decoded on
        ``threads`` threads (decoding releases the GIL); (2) item by item, the random draws, mosaic or letterbox,
        affine and labels (small numpy arrays: GIL-bound, threads would contend); (3) item by item, HSV jitter,
        flip and the (3, h, w) RGB layout, in place on the item's own image. Running the HSV stage on threads too
        was measured slower on 2 cores: the second core reads images the first just wrote, and the two contend.
        Each item's draws come from its own generator in the same order as a one-by-one build, so items do not
        depend on ``threads`` or on the batch they are built in."""
        epoch = self.epoch
        plans = []
        for i in indices:
            index = int(self._indices[i]) if self.image_weights else i
            rng = np.random.default_rng([self.seed, epoch, i]) if self.augment else None
            picks = [index, *rng.integers(0, self.n, 3).tolist()] if self.mosaic else [index]
            plans.append((index, rng, picks))
        loaded = {k: self._cached(k) for k in dict.fromkeys(k for *_, picks in plans for k in picks)}
        misses = [k for k, v in loaded.items() if v is None]
        if threads > 1 and len(misses) > 1:
            with ThreadPoolExecutor(min(threads, len(misses))) as pool:
                loaded.update(zip(misses, pool.map(self._load, misses)))
        else:
            loaded.update((k, self._load(k)) for k in misses)
        staged = [self._compose(index, rng, picks, [loaded[k] for k in picks]) for index, rng, picks in plans]
        return [self._finish(x) for x in staged]

    def _compose(self, index: int, rng: np.random.Generator | None, picks: list[int], images: list[tuple]) -> tuple:
        """Stage 2 of ``_build`` for one item: ``(img, labels_out, hsv gains or None, flip, path, shapes)``, where
        img is a new (h, w, 3) BGR array of this item's own (mosaic, letterbox and affine all return one)."""
        hyp = self.hyp
        if self.mosaic:
            img, labels = mosaic_affine(
                [im for im, *_ in images],
                [self.labels[k] for k in picks],
                self.img_size,
                degrees=hyp["degrees"],
                translate=hyp["translate"],
                scale=hyp["scale"],
                shear=hyp["shear"],
                rng=rng,
            )
            shapes = None
        else:
            img, (h0, w0), (h, w) = images[0]
            shape = tuple(self.batch_shapes[self.batch[index]]) if self.rect else self.img_size
            img, ratio, pad = letterbox(img, shape, auto=False, scaleup=self.augment)
            shapes = (h0, w0), ((h / h0, w / w0), pad)
            x = self.labels[index]
            labels = np.empty_like(x)
            labels[:, 0] = x[:, 0]
            labels[:, 1] = ratio[0] * w * (x[:, 1] - x[:, 3] / 2) + pad[0]
            labels[:, 2] = ratio[1] * h * (x[:, 2] - x[:, 4] / 2) + pad[1]
            labels[:, 3] = ratio[0] * w * (x[:, 1] + x[:, 3] / 2) + pad[0]
            labels[:, 4] = ratio[1] * h * (x[:, 2] + x[:, 4] / 2) + pad[1]
            if self.augment:
                img, labels = random_affine(
                    img,
                    labels,
                    degrees=hyp["degrees"],
                    translate=hyp["translate"],
                    scale=hyp["scale"],
                    shear=hyp["shear"],
                    rng=rng,
                )
        gains = hsv_gains(hyp["hsv_h"], hyp["hsv_s"], hyp["hsv_v"], rng) if self.augment else None

        height, width = img.shape[:2]
        labels_out = np.zeros((len(labels), 6), dtype=np.float32)
        labels_out[:, 1:] = labels
        labels_out[:, 2:] = xyxy2xywh(labels[:, 1:5]) / np.array([width, height, width, height], dtype=np.float32)
        flip = self.augment and rng.random() < 0.5
        if flip:  # left-right flip (utils.augmentations.fliplr), done on the pixels in stage 3
            labels_out[:, 2] = 1 - labels_out[:, 2]
        return img, labels_out, gains, flip, self.img_files[index], shapes

    @staticmethod
    def _finish(staged: tuple) -> tuple[torch.Tensor, torch.Tensor, str, tuple | None]:
        """Stage 3 of ``_build`` for one item: HSV jitter and flip in place on its own image, then the layout."""
        img, labels_out, gains, flip, path, shapes = staged
        if gains is not None:
            apply_hsv(img, gains, dst=img)
        chw = bgr_to_chw_rgb(img, flip, inplace=gains is not None)
        return torch.from_numpy(chw), torch.from_numpy(labels_out), path, shapes

    @staticmethod
    def collate_fn(batch: list) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...], tuple]:
        """Stack items into ``(imgs (bs, 3, h, w) uint8, targets (n, 6) [image index, class, x, y, w, h], paths,
        shapes)``.

        In a DataLoader worker the images are stacked straight into shared memory (as torch's default collate
        does), saving the copy the worker would otherwise make to send the batch. The copy is numpy's, single
        threaded: ``torch.stack`` runs on torch's intra-op threads, and when those compete with other processes
        for the cores (workers, a busy machine) a 16-image stack was measured 60x slower (3 ms -> 170 ms).
        """
        imgs, labels, paths, shapes = zip(*batch)
        for i, lab in enumerate(labels):
            lab[:, 0] = i
        shape, nbytes = (len(imgs), *imgs[0].shape), sum(x.nbytes for x in imgs)
        if torch.utils.data.get_worker_info() is not None:
            out = imgs[0].new_empty(0).set_(torch.UntypedStorage._new_shared(nbytes)).view(shape)
        else:  # numpy backs big arrays with huge pages: ~200 fewer page faults per batch than torch.empty
            out = torch.from_numpy(np.empty(shape, dtype=np.uint8))
        np.stack([x.numpy() for x in imgs], out=out.numpy())
        return out, torch.cat(labels, 0), paths, shapes


def bgr_to_chw_rgb(img: np.ndarray, flip: bool = False, inplace: bool = False) -> np.ndarray:
    """(h, w, 3) BGR uint8 -> new contiguous (3, h, w) RGB array, mirrored left-right when ``flip``.

    ``cv2.split`` into the reversed planes of the output is ~4x faster than copying a transposed numpy view.
    ``inplace``: ``img`` may be overwritten (the flip is then done in place, with no extra image-sized buffer).
    """
    if flip:
        img = cv2.flip(img, 1, dst=img) if inplace else cv2.flip(img, 1)
    h, w = img.shape[:2]
    out = np.empty((3, h, w), dtype=np.uint8)
    planes = cv2.split(img, [out[2], out[1], out[0]])
    if not np.shares_memory(planes[0], out):  # OpenCV allocated new planes after all
        out = np.stack(planes[::-1])
    return out


def worker_init(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: no OpenCV thread pool inside workers (they are the parallelism).

    Augmentation randomness needs no seeding here: it comes from per-item generators (see ``LoadImagesAndLabels``).
    """
    cv2.setNumThreads(0)


def resize_batch(imgs: torch.Tensor, img_size: int, gs: int = 32) -> torch.Tensor:
    """Multi-scale: resize a float batch (bs, 3, h, w) so its long side is ``img_size`` (each side rounded up to a
    multiple of ``gs``), bilinearly, on the batch's device. Targets are normalised, so they need no change.
    Returns ``imgs`` itself when the size does not change."""
    sf = img_size / max(imgs.shape[2:])
    ns = [math.ceil(x * sf / gs) * gs for x in imgs.shape[2:]]
    if ns == list(imgs.shape[2:]):
        return imgs
    return F.interpolate(imgs, size=ns, mode="bilinear", align_corners=False)


# ------------------------------------------------------------------------------------------------ .data files
def _resolve(value: str, data_file: Path, key: str) -> str:
    """An existing path for ``value``: absolute as is; relative against the .data file's folder, then the CWD."""
    p = Path(value).expanduser()
    candidates = [p] if p.is_absolute() else [data_file.parent / p, Path.cwd() / p]
    for c in candidates:
        if c.exists():
            return os.path.abspath(c)
    tried = " and ".join(os.path.abspath(c) for c in candidates)
    raise FileNotFoundError(f"{data_file}: {key}={value} not found (looked at {tried})")


def resolve_data_cfg(path: str | Path) -> dict:
    """Read a ``.data`` file and resolve its paths.

    ``train`` and ``valid`` are a folder, a ``.txt`` list or an image, or several separated by commas; relative
    paths resolve against the ``.data`` file's folder first, then the working directory. ``names`` is a file with
    one class name per line (line i = class i).

    Returns:
        The raw keys plus ``classes`` (int), ``names`` (list of str), ``train``/``valid`` (str, or list of str
        when several), ``path`` (the .data file).

    Raises:
        FileNotFoundError: the .data file or a path it names (the message names every place tried).
        ValueError: a required key is missing, or the names file does not have ``classes`` names.
    """
    data_file = Path(path)
    cfg = parse_data_cfg(data_file)
    missing = [k for k in ("classes", "train", "valid", "names") if k not in cfg]
    if missing:
        raise ValueError(f"{data_file}: missing {', '.join(k + '=' for k in missing)} (fix: add the line(s))")
    out = dict(cfg)
    out["path"] = str(data_file)
    for key in ("train", "valid"):
        paths = [_resolve(v.strip(), data_file, key) for v in str(cfg[key]).split(",") if v.strip()]
        out[key] = paths[0] if len(paths) == 1 else paths
    names_file = _resolve(str(cfg["names"]), data_file, "names")
    names = [line.strip() for line in Path(names_file).read_text().splitlines() if line.strip()]
    if len(names) != cfg["classes"]:
        raise ValueError(
            f"{names_file}: {len(names)} names but {data_file} says classes={cfg['classes']} (fix: one name per "
            "line, line i = class i, or correct classes=)"
        )
    out["names"] = names
    return out


def class_table(labels: Sequence[np.ndarray], names: Sequence[str]) -> str:
    """Text table of images and boxes per class (and ``all``) for the ``check`` command."""
    lines = [f"{'Class':>20}{'Images':>10}{'Boxes':>10}"]
    n_boxes = sum(len(x) for x in labels)
    lines.append(f"{'all':>20}{sum(len(x) > 0 for x in labels):>10}{n_boxes:>10}")
    classes = [x[:, 0].astype(int) for x in labels]
    for c, name in enumerate(names):
        n_img = sum(bool((x == c).any()) for x in classes)
        n_box = sum(int((x == c).sum()) for x in classes)
        lines.append(f"{name:>20}{n_img:>10}{n_box:>10}")
    return "\n".join(lines)


def augmentation_drops(labels: Sequence[np.ndarray], shapes_wh: np.ndarray, img_size: int) -> int:
    """How many boxes the training augmentation's keep rule always drops at ``img_size``: after the resize that
    makes an image's long side ``img_size``, a box no more than ``KEEP_MIN_WH`` pixels wide or high, or with an
    aspect ratio of ``KEEP_MAX_AR`` or more (``utils.augmentations``), never reaches the loss.

    ``labels``: per image (n, 5) ``class, x, y, w, h`` normalised; ``shapes_wh``: (n_images, 2) ``w, h`` pixels.
    """
    n = 0
    for x, (w0, h0) in zip(labels, np.asarray(shapes_wh).reshape(-1, 2)):
        if not len(x) or min(w0, h0) <= 0:  # no boxes, or an image that could not be read (a problem already)
            continue
        r = img_size / max(int(w0), int(h0), 1)
        w, h = x[:, 3] * w0 * r, x[:, 4] * h0 * r
        ar = np.maximum(w / (h + 1e-16), h / (w + 1e-16))
        n += int(((w <= KEEP_MIN_WH) | (h <= KEEP_MIN_WH) | (ar >= KEEP_MAX_AR)).sum())
    return n


def check(
    data: str | Path,
    img_size: int = 416,
    plot: str | Path | None = None,
    cache_check: str = "mtime",
    per_kind: int = 5,
) -> int:
    """Validate the train and valid sets of a ``.data`` file and print everything: per set the scan summary (with
    the first few missing label files), every problem grouped by kind (count and the first ``per_kind`` of each),
    the image and box counts, the boxes too small for training at ``img_size`` and the per-class table; then the
    totals over both sets.

    ``plot``: also write the train set's label statistics picture there (``utils.plots.plot_labels``).

    Returns:
        The number of problems (0: the set is ready to train).

    Raises:
        FileNotFoundError, ValueError: the ``.data`` file, a path it names, or its names file is wrong.
    """
    ensure_builtin_dataset(data)
    cfg = resolve_data_cfg(data)
    scans: dict[str, DatasetScan] = {}
    for split in ("train", "valid"):
        print(f"{split}: {cfg[split]}")
        if split == "valid" and cfg["valid"] == cfg["train"]:
            print("valid: the train set (same source)")
            scans[split] = scans["train"]
            continue
        scan = scans[split] = scan_source(cfg[split], cfg["classes"], cache_check)
        if scan.img_files:
            print(scan.summary())
        if scan.problems:
            print(f"{split}: {len(scan.problems)} problem{'s' if len(scan.problems) != 1 else ''}:")
            print(format_problems(scan.problems, per_kind=per_kind))
        n_boxes = sum(len(x) for x in scan.labels)
        print(f"{split}: {len(scan.img_files)} images, {n_boxes} boxes")
        dropped = augmentation_drops(scan.labels, scan.shapes, img_size)
        if dropped:
            print(f"{split}: {dropped} box{'es are' if dropped != 1 else ' is'} at most {KEEP_MIN_WH} px wide or high "
                  f"(or thinner than 1:{KEEP_MAX_AR}) at --img-size {img_size}: training augmentation drops them")
        print(class_table(scan.labels, cfg["names"]))
        if plot and split == "train" and scan.labels:
            from utils.plots import plot_labels  # matplotlib only when a picture is asked for

            print(f"Plotted labels to {plot_labels(np.concatenate(scan.labels, 0), cfg['names'], plot)}")
    train, valid = scans["train"], scans["valid"]
    if valid is not train:
        both = {os.path.realpath(f) for f in train.img_files} & {os.path.realpath(f) for f in valid.img_files}
        boxes = sum(len(x) for x in train.labels) + sum(len(x) for x in valid.labels)
        print(f"train + valid: {len(train.img_files) + len(valid.img_files) - len(both)} images, {boxes} boxes "
              f"({len(train.img_files)} train, {len(valid.img_files)} valid, {len(both)} in both)")
    n_problems = len(train.problems) + (len(valid.problems) if valid is not train else 0)
    return n_problems


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m utils.datasets check DATA.data [--img-size N] [--plot labels.png] [--cache-check content]``;
    returns the exit code (1 when the set has any problem)."""
    parser = argparse.ArgumentParser(prog="python -m utils.datasets", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="validate the train and valid sets of a .data file, reporting every problem")
    p.add_argument("data", help=".data file, e.g. data/coco128.data")
    p.add_argument("--img-size", type=int, default=416,
                   help="training image size: boxes too small to survive augmentation at this size are counted")
    p.add_argument("--plot", metavar="PNG", help="also plot the train labels' statistics to this file")
    p.add_argument("--cache-check", choices=CACHE_CHECKS, default="mtime", help=CACHE_CHECK_HELP)
    p.add_argument("--per-kind", type=int, default=5, metavar="N", help="problems listed per kind")
    args = parser.parse_args(argv)
    try:
        n_problems = check(args.data, args.img_size, args.plot, args.cache_check, args.per_kind)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if n_problems:
        print(f"error: {n_problems} problem{'s' if n_problems != 1 else ''} in {args.data} (listed above, grouped "
              "by kind); training refuses to start until they are fixed", file=sys.stderr)
        return 1
    print(f"{args.data}: no problems")
    return 0


if __name__ == "__main__":
    sys.exit(main())

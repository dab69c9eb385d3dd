"""Label files: parse and validate YOLO label rows, and scan a dataset source (through the label cache).

A label file has one box per line, ``class x_center y_center width height``, normalised to 0..1.

Every label file and image is checked once, when the dataset is opened (in the main process, so no error can
surface from inside a DataLoader worker). All problems of the whole set are collected (``scan_source``) and
reported together, grouped by kind. The result is cached per image source (``utils.label_cache``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.data_files import collect_image_files, img2label_paths
from utils.images import read_image_size
from utils.label_cache import cache_key, cache_path_for, load_cache, save_cache
from utils.problems import Problem, first_few

LOGGER = logging.getLogger(__name__)


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
            text += f"\n  no label file (trained as images without boxes): {first_few(self.missing_labels)}"
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


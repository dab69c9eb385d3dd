"""The ``python -m utils.datasets check DATA.data`` command: every problem of a ``.data`` file's sets and their counts.

``check`` validates the train and valid sets of a ``.data`` file, prints every problem grouped by kind, the counts
and the per-class table; ``main`` exits 1 on any problem.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from utils.augmentations import KEEP_MAX_AR, KEEP_MIN_WH
from utils.data_files import resolve_data_cfg
from utils.label_cache import CACHE_CHECK_HELP, CACHE_CHECKS
from utils.labels import DatasetScan, scan_source
from utils.problems import format_problems
from utils.shapes import ensure_builtin_dataset

# The command's --help text, unchanged since the command lived in utils/datasets.py (its module docstring's start).
DESCRIPTION = ("Detection datasets: image lists, label validation and caching, ``LoadImagesAndLabels`` and ``.data`` "
               "files.")


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
    parser = argparse.ArgumentParser(prog="python -m utils.datasets", description=DESCRIPTION)
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

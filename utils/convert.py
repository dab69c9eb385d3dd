"""Pascal VOC XML and COCO instance json annotations -> a ready-to-train YOLO dataset, in one command.

    python -m utils.convert voc ANNOTATIONS_DIR IMAGES_DIR OUT_DIR [--split TRAIN_LIST VALID_LIST]
    python -m utils.convert coco INSTANCES_JSON IMAGES_DIR OUT_DIR [--valid-json JSON --valid-images DIR]

What OUT_DIR receives (the sources are only read, never changed or copied into the repository):

    images/<split>/<file>       a symbolic link to each source image (``--copy``: a copy)
    labels/<split>/<stem>.txt   ``class x_center y_center width height`` per box, normalised, 6 decimals
    train.txt, valid.txt        the image lists, entries ``./images/<split>/<file>`` (relative to the list)
    <name>.names, <name>.data   class names, and the .data file to train on (paths relative to itself)
    categories.json             COCO: class index -> COCO category id and name
    convert.json                how it was converted and every file written, with its signature

Rules (the same for both formats):

- The real image size (as the loader sees it, after EXIF rotation) wins over the annotation's ``<size>`` or json
  width/height; every file that disagrees gets a warning naming it.
- Boxes are clipped to the image; a box that is empty after clipping is dropped with a warning naming the file
  and the object. VOC corners are 1-based pixel indices by convention (the VOC devkit's), so by default the box
  covers pixels ``xmin..xmax`` inclusive: ``x1 = xmin - 1``, ``x2 = xmax`` in 0-based pixel edges, divided by the
  image size (``--corners as-written`` takes ``x1 = xmin, x2 = xmax``, what most YOLO converters do). COCO boxes
  are 0-based ``x, y, w, h`` floats and are used as they are.
- VOC ``difficult`` objects are dropped by default, as Darknet's ``voc_label.py`` did (``--keep-difficult`` keeps
  them); COCO ``iscrowd`` annotations are left out, as COCO evaluation treats them.
- COCO category ids map to contiguous class indices in increasing id order (the usual 80-of-91 mapping), written
  down in ``categories.json``; VOC classes are the ``--names`` file's order, else the names found, sorted.
- The split comes from two lists (VOC ``ImageSets/Main/train.txt``/``val.txt`` of ids, or CSV files with a
  ``filename`` column like the raccoon set's), or a seeded random fraction (``--val-fraction``, ``--seed``).

Re-runs: a file OUT_DIR already holds is replaced only when ``convert.json`` shows an earlier conversion wrote it
and it is unchanged since; a file the user wrote or edited is refused (the error lists them) unless ``--overwrite``.
Outputs of an earlier run that this run no longer writes are removed when unchanged, kept when edited.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from utils.annotations import (
    CORNERS,
    Record,
    Stats,
    assign_splits,
    coco_categories,
    load_coco_json,
    read_coco,
    read_voc,
    voc_classes,
)
from utils.boxes import xyxy2xywhn
from utils.convert_output import MANIFEST, Output, write_tree
from utils.data_files import read_names
from utils.images import read_image_size
from utils.problems import first_few

LOGGER = logging.getLogger(__name__)

DEFAULT_VAL_FRACTION = 0.2


@dataclass(frozen=True)
class ConvertOptions:
    """The keyword options ``convert_voc`` and ``convert_coco`` share.

    Attributes:
        split_lists: ``(train_list, valid_list)``; without it a random ``val_fraction`` split (``seed``).
        val_fraction: share of the images for the valid split when there are no split lists (default 0.2); 0
            validates on the train set.
        seed: seed of the random split.
        copy_images: copy the images instead of linking them.
        overwrite: replace files in ``out_dir`` that no earlier conversion wrote or that were edited since.
        name: stem of the ``.data`` and ``.names`` files (default: ``out_dir``'s name).
        verbose: print the summary.
        workers: threads that read image sizes.
    """

    split_lists: Sequence[str | Path] | None = None
    val_fraction: float | None = None
    seed: int = 0
    copy_images: bool = False
    overwrite: bool = False
    name: str | None = None
    verbose: bool = True
    workers: int | None = None

    def checked_split_lists(self) -> list[Path] | None:
        """``split_lists`` as two paths, or None.

        Raises:
            ValueError: not two files, or given together with ``val_fraction``.
        """
        if self.split_lists is None:
            return None
        if isinstance(self.split_lists, (str, Path)) or len(self.split_lists) != 2:
            raise ValueError(f"split_lists={self.split_lists!r}: expected two files, (train list, valid list)")
        if self.val_fraction is not None:
            raise ValueError("give split_lists or val_fraction, not both")
        return [Path(p) for p in self.split_lists]

    def fraction(self) -> float:
        """The valid share of a random split: ``val_fraction``, else ``DEFAULT_VAL_FRACTION``."""
        return DEFAULT_VAL_FRACTION if self.val_fraction is None else float(self.val_fraction)

    def manifest_options(self) -> dict:
        """The split options as ``convert.json`` records them."""
        return {"seed": self.seed, "split_lists": [os.path.abspath(p) for p in self.split_lists or []],
                "val_fraction": self.val_fraction}  # fmt: skip


def yolo_rows(xyxy: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel boxes -> normalised YOLO boxes, clipped to the image.

    Args:
        xyxy: (n, 4) ``x1, y1, x2, y2`` 0-based continuous pixel edges.
        width, height: the image size in pixels.

    Returns:
        ``(xywh, clipped, kept)``: (n, 4) ``x_center, y_center, w, h`` normalised to 0..1 after clipping to the
        image, rounded to the 6 decimals written; (n,) bool, the box reached outside the image; (n,) bool, the
        box still has a width and height after clipping and rounding (the others must be dropped).
    """
    xyxy = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    lim = np.array([width, height, width, height], dtype=np.float64)
    inside = np.clip(xyxy, 0, lim)
    clipped = (inside != xyxy).any(1)
    xywh = np.round(xyxy2xywhn(inside, width, height), 6)
    kept = (xywh[:, 2] > 0) & (xywh[:, 3] > 0)
    return xywh, clipped, kept


def fix_sizes(records: list[Record], errors: list[str], stats: Stats, workers: int | None = None) -> None:
    """Replace each record's claimed size by the real one (after EXIF rotation), warning where they differ;
    images that are missing or cannot be decoded go to ``errors``."""
    with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
        real = list(pool.map(lambda r: read_image_size(str(r.src)) if r.src.is_file() else "missing", records))
    for r, got in zip(records, real):
        if got == "missing":
            errors.append(f"{r.where}: image {r.src} not found (fix: give the folder that holds the images)")
        elif got is None:
            errors.append(f"{r.where}: image {r.src} cannot be decoded (fix: replace it or remove its annotation)")
        else:
            w, h, orientation = got
            if r.size != (w, h):
                stats.size_mismatch += 1
                rotated = f" after EXIF orientation {orientation}" if orientation not in (0, 1) else ""
                claimed = "no size" if r.size is None else f"{r.size[0]}x{r.size[1]}"
                LOGGER.warning("%s: the annotation says %s, the image %s is %dx%d%s; using the image's size",
                               r.where, claimed, r.src.name, w, h, rotated)
            r.size = (w, h)


def label_text(r: Record, stats: Stats) -> str:
    """The YOLO label file text of one record (boxes clipped; empty ones dropped with a warning)."""
    boxes = [b for b in r.boxes if b.cls >= 0]
    if not boxes:
        return ""
    xywh, clipped, kept = yolo_rows(np.array([b.xyxy for b in boxes]), *r.size)
    lines = []
    for b, row, c, k in zip(boxes, xywh, clipped, kept):
        if not k:
            stats.dropped_empty += 1
            LOGGER.warning("%s: %s %s is empty after clipping to the %dx%d image: dropped", r.where, b.what,
                           tuple(round(v, 2) for v in b.xyxy), *r.size)
            continue
        if c:
            stats.clipped.append(f"{r.where}: {b.what}")
        lines.append(f"{b.cls} {row[0]:.6f} {row[1]:.6f} {row[2]:.6f} {row[3]:.6f}\n")
    return "".join(lines)


def _check_out_dir(out_dir: Path, sources: Sequence[Path]) -> None:
    """The output's images/ and labels/ must not be (or hold) a source folder: links would replace sources."""
    targets = [Path(os.path.realpath(out_dir / sub)) for sub in ("images", "labels")]
    for src in sources:
        s = Path(os.path.realpath(src))
        for t in targets:
            if s == t or t in s.parents:
                raise ValueError(f"{src} lies inside the output folder's {t.name}/ ({t}); fix: choose an output "
                                 "folder outside the source folders")


def _convert(
    kind: str,
    records: list[Record],
    classes: list[str],
    out_dir: Path,
    opts: ConvertOptions,
    errors: list[str],
    stats: Stats,
    meta: dict,
    extra: dict[str, str],
    fixed: dict[str, str] | None = None,
) -> Path:
    """Split, size, label and write (shared by ``convert_voc`` and ``convert_coco``); returns the .data path.
    ``fixed``: where each split comes from when the sources fixed every record's split (COCO train/valid json)."""
    val_fraction = opts.fraction()
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction}: expected 0 <= fraction < 1 (0: validate on the train set)")
    how = fixed or assign_splits(records, opts.checked_split_lists(), val_fraction, opts.seed, errors)
    used = [r for r in records if r.split is not None]
    fix_sizes(used, errors, stats, opts.workers)
    _check_output_names(used, errors)
    if errors:
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise ValueError(f"{len(errors)} problem(s) in the annotations; nothing was written:\n  "
                         + "\n  ".join(errors[:20]) + more)
    if not used:
        raise ValueError("no images to convert (fix: check the split lists)")
    splits = [s for s in ("train", "valid") if any(r.split == s for r in used)]
    name = opts.name or out_dir.resolve().name
    plan, counts = _plan(kind, used, splits, classes, name, opts.copy_images, stats)
    plan.update({k: Output("text", v) for k, v in extra.items()})
    meta = {**meta, "splits": {s: {**counts[s], "from": how[s]} for s in splits}, "classes": classes}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_tree(out_dir, plan, meta, opts.overwrite)
    data = out_dir / f"{name}.data"
    if opts.verbose:
        print(summary(kind, data, classes, counts, how, stats, opts.copy_images, "valid" in splits))
    return data


def _check_output_names(used: list[Record], errors: list[str]) -> None:
    """Two images of one split that would get the same image or label file name go to ``errors``."""
    names_seen: dict[tuple[str, str], Record] = {}
    for r in used:
        for key in ((r.split, r.src.name), (r.split, r.src.stem + ".txt")):
            other = names_seen.setdefault(key, r)
            if other is not r:
                errors.append(f"{r.where} and {other.where}: both would be {key[1]} in {key[0]} (fix: rename one "
                              "image; the output keeps file names, not folders)")


def _plan(
    kind: str, used: list[Record], splits: list[str], classes: list[str], name: str, copy_images: bool, stats: Stats
) -> tuple[dict[str, Output], dict[str, dict[str, int]]]:
    """The files to write (relative path -> Output): images, labels, the lists, ``.names`` and ``.data``; and the
    image and box counts of each split."""
    plan: dict[str, Output] = {}
    counts = {s: {"images": 0, "boxes": 0} for s in splits}
    for r in sorted(used, key=lambda r: (r.split, r.src.name)):
        text = label_text(r, stats)
        plan[f"images/{r.split}/{r.src.name}"] = Output("copy" if copy_images else "link", src=r.src)
        plan[f"labels/{r.split}/{r.src.stem}.txt"] = Output("text", text)
        counts[r.split]["images"] += 1
        counts[r.split]["boxes"] += text.count("\n")
    for s in splits:
        plan[f"{s}.txt"] = Output("text", "".join(f"./images/{s}/{r.src.name}\n" for r in
                                                  sorted(used, key=lambda r: r.src.name) if r.split == s))
    plan[f"{name}.names"] = Output("text", "".join(f"{c}\n" for c in classes))
    valid_list = "valid.txt" if "valid" in splits else "train.txt"
    plan[f"{name}.data"] = Output("text", (
        f"# written by python -m utils.convert {kind} (see {MANIFEST}); paths are relative to this file\n"
        f"classes={len(classes)}\ntrain=train.txt\nvalid={valid_list}\nnames={name}.names\n"))
    return plan, counts


def summary(kind: str, data: Path, classes: list[str], counts: dict, how: dict, stats: Stats, copied: bool,
            has_valid: bool) -> str:  # fmt: skip
    """The lines the CLI prints after a conversion."""
    lines = [f"Converted {kind.upper()} annotations into {data.parent}:",
             f"  classes: {len(classes)} ({first_few(classes, 10)})"]
    for s, c in counts.items():
        lines.append(f"  {s}: {c['images']} images, {c['boxes']} boxes ({how[s]})")
    if not has_valid:
        lines.append("  valid: the train set (val fraction 0)")
    skipped = ", ".join(f"{n} {why}" for why, n in stats.skipped.items()) or "none"
    lines.append(f"  boxes: {sum(c['boxes'] for c in counts.values())} written, {len(stats.clipped)} clipped to "
                 f"their image, {stats.dropped_empty} dropped as empty after clipping; left out by rule: {skipped}")
    if stats.clipped:
        lines.append(f"  clipped: {first_few(stats.clipped)}")
    if stats.size_mismatch:
        lines.append(f"  {stats.size_mismatch} annotation size(s) differed from the image; the image's were used")
    lines.append(f"  images: {'copies' if copied else 'symbolic links to the sources'} in {data.parent / 'images'}")
    lines.append(f"Train with --data {data}; check it with: python -m utils.datasets check {data}")
    return "\n".join(lines)


def _read_names(names: Sequence[str] | str | Path | None) -> list[str] | None:
    if names is None or isinstance(names, (list, tuple)):
        return None if names is None else [str(n) for n in names]
    path = Path(names)
    try:
        return read_names(path)
    except OSError as e:
        raise FileNotFoundError(f"names file {path}: cannot be read ({e})") from e


def convert_voc(
    annotations_dir: str | Path,
    images_dir: str | Path,
    out_dir: str | Path,
    *,
    names: Sequence[str] | str | Path | None = None,
    keep_difficult: bool = False,
    corners: str = "one-based",
    **options: object,
) -> Path:
    """Convert a folder of Pascal VOC XML files into a YOLO dataset in ``out_dir`` (layout and rules: module doc).

    Args:
        annotations_dir: the ``*.xml`` files (e.g. ``VOC2007/Annotations``).
        images_dir: the images they describe (by ``<filename>``, else by the XML's stem).
        out_dir: the output folder (created).
        options ``split_lists``: ``(train_list, valid_list)``: VOC ``ImageSets/Main`` id lists or CSV files with a
            ``filename`` column (raccoon's ``train_labels.csv``, ``test_labels.csv``); annotated images in neither
            are left out (a warning names them). Without it: a random ``val_fraction`` (default 0.2, ``seed``).
        names: class order, a list or a ``.names`` file (objects of other classes are left out and counted);
            default: every class name found, sorted.
        keep_difficult: keep ``difficult=1`` objects (default: dropped, as Darknet's ``voc_label.py``).
        corners: ``one-based`` (default; the VOC convention, ``x1 = xmin - 1, x2 = xmax``) or ``as-written``.
        options: the keywords of ``ConvertOptions``: ``split_lists``, ``val_fraction``, ``seed``, ``copy_images``,
            ``overwrite``, ``name``, ``verbose``, ``workers``.

    Returns:
        The ``.data`` file written.

    Raises:
        ValueError: unusable annotations or lists (all problems listed; nothing is written).
        FileNotFoundError: a folder, list or names file that does not exist.
        FileExistsError: files in the way (see ``write_tree``).
    """
    opts = _options("convert_voc", options)
    annotations_dir, images_dir, out_dir = Path(annotations_dir), Path(images_dir), Path(out_dir)
    for what, folder in (("annotations", annotations_dir), ("images", images_dir)):
        if not folder.is_dir():
            raise FileNotFoundError(f"{what} folder {folder} not found")
    if corners not in CORNERS:
        raise ValueError(f"corners={corners!r}: expected one of {', '.join(CORNERS)}")
    opts.checked_split_lists()
    _check_out_dir(out_dir, [images_dir, annotations_dir])
    errors: list[str] = []
    stats = Stats()
    records, named, found = read_voc(annotations_dir, images_dir, corners, keep_difficult, errors, stats)
    classes = voc_classes(named, found, _read_names(names), stats)
    if not classes:
        raise ValueError(f"{annotations_dir}: no objects with a class name (fix: check the annotations)")
    meta = {"kind": "voc", "sources": {"annotations": os.path.abspath(annotations_dir),
                                       "images": os.path.abspath(images_dir)},
            "options": {"keep_difficult": keep_difficult, "corners": corners, **opts.manifest_options()}}  # fmt: skip
    return _convert("voc", records, classes, out_dir, opts, errors, stats, meta, {})


def convert_coco(
    instances_json: str | Path,
    images_dir: str | Path,
    out_dir: str | Path,
    *,
    valid_json: str | Path | None = None,
    valid_images_dir: str | Path | None = None,
    **options: object,
) -> Path:
    """Convert a COCO instances json (and its images) into a YOLO dataset in ``out_dir`` (layout and rules: module
    doc). Images are found at ``images_dir / file_name``; images without annotations get an empty label file.

    Args:
        instances_json: e.g. ``annotations/instances_train2017.json``.
        images_dir: the folder its ``file_name`` entries are relative to.
        out_dir: the output folder (created).
        valid_json, valid_images_dir: a second json (and its images folder, default ``images_dir``) that becomes
            the valid split, e.g. ``instances_val2017.json``; its categories must equal the first one's.
        options: as ``convert_voc`` (``ConvertOptions``). ``split_lists``, ``val_fraction``, ``seed`` split one
            json instead (list entries are file names, stems or image ids). Default: a random 0.2 with seed 0.

    Returns:
        The ``.data`` file written. ``categories.json`` beside it maps each class index to its COCO category id.

    Raises:
        ValueError, FileNotFoundError, FileExistsError: as ``convert_voc``.
    """
    opts = _options("convert_coco", options)
    instances_json, images_dir, out_dir = Path(instances_json), Path(images_dir), Path(out_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"images folder {images_dir} not found")
    if valid_json is not None and (opts.split_lists or opts.val_fraction is not None):
        raise ValueError("valid_json gives the valid split; do not combine it with split_lists or val_fraction")
    opts.checked_split_lists()
    sources = [(instances_json, load_coco_json(instances_json), images_dir, "train" if valid_json else None)]
    if valid_json is not None:
        valid_dir = Path(valid_images_dir) if valid_images_dir is not None else images_dir
        if not valid_dir.is_dir():
            raise FileNotFoundError(f"valid images folder {valid_dir} not found")
        sources.append((Path(valid_json), load_coco_json(Path(valid_json)), valid_dir, "valid"))
    _check_out_dir(out_dir, [s[2] for s in sources])
    categories = coco_categories([(p, d) for p, d, _, _ in sources])
    if not categories:
        raise ValueError(f"{instances_json}: no categories")
    class_of = {cid: i for i, (cid, _) in enumerate(categories)}
    errors: list[str] = []
    stats = Stats()
    records = []
    for path, data, folder, split in sources:
        records += read_coco(path, data, folder, class_of, split, errors, stats)
    mapping = {"source": [os.path.abspath(p) for p, *_ in sources],
               "classes": [{"class": i, "category_id": cid, "name": n} for i, (cid, n) in enumerate(categories)]}
    meta = {"kind": "coco", "sources": {"instances": [os.path.abspath(p) for p, *_ in sources],
                                        "images": [os.path.abspath(s[2]) for s in sources]},
            "options": opts.manifest_options()}  # fmt: skip
    extra = {"categories.json": json.dumps(mapping, indent=1) + "\n"}
    fixed = {"train": str(instances_json), "valid": str(valid_json)} if valid_json is not None else None
    return _convert("coco", records, [n for _, n in categories], out_dir, opts, errors, stats, meta, extra, fixed)


def _options(function: str, options: dict) -> ConvertOptions:
    """``ConvertOptions`` of a converter's keywords; an unknown keyword is the TypeError Python gives."""
    known = {f.name for f in fields(ConvertOptions)}
    unknown = [k for k in options if k not in known]
    if unknown:
        raise TypeError(f"{function}() got an unexpected keyword argument {unknown[0]!r}")
    return ConvertOptions(**options)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m utils.convert", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])  # fmt: skip
    sub = parser.add_subparsers(dest="format", required=True)
    voc = sub.add_parser("voc", help="Pascal VOC XML folder -> YOLO dataset")
    voc.add_argument("annotations", help="folder of VOC .xml files, e.g. VOC2007/Annotations")
    voc.add_argument("images", help="folder of the images they describe, e.g. VOC2007/JPEGImages")
    voc.add_argument("out", help="output folder (created; its images/ holds links to the sources)")
    voc.add_argument("--keep-difficult", action="store_true",
                     help="keep difficult=1 objects (default: drop them, as Darknet's voc_label.py did)")
    voc.add_argument("--corners", choices=CORNERS, default="one-based",
                     help="VOC corners: one-based (default, the VOC convention: the box covers pixels xmin..xmax, "
                     "x1 = xmin - 1, x2 = xmax) or as-written (x1 = xmin, x2 = xmax, what most YOLO converters do)")
    voc.add_argument("--names", metavar="FILE", help="class order, one name per line (default: the names found, "
                     "sorted); objects of other classes are left out")
    coco = sub.add_parser("coco", help="COCO instances json -> YOLO dataset")
    coco.add_argument("json", help="instances json, e.g. annotations/instances_train2017.json")
    coco.add_argument("images", help="folder its file_name entries are relative to, e.g. images/train2017")
    coco.add_argument("out", help="output folder (created; its images/ holds links to the sources)")
    coco.add_argument("--valid-json", metavar="JSON", help="a second json that becomes the valid split")
    coco.add_argument("--valid-images", metavar="DIR", help="images folder of --valid-json (default: IMAGES)")
    for p in (voc, coco):
        p.add_argument("--split", nargs=2, metavar=("TRAIN_LIST", "VALID_LIST"),
                       help="split from two lists: VOC ImageSets/Main id lists or CSV files with a filename column")
        p.add_argument("--val-fraction", type=float, default=None,
                       help=f"without --split: random share of the images for valid (default {DEFAULT_VAL_FRACTION}; "
                       "0 validates on the train set)")
        p.add_argument("--seed", type=int, default=0, help="seed of the random split (default 0)")
        p.add_argument("--copy", action="store_true", help="copy the images instead of linking to them")
        p.add_argument("--overwrite", action="store_true",
                       help="replace files in OUT that no earlier conversion wrote or that were edited since "
                       "(default: refuse and list them)")
        p.add_argument("--name", help="stem of the .data and .names files (default: OUT's folder name)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``python -m utils.convert`` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    common = {"split_lists": args.split, "val_fraction": args.val_fraction, "seed": args.seed,
              "copy_images": args.copy, "overwrite": args.overwrite, "name": args.name}  # fmt: skip
    try:
        if args.format == "voc":
            convert_voc(args.annotations, args.images, args.out, names=args.names, keep_difficult=args.keep_difficult,
                        corners=args.corners, **common)
        else:
            convert_coco(args.json, args.images, args.out, valid_json=args.valid_json,
                         valid_images_dir=args.valid_images, **common)
    except (ValueError, OSError) as e:  # OSError: missing inputs, files in the way, an unwritable output folder
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

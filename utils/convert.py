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
import csv
import hashlib
import json
import logging
import os
import shutil
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils.data_files import IMG_FORMATS
from utils.images import read_image_size

LOGGER = logging.getLogger(__name__)

CORNERS = ("one-based", "as-written")
DEFAULT_VAL_FRACTION = 0.2
MANIFEST = "convert.json"
MANIFEST_VERSION = 1
LISTED = 5  # files named in a summary line before "and N more"


@dataclass
class Box:
    """One annotated object: class index, 0-based continuous pixel corners, and a name for messages."""

    cls: int
    xyxy: tuple[float, float, float, float]
    what: str  # e.g. "object 2 'dog'" or "annotation 1774 (dog)"


@dataclass
class Record:
    """One image of the source annotations."""

    src: Path  # the source image file
    where: str  # the annotation that describes it, for messages
    ids: tuple[str, ...]  # names by which a split list may refer to it
    size: tuple[int, int] | None  # (w, h) the annotation claims
    boxes: list[Box] = field(default_factory=list)
    split: str | None = None  # fixed by the sources (COCO train/valid json), else chosen by split lists/fraction


@dataclass
class Stats:
    """Counts for the summary."""

    clipped: list[str] = field(default_factory=list)
    dropped_empty: int = 0
    size_mismatch: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> objects left out by rule


# ---------------------------------------------------------------------------------------------- box geometry
def voc_corners_to_xyxy(xmin: float, ymin: float, xmax: float, ymax: float, corners: str = "one-based") -> tuple:
    """VOC ``<bndbox>`` corners -> 0-based continuous pixel edges ``(x1, y1, x2, y2)``.

    ``one-based`` (VOC's convention): the corners are 1-based indices of the first and last pixel inside the
    box, so the box spans ``[xmin - 1, xmax]``; a box of the whole W-wide image is ``xmin=1, xmax=W``.
    ``as-written``: ``[xmin, xmax]`` (what most YOLO converters compute: nothing subtracted).
    """
    if corners == "one-based":
        return xmin - 1, ymin - 1, xmax, ymax
    if corners == "as-written":
        return xmin, ymin, xmax, ymax
    raise ValueError(f"corners={corners!r}: expected one of {', '.join(CORNERS)}")


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
    xywh = np.empty_like(inside)
    xywh[:, :2] = (inside[:, :2] + inside[:, 2:]) / 2
    xywh[:, 2:] = inside[:, 2:] - inside[:, :2]
    xywh = np.round(xywh / lim, 6)
    kept = (xywh[:, 2] > 0) & (xywh[:, 3] > 0)
    return xywh, clipped, kept


# ---------------------------------------------------------------------------------------------- VOC
def _text(node: ET.Element | None, tag: str) -> str | None:
    child = None if node is None else node.find(tag)
    return None if child is None or child.text is None else child.text.strip()


def _find_image(images_dir: Path, filename: str | None, stem: str) -> Path:
    """The image a VOC file describes: its ``<filename>`` in ``images_dir``, else the XML's stem with any image
    extension (tools often write a wrong or missing ``<filename>``). May not exist (the caller reports it)."""
    if filename:
        p = images_dir / Path(filename).name
        if p.is_file():
            return p
    for ext in IMG_FORMATS:
        for e in (ext, ext.upper()):
            p = images_dir / f"{stem}{e}"
            if p.is_file():
                return p
    return images_dir / (Path(filename).name if filename else f"{stem}.jpg")


def read_voc(
    annotations_dir: Path, images_dir: Path, corners: str, keep_difficult: bool, errors: list[str], stats: Stats
) -> tuple[list[Record], list[tuple[str, Box]], set[str]]:
    """Every ``*.xml`` of ``annotations_dir`` as Records whose boxes still carry class *names* (resolved by the
    caller). Returns ``(records, named, found)``: ``named`` pairs each kept box with its class name, ``found`` is
    every class name seen, difficult objects' too (so class indices do not depend on ``keep_difficult``). Problems
    that make the input unusable go to ``errors`` (the file, the object, the value and the fix)."""
    records, named, found = [], [], set()
    xml_files = sorted(annotations_dir.glob("*.xml"))
    if not xml_files:
        raise FileNotFoundError(f"{annotations_dir}: no .xml files (fix: give the folder of the VOC annotations, "
                                "e.g. VOC2007/Annotations)")
    for xml_file in xml_files:
        try:
            root = ET.parse(xml_file).getroot()
        except (ET.ParseError, OSError) as e:
            errors.append(f"{xml_file}: cannot be parsed as XML ({e}); fix: repair or remove it")
            continue
        size = None
        w, h = _text(root.find("size"), "width"), _text(root.find("size"), "height")
        try:
            size = (int(float(w)), int(float(h))) if w is not None and h is not None else None
        except ValueError:
            size = None
        src = _find_image(images_dir, _text(root, "filename"), xml_file.stem)
        rec = Record(src, str(xml_file), (xml_file.stem, src.name, src.stem), size)
        for k, obj in enumerate(root.iter("object"), 1):
            name = _text(obj, "name")
            label = f"object {k} {name!r}"
            if not name:
                errors.append(f"{xml_file}: object {k} has no <name> (fix: name its class or remove it)")
                continue
            found.add(name)
            if _text(obj, "difficult") == "1" and not keep_difficult:
                stats.skipped["difficult"] = stats.skipped.get("difficult", 0) + 1
                continue
            bnd = obj.find("bndbox")
            values = [_text(bnd, t) for t in ("xmin", "ymin", "xmax", "ymax")]
            try:
                xyxy = voc_corners_to_xyxy(*(float(v) for v in values), corners=corners)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                errors.append(f"{xml_file}: {label} has no numeric <bndbox> xmin/ymin/xmax/ymax (got {values}); "
                              "fix: give its corners in pixels or remove it")
                continue
            box = Box(-1, xyxy, label)
            rec.boxes.append(box)
            named.append((name, box))
        records.append(rec)
    return records, named, found


def voc_classes(
    named: Sequence[tuple[str, Box]], found: set[str], names: Sequence[str] | None, stats: Stats
) -> list[str]:
    """Class names (``names`` when given, else every name ``found``, sorted) and each box's class index set; boxes
    of classes not in ``names`` get index -1 (left out, counted per class)."""
    classes = list(names) if names is not None else sorted(found)
    index = {n: i for i, n in enumerate(classes)}
    for n, box in named:
        box.cls = index.get(n, -1)
        if box.cls < 0:
            key = f"class {n!r} not in the names"
            stats.skipped[key] = stats.skipped.get(key, 0) + 1
    return classes


# ---------------------------------------------------------------------------------------------- COCO
def _load_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found (fix: give the COCO instances json, e.g. "
                                "annotations/instances_train2017.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot be read as json ({e}); fix: give a COCO instances json") from e
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "categories")):
        raise ValueError(f"{path}: not a COCO instances json (needs 'images', 'annotations' and 'categories' "
                         "lists)")
    return data


def coco_categories(datasets: Sequence[tuple[Path, dict]]) -> list[tuple[int, str]]:
    """``(category id, name)`` in increasing id order: class index i is the i-th. Several json files must agree.

    Raises:
        ValueError: a json whose categories differ from the first one's, or a repeated id.
    """
    first = None
    for path, data in datasets:
        try:
            cats = sorted((int(c["id"]), str(c["name"])) for c in data["categories"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: a category without an integer 'id' and a 'name' ({e})") from e
        if len({i for i, _ in cats}) != len(cats):
            raise ValueError(f"{path}: repeated category ids; fix: one entry per category")
        if first is None:
            first = (path, cats)
        elif cats != first[1]:
            raise ValueError(f"{path}: its categories differ from {first[0]}'s; fix: convert json files that share "
                             "one category list")
    return first[1] if first else []


def read_coco(
    path: Path, data: dict, images_dir: Path, class_of: dict[int, int], split: str | None, errors: list[str],
    stats: Stats,
) -> list[Record]:  # fmt: skip
    """The images of one instances json as Records (boxes in pixels, iscrowd left out)."""
    records: dict[int, Record] = {}
    names = {cid: f"class {i}" for cid, i in class_of.items()}
    for c in data["categories"]:
        names[int(c["id"])] = str(c["name"])
    for im in data["images"]:
        try:
            iid, file_name = int(im["id"]), str(im["file_name"])
        except (KeyError, TypeError, ValueError):
            errors.append(f"{path}: image entry {im!r:.80} lacks an integer 'id' or a 'file_name'")
            continue
        try:
            size = (int(im["width"]), int(im["height"]))
        except (KeyError, TypeError, ValueError):
            size = None  # the image's own size is used anyway; the warning will say the json gave none
        src = images_dir / file_name
        ids = (file_name, Path(file_name).name, Path(file_name).stem, str(iid))
        records[iid] = Record(src, f"{path} image {iid} ({file_name})", ids, size, split=split)
    for ann in data.get("annotations") or []:
        aid = ann.get("id", "?")
        rec = records.get(ann.get("image_id"))
        if rec is None:
            errors.append(f"{path}: annotation {aid} refers to image_id {ann.get('image_id')!r}, which is not in "
                          "'images' (fix: repair the json)")
            continue
        cid = ann.get("category_id")
        if cid not in class_of:
            errors.append(f"{path}: annotation {aid} has category_id {cid!r}, which is not in 'categories'")
            continue
        if ann.get("iscrowd", 0):
            stats.skipped["iscrowd"] = stats.skipped.get("iscrowd", 0) + 1
            continue
        try:
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError):
            errors.append(f"{path}: annotation {aid} has no 'bbox' [x, y, w, h] (got {ann.get('bbox')!r})")
            continue
        rec.boxes.append(Box(class_of[cid], (x, y, x + w, y + h), f"annotation {aid} ({names[cid]})"))
    return list(records.values())


# ---------------------------------------------------------------------------------------------- splits
def read_split_list(path: Path) -> list[tuple[str, int]]:
    """Entries ``(name, line number)`` of a split list.

    A ``.csv`` file gives its ``filename`` (or ``file_name``, ``image``) column, else its first column; a header
    row is recognised by that column name or by a first cell that is not an image file name. Any other file gives
    the first word of each non-empty line (VOC ``ImageSets/Main/*.txt``: image ids, optionally followed by 1/-1).
    Repeated entries (a CSV has one row per box) appear once.
    """
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"split list {path} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"split list {path}: cannot be read ({e})") from e
    entries: list[tuple[str, int]] = []
    if Path(path).suffix.lower() == ".csv":
        rows = list(csv.reader(text.splitlines()))
        col, start = 0, 0
        if rows:
            header = [c.strip().lower() for c in rows[0]]
            named = [i for i, c in enumerate(header) if c in ("filename", "file_name", "image", "image_id")]
            if named:
                col, start = named[0], 1
            elif Path(header[0]).suffix.lower() not in IMG_FORMATS:
                start = 1
        entries = [(r[col].strip(), i + 1) for i, r in enumerate(rows)
                   if i >= start and len(r) > col and r[col].strip()]  # fmt: skip
    else:
        entries = [(line.split()[0], i) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    seen: set[str] = set()
    return [(e, n) for e, n in entries if not (e in seen or seen.add(e))]


def assign_splits(
    records: list[Record], split_lists: Sequence[Path] | None, val_fraction: float, seed: int, errors: list[str]
) -> dict[str, str]:
    """Set ``record.split`` to ``train`` or ``valid`` (records whose split the sources fixed keep it; records in
    neither list get None and are left out). Returns a description of where each split came from."""
    free = [r for r in records if r.split is None]
    if split_lists:
        by_id: dict[str, list[Record]] = {}
        for r in free:
            for i in dict.fromkeys(r.ids):
                by_id.setdefault(i, []).append(r)
        for split, list_file in zip(("train", "valid"), split_lists):
            for entry, line in read_split_list(Path(list_file)):
                hits = by_id.get(entry) or by_id.get(Path(entry).name) or []
                where = f"{list_file}:{line}"
                if not hits:
                    errors.append(f"{where}: {entry!r} matches no annotated image (fix: list file names or ids of "
                                  "the annotated images, or remove the line)")
                elif len(hits) > 1:
                    which = ", ".join(str(h.src) for h in hits)
                    errors.append(f"{where}: {entry!r} matches {len(hits)} images ({which}); fix: list the file "
                                  "name with its extension")
                elif hits[0].split not in (None, split):
                    errors.append(f"{where}: {entry!r} is in both split lists (fix: put each image in one list)")
                else:
                    hits[0].split = split
        unlisted = [r for r in free if r.split is None]
        if unlisted:
            LOGGER.warning("%d annotated image(s) are in neither split list and are left out: %s", len(unlisted),
                           _first_few([str(r.src.name) for r in unlisted]))
        return {"train": f"split list {split_lists[0]}", "valid": f"split list {split_lists[1]}"}
    order = sorted(free, key=lambda r: str(r.src))
    n_val = round(len(order) * val_fraction)
    if val_fraction > 0 and len(order) > 1:
        n_val = min(max(n_val, 1), len(order) - 1)
    perm = np.random.default_rng(seed).permutation(len(order))
    valid = set(perm[:n_val].tolist())
    for k, r in enumerate(order):
        r.split = "valid" if k in valid else "train"
    how = f"random {val_fraction:g} of the images, seed {seed}"
    return {"train": how, "valid": how}


# ---------------------------------------------------------------------------------------------- sizes and labels
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


# ---------------------------------------------------------------------------------------------- writing
@dataclass
class Output:
    """A file to write: ``text`` content, or a ``link`` to / ``copy`` of a source file."""

    kind: str
    text: str = ""
    src: Path | None = None

    def signature(self) -> str:
        if self.kind == "text":
            return "sha256:" + hashlib.sha256(self.text.encode()).hexdigest()
        if self.kind == "link":
            return f"link:{os.path.abspath(self.src)}"
        st = os.stat(self.src)
        return f"copy:{st.st_size}:{st.st_mtime_ns}"


def current_signature(path: Path, like: Iterable[str]) -> str | None:
    """The signature of what is at ``path`` now, in the form of the signatures in ``like``; None if nothing."""
    if path.is_symlink():
        return f"link:{os.readlink(path)}"
    if not path.is_file():
        return None
    like = list(like)
    if any(s.startswith("sha256:") for s in like) or not like:
        return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    st = path.stat()
    return f"copy:{st.st_size}:{st.st_mtime_ns}"


def read_manifest(out_dir: Path) -> dict[str, list[str]]:
    """``relative path -> signatures`` of the files earlier conversions wrote into ``out_dir`` ({} when none)."""
    path = out_dir / MANIFEST
    if not path.exists():
        return {}
    try:
        files = json.loads(path.read_text())["files"]
        return {str(k): [str(s) for s in v] for k, v in files.items()}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
        LOGGER.warning("%s is unreadable (%s): every file already in %s counts as yours", path, e, out_dir)
        return {}


def _atomic(path: Path, make) -> None:
    """Create ``path`` through a temporary sibling and a rename (never writing through an existing link)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    try:
        make(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()


def write_output(path: Path, out: Output) -> None:
    """Write one planned file."""
    if out.kind == "text":
        _atomic(path, lambda t: t.write_text(out.text))
    elif out.kind == "link":
        _atomic(path, lambda t: os.symlink(os.path.abspath(out.src), t))
    else:
        _atomic(path, lambda t: shutil.copy2(out.src, t))


def write_tree(out_dir: Path, plan: dict[str, Output], meta: dict, overwrite: bool) -> None:
    """Write ``plan`` (relative path -> Output) into ``out_dir`` under the re-run rules of the module docstring.

    Raises:
        FileExistsError: files in the way that no earlier conversion wrote, or that were edited since (all of
            them named, the first few listed), unless ``overwrite``; or a folder where a file must go.
    """
    recorded = read_manifest(out_dir)
    planned = {rel: out.signature() for rel, out in plan.items()}
    refused, folders, todo = [], [], []
    for rel, sig in planned.items():
        path = out_dir / rel
        if path.is_dir() and not path.is_symlink():
            folders.append(str(path))
            continue
        now = current_signature(path, recorded.get(rel, [sig]))
        if now == sig:
            continue  # already what this run would write: left alone, so its modification time stays
        if now is not None and now not in recorded.get(rel, []) and not overwrite:
            refused.append(str(path))
        todo.append(rel)
    if folders:
        raise FileExistsError(f"{out_dir}: {len(folders)} folder(s) stand where files must go: "
                              f"{_first_few(folders)} (fix: move them away or choose another output folder)")
    if refused:
        raise FileExistsError(
            f"{out_dir}: refusing to overwrite {len(refused)} file(s) that no earlier conversion wrote or that were "
            f"edited since: {_first_few(refused)} (fix: move them away, choose another output folder, or pass "
            "--overwrite / overwrite=True to replace them; nothing was written)"
        )
    stale = {rel: sigs for rel, sigs in recorded.items() if rel not in planned and rel != MANIFEST}
    # record the new files before writing them, so an interrupted run leaves nothing that looks like the user's
    merged = {rel: sorted(set(recorded.get(rel, [])) | {sig}) for rel, sig in planned.items()}
    _write_manifest(out_dir, {**meta, "files": {**stale, **merged}})
    for rel in todo:
        write_output(out_dir / rel, plan[rel])
    kept = []
    for rel, sigs in stale.items():
        path = out_dir / rel
        now = current_signature(path, sigs)
        if now is None:
            continue
        if now in sigs:
            path.unlink()
            _remove_empty_parents(path.parent, out_dir)
        else:
            kept.append(str(path))
    if kept:
        LOGGER.warning("%d file(s) an earlier conversion wrote were edited since and are kept, though this run no "
                       "longer uses them: %s", len(kept), _first_few(kept))
    if hasattr(os, "sync"):
        os.sync()  # the label files are on disk before the manifest says they are complete
    _write_manifest(out_dir, {**meta, "files": {rel: [sig] for rel, sig in sorted(planned.items())}})


def _write_manifest(out_dir: Path, manifest: dict) -> None:
    path = out_dir / MANIFEST
    text = json.dumps({"version": MANIFEST_VERSION, **manifest}, indent=1) + "\n"

    def make(tmp: Path) -> None:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    _atomic(path, make)


def _remove_empty_parents(folder: Path, stop: Path) -> None:
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def _first_few(items: Sequence[str], n: int = LISTED) -> str:
    text = ", ".join(items[:n])
    return text + (f" and {len(items) - n} more" if len(items) > n else "")


# ---------------------------------------------------------------------------------------------- the pipeline
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
    split_lists: Sequence[Path] | None,
    val_fraction: float,
    seed: int,
    copy_images: bool,
    overwrite: bool,
    name: str | None,
    errors: list[str],
    stats: Stats,
    meta: dict,
    extra: dict[str, str],
    verbose: bool,
    workers: int | None,
    fixed: dict[str, str] | None = None,
) -> Path:
    """Split, size, label and write (shared by ``convert_voc`` and ``convert_coco``); returns the .data path.
    ``fixed``: where each split comes from when the sources fixed every record's split (COCO train/valid json)."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction}: expected 0 <= fraction < 1 (0: validate on the train set)")
    how = fixed or assign_splits(records, split_lists, val_fraction, seed, errors)
    used = [r for r in records if r.split is not None]
    fix_sizes(used, errors, stats, workers)
    names_seen: dict[tuple[str, str], Record] = {}
    for r in used:
        for key in ((r.split, r.src.name), (r.split, r.src.stem + ".txt")):
            other = names_seen.setdefault(key, r)
            if other is not r:
                errors.append(f"{r.where} and {other.where}: both would be {key[1]} in {key[0]} (fix: rename one "
                              "image; the output keeps file names, not folders)")
    if errors:
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise ValueError(f"{len(errors)} problem(s) in the annotations; nothing was written:\n  "
                         + "\n  ".join(errors[:20]) + more)
    if not used:
        raise ValueError("no images to convert (fix: check the split lists)")
    splits = [s for s in ("train", "valid") if any(r.split == s for r in used)]
    name = name or out_dir.resolve().name
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
    plan.update({k: Output("text", v) for k, v in extra.items()})
    meta = {**meta, "splits": {s: {**counts[s], "from": how[s]} for s in splits}, "classes": classes}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_tree(out_dir, plan, meta, overwrite)
    data = out_dir / f"{name}.data"
    if verbose:
        print(summary(kind, data, classes, counts, how, stats, copy_images, "valid" in splits))
    return data


def summary(kind: str, data: Path, classes: list[str], counts: dict, how: dict, stats: Stats, copied: bool,
            has_valid: bool) -> str:  # fmt: skip
    """The lines the CLI prints after a conversion."""
    lines = [f"Converted {kind.upper()} annotations into {data.parent}:",
             f"  classes: {len(classes)} ({_first_few(classes, 10)})"]
    for s, c in counts.items():
        lines.append(f"  {s}: {c['images']} images, {c['boxes']} boxes ({how[s]})")
    if not has_valid:
        lines.append("  valid: the train set (val fraction 0)")
    skipped = ", ".join(f"{n} {why}" for why, n in stats.skipped.items()) or "none"
    lines.append(f"  boxes: {sum(c['boxes'] for c in counts.values())} written, {len(stats.clipped)} clipped to "
                 f"their image, {stats.dropped_empty} dropped as empty after clipping; left out by rule: {skipped}")
    if stats.clipped:
        lines.append(f"  clipped: {_first_few(stats.clipped)}")
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
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except OSError as e:
        raise FileNotFoundError(f"names file {path}: cannot be read ({e})") from e


def convert_voc(
    annotations_dir: str | Path,
    images_dir: str | Path,
    out_dir: str | Path,
    *,
    split_lists: Sequence[str | Path] | None = None,
    val_fraction: float | None = None,
    seed: int = 0,
    names: Sequence[str] | str | Path | None = None,
    keep_difficult: bool = False,
    corners: str = "one-based",
    copy_images: bool = False,
    overwrite: bool = False,
    name: str | None = None,
    verbose: bool = True,
    workers: int | None = None,
) -> Path:
    """Convert a folder of Pascal VOC XML files into a YOLO dataset in ``out_dir`` (layout and rules: module doc).

    Args:
        annotations_dir: the ``*.xml`` files (e.g. ``VOC2007/Annotations``).
        images_dir: the images they describe (by ``<filename>``, else by the XML's stem).
        out_dir: the output folder (created).
        split_lists: ``(train_list, valid_list)``: VOC ``ImageSets/Main`` id lists or CSV files with a
            ``filename`` column (raccoon's ``train_labels.csv``, ``test_labels.csv``); annotated images in neither
            are left out (a warning names them). Without it: a random ``val_fraction`` (default 0.2, ``seed``).
        val_fraction: share of the images for the valid split when there are no split lists; 0 validates on the
            train set.
        names: class order, a list or a ``.names`` file (objects of other classes are left out and counted);
            default: every class name found, sorted.
        keep_difficult: keep ``difficult=1`` objects (default: dropped, as Darknet's ``voc_label.py``).
        corners: ``one-based`` (default; the VOC convention, ``x1 = xmin - 1, x2 = xmax``) or ``as-written``.
        copy_images: copy the images instead of linking them.
        overwrite: replace files in ``out_dir`` that no earlier conversion wrote or that were edited since.
        name: stem of the ``.data`` and ``.names`` files (default: ``out_dir``'s name).
        verbose: print the summary.
        workers: threads that read image sizes.

    Returns:
        The ``.data`` file written.

    Raises:
        ValueError: unusable annotations or lists (all problems listed; nothing is written).
        FileNotFoundError: a folder, list or names file that does not exist.
        FileExistsError: files in the way (see ``write_tree``).
    """
    annotations_dir, images_dir, out_dir = Path(annotations_dir), Path(images_dir), Path(out_dir)
    for what, folder in (("annotations", annotations_dir), ("images", images_dir)):
        if not folder.is_dir():
            raise FileNotFoundError(f"{what} folder {folder} not found")
    if corners not in CORNERS:
        raise ValueError(f"corners={corners!r}: expected one of {', '.join(CORNERS)}")
    split_lists = _check_split_options(split_lists, val_fraction)
    _check_out_dir(out_dir, [images_dir, annotations_dir])
    errors: list[str] = []
    stats = Stats()
    records, named, found = read_voc(annotations_dir, images_dir, corners, keep_difficult, errors, stats)
    classes = voc_classes(named, found, _read_names(names), stats)
    if not classes:
        raise ValueError(f"{annotations_dir}: no objects with a class name (fix: check the annotations)")
    meta = {"kind": "voc", "sources": {"annotations": os.path.abspath(annotations_dir),
                                       "images": os.path.abspath(images_dir)},
            "options": {"keep_difficult": keep_difficult, "corners": corners, "seed": seed,
                        "split_lists": [os.path.abspath(p) for p in split_lists or []],
                        "val_fraction": val_fraction}}  # fmt: skip
    return _convert("voc", records, classes, out_dir, split_lists, _fraction(val_fraction), seed,
                    copy_images, overwrite, name, errors, stats, meta, {}, verbose, workers)


def convert_coco(
    instances_json: str | Path,
    images_dir: str | Path,
    out_dir: str | Path,
    *,
    valid_json: str | Path | None = None,
    valid_images_dir: str | Path | None = None,
    split_lists: Sequence[str | Path] | None = None,
    val_fraction: float | None = None,
    seed: int = 0,
    copy_images: bool = False,
    overwrite: bool = False,
    name: str | None = None,
    verbose: bool = True,
    workers: int | None = None,
) -> Path:
    """Convert a COCO instances json (and its images) into a YOLO dataset in ``out_dir`` (layout and rules: module
    doc). Images are found at ``images_dir / file_name``; images without annotations get an empty label file.

    Args:
        instances_json: e.g. ``annotations/instances_train2017.json``.
        images_dir: the folder its ``file_name`` entries are relative to.
        out_dir: the output folder (created).
        valid_json, valid_images_dir: a second json (and its images folder, default ``images_dir``) that becomes
            the valid split, e.g. ``instances_val2017.json``; its categories must equal the first one's.
        split_lists, val_fraction, seed: split one json instead (as ``convert_voc``; list entries are file names,
            stems or image ids). Default: a random 0.2 with seed 0.
        copy_images, overwrite, name, verbose, workers: as ``convert_voc``.

    Returns:
        The ``.data`` file written. ``categories.json`` beside it maps each class index to its COCO category id.

    Raises:
        ValueError, FileNotFoundError, FileExistsError: as ``convert_voc``.
    """
    instances_json, images_dir, out_dir = Path(instances_json), Path(images_dir), Path(out_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"images folder {images_dir} not found")
    if valid_json is not None and (split_lists or val_fraction is not None):
        raise ValueError("valid_json gives the valid split; do not combine it with split_lists or val_fraction")
    split_lists = _check_split_options(split_lists, val_fraction)
    sources = [(instances_json, _load_json(instances_json), images_dir, "train" if valid_json else None)]
    if valid_json is not None:
        valid_dir = Path(valid_images_dir) if valid_images_dir is not None else images_dir
        if not valid_dir.is_dir():
            raise FileNotFoundError(f"valid images folder {valid_dir} not found")
        sources.append((Path(valid_json), _load_json(Path(valid_json)), valid_dir, "valid"))
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
            "options": {"seed": seed, "split_lists": [os.path.abspath(p) for p in split_lists or []],
                        "val_fraction": val_fraction}}  # fmt: skip
    extra = {"categories.json": json.dumps(mapping, indent=1) + "\n"}
    fixed = {"train": str(instances_json), "valid": str(valid_json)} if valid_json is not None else None
    return _convert("coco", records, [n for _, n in categories], out_dir, split_lists, _fraction(val_fraction), seed,
                    copy_images, overwrite, name, errors, stats, meta, extra, verbose, workers, fixed)


def _check_split_options(split_lists: Sequence[str | Path] | None, val_fraction: float | None) -> list[Path] | None:
    if split_lists is None:
        return None
    if isinstance(split_lists, (str, Path)) or len(split_lists) != 2:
        raise ValueError(f"split_lists={split_lists!r}: expected two files, (train list, valid list)")
    if val_fraction is not None:
        raise ValueError("give split_lists or val_fraction, not both")
    return [Path(p) for p in split_lists]


def _fraction(val_fraction: float | None) -> float:
    return DEFAULT_VAL_FRACTION if val_fraction is None else float(val_fraction)


# ---------------------------------------------------------------------------------------------- command line
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

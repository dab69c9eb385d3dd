"""Annotation readers: Pascal VOC XML folders and COCO instances json as image records with pixel boxes, and splits.

Each image becomes a ``Record`` (its source file, the annotation that describes it, the size the annotation
claims and its ``Box``es as 0-based continuous pixel corners); ``assign_splits`` puts each record in ``train`` or
``valid`` from two split lists or a seeded random fraction. Problems that make the input unusable are collected in
an ``errors`` list (file, object, value and fix) so that ``utils.convert`` can report them all at once.
"""

from __future__ import annotations

import csv
import json
import logging
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils.data_files import IMG_FORMATS
from utils.problems import first_few

LOGGER = logging.getLogger(__name__)

CORNERS = ("one-based", "as-written")


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


def load_coco_json(path: Path) -> dict:
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
                           first_few([str(r.src.name) for r in unlisted]))
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


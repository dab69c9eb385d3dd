"""COCO json for evaluation: image ids from file names, detection records, annotation lookup, pycocotools scoring.

COCO image ids come from the file names as in the reference: ``int(stem.split('_')[-1])``, so
``000000000139.jpg`` and ``COCO_val2014_000000000139.jpg`` are both image 139. With ``--save-json`` every image
name must end in such a number, and every id must be in the annotation file when one is used; both are checked
before the run (``prepare_coco_gt``), and a pycocotools failure is reported as one line naming the file and the fix.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from utils.boxes import xyxy2xywh

LOGGER = logging.getLogger(__name__)

# COCO category ids (1..90 with gaps) of the 80 contiguous training classes, in order.
COCO80_TO_91 = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34,
    35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63,
    64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)  # fmt: skip


def coco_image_id(path: str | Path) -> int:
    """COCO image id of an image file, the reference's rule: the integer after the stem's last ``_``.

    ``000000000139.jpg`` -> 139, ``COCO_val2014_000000000139.jpg`` -> 139.

    Raises:
        ValueError: the name does not end in a number (naming the file and the fix).
    """
    tail = Path(path).stem.split("_")[-1]
    if not (tail.isascii() and tail.isdigit()):
        raise ValueError(
            f"{path}: --save-json needs COCO image ids from the file names (the number after the last '_', "
            f"e.g. 000000000139.jpg or COCO_val2014_000000000139.jpg), but '{tail}' is not a number; "
            "rename the images to their COCO ids or run without --save-json"
        )
    return int(tail)


def coco_json_rows(pred: torch.Tensor, img_id: int, nc: int) -> list[dict]:
    """COCO detection records of one image.

    Args:
        pred: (n, 6) ``x1, y1, x2, y2, score, class`` in pixels of the original image.
        img_id: the image id.
        nc: number of classes; with 80 the class index is mapped to the COCO category id (``COCO80_TO_91``).
    """
    box = xyxy2xywh(pred[:, :4].float().cpu().clone())
    box[:, :2] -= box[:, 2:] / 2  # COCO boxes are (top-left x, top-left y, w, h)
    rows = []
    for b, score, cls in zip(box.tolist(), pred[:, 4].tolist(), pred[:, 5].tolist()):
        category = COCO80_TO_91[int(cls)] if nc == 80 else int(cls)
        bbox = [round(x, 3) for x in b]
        rows.append({"image_id": img_id, "category_id": category, "bbox": bbox, "score": round(score, 5)})
    return rows


def find_coco_json(img_files: Sequence[str]) -> Path | None:
    """A COCO annotation file for these images: ``<root>/annotations/instances_<folder>.json`` for images in
    ``<root>/images/<folder>/`` (the coco and coco128 layout), else the only ``instances_*.json`` there."""
    if not img_files:
        return None
    folder = Path(img_files[0]).parent
    ann_dir = folder.parent.parent / "annotations"
    exact = ann_dir / f"instances_{folder.name}.json"
    if exact.is_file():
        return exact
    found = sorted(ann_dir.glob("instances_*.json")) if ann_dir.is_dir() else []
    return found[0] if len(found) == 1 else None


# What pycocotools raises on a malformed annotation or detections file (it asserts on content, indexes keys).
COCO_ERRORS = (AssertionError, KeyError, IndexError, TypeError, ValueError, OSError)


def load_coco_gt(anno_json: str | Path, img_files: Sequence[str] = ()):
    """The pycocotools ``COCO`` object of an annotation file, checked against the images to be scored.

    Args:
        anno_json: COCO instances json.
        img_files: image paths whose ``coco_image_id`` must all be images of ``anno_json``.

    Raises:
        ImportError: pycocotools is not installed (with the install command).
        ValueError: the file cannot be read as COCO annotations, or an image's id is not in it (one line each,
            naming the file and the fix).
    """
    try:
        from pycocotools.coco import COCO
    except ImportError as e:
        raise ImportError(
            f"pycocotools is needed to score --save-json results against {anno_json}: pip install pycocotools"
        ) from e
    try:
        gt = COCO(str(anno_json))
    except COCO_ERRORS as e:
        raise ValueError(
            f"{anno_json}: not a readable COCO annotation file ({type(e).__name__}: {e}); "
            "give the instances_*.json of these images with --coco-json"
        ) from e
    known = set(gt.getImgIds())
    for f in img_files:
        if coco_image_id(f) not in known:
            raise ValueError(
                f"{anno_json}: has no image id {coco_image_id(f)} (from {f}); "
                "give the annotation file of these images with --coco-json"
            )
    return gt


def run_cocoeval(anno_json, pred_json: str | Path, img_ids: Sequence[int]) -> tuple[float, float]:
    """Score a COCO detections file with pycocotools (bbox) on ``img_ids``; prints its summary.

    Args:
        anno_json: COCO annotation json (path) or a ``COCO`` object from ``load_coco_gt``.
        pred_json: detections json: a list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``.
        img_ids: the image ids scored.

    Returns:
        (mAP@0.5:0.95, mAP@0.5) as pycocotools computes them.

    Raises:
        ImportError: pycocotools is not installed.
        ValueError: pycocotools rejects the files (one line naming both and the fix).
    """
    gt = load_coco_gt(anno_json) if isinstance(anno_json, (str, Path)) else anno_json
    from pycocotools.cocoeval import COCOeval

    try:
        dt = gt.loadRes(str(pred_json))
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = list(img_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    except COCO_ERRORS as e:
        raise ValueError(
            f"{pred_json}: pycocotools could not score these detections against the annotations "
            f"({type(e).__name__}: {e or 'assertion failed'}); its image ids and category ids must be those of "
            "the annotation file: give the matching --coco-json, or run without --save-json"
        ) from e
    return float(ev.stats[0]), float(ev.stats[1])



def prepare_coco_gt(img_files: Sequence[str], coco_json: str | Path | None):
    """Check, before a ``--save-json`` run, that every image name carries a COCO id, and load the annotations.

    Args:
        img_files: the image paths to be evaluated.
        coco_json: the COCO annotation file given by the user, or None to look beside the images
            (``find_coco_json``).

    Returns:
        The ``COCO`` object of ``load_coco_gt``, or None when no annotation file was given or found (the
        detections are then written but not scored).

    Raises:
        FileNotFoundError: ``coco_json`` is given but does not exist.
        ValueError: an image name without a COCO id, or an id not in the annotations.
    """
    img_files = list(img_files)
    for f in img_files:
        coco_image_id(f)  # a name without a COCO id fails here, before the run
    if coco_json is not None and not Path(coco_json).is_file():
        raise FileNotFoundError(f"{coco_json}: COCO annotation json not found (fix --coco-json)")
    anno = Path(coco_json) if coco_json is not None else find_coco_json(img_files)
    if anno is not None:
        return load_coco_gt(anno, img_files)
    LOGGER.info("test: no COCO annotation json found; pycocotools scoring skipped (give --coco-json)")
    return None


def save_and_score(
    jdict: list[dict], img_ids: Sequence[int], save_dir: Path, coco_gt, ours: tuple[float, float]
) -> None:
    """Write ``save_dir/detections.json`` and, with annotations, print pycocotools' mAP beside ours.

    Args:
        jdict: the ``coco_json_rows`` of every image.
        img_ids: the image ids evaluated.
        save_dir: where ``detections.json`` goes.
        coco_gt: the ``COCO`` object of ``prepare_coco_gt``, or None (no scoring).
        ours: this code's (mAP@0.5:0.95, mAP@0.5), printed for comparison.
    """
    pred_json = save_dir / "detections.json"
    pred_json.write_text(json.dumps(jdict))
    print(f"Detections written to {pred_json}")
    if coco_gt is not None and jdict:
        coco_map, coco_map50 = run_cocoeval(coco_gt, pred_json, img_ids)
        print(f"pycocotools: mAP@0.5:0.95 {coco_map:.4f}, mAP@0.5 {coco_map50:.4f}")
        print(f"this code:   mAP@0.5:0.95 {ours[0]:.4f}, mAP@0.5 {ours[1]:.4f}")
    elif coco_gt is not None:
        print("pycocotools: no detections to score")

"""Evaluate a Darknet-cfg model on a dataset: P, R, mAP@0.5, mAP@0.5:0.95 and F1 per class.

    python test.py --cfg cfg/yolov3-tiny.cfg --data data/coco128.data --weights weights/best.pt

Images are letterboxed into rectangular batches (``rect``, padding 0.5 stride), the model runs in eval mode,
detections go through ``non_max_suppression`` and are matched greedily to the labels at IoU 0.50:0.05:0.95
(``utils.metrics.match_predictions``). Both mAP@0.5 and mAP@0.5:0.95 are computed here (the reference
only had mAP@0.5:0.95 through pycocotools). With ``--save-json`` the detections are also written in COCO
format and, given a COCO annotation file, scored by pycocotools. NMS keeps every detection (no per-image cap,
as the reference; COCOeval applies its own maxDets).

COCO image ids come from the file names as in the reference: ``int(stem.split('_')[-1])``, so
``000000000139.jpg`` and ``COCO_val2014_000000000139.jpg`` are both image 139. With ``--save-json`` every image
name must end in such a number, and every id must be in the annotation file when one is used; both are checked
before the run, and a pycocotools failure is reported as one line naming the file and the fix.

Results order (the return value of ``test()`` and the columns ``results.txt`` records):
``(P, R, mAP@0.5, mAP@0.5:0.95, F1, val_box, val_obj, val_cls)``: means over the classes present in the
labels, then the validation losses (``compute_loss`` items averaged over batches with the given ``hyp`` and
``gr``; 0 without hyperparameters).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from models import Darknet, load_weights
from utils.boxes import clip_coords, scale_coords, xywh2xyxy, xyxy2xywh
from utils.data_files import resolve_data_cfg
from utils.datasets import LoadImagesAndLabels
from utils.general import tune_malloc
from utils.label_cache import CACHE_CHECK_HELP, CACHE_CHECKS
from utils.loss import compute_loss
from utils.metrics import ap_per_class, match_predictions
from utils.nms import non_max_suppression
from utils.plots import plot_images
from utils.shapes import ensure_builtin_dataset
from utils.torch_utils import select_device, time_synchronized

LOGGER = logging.getLogger(__name__)

# COCO category ids (1..90 with gaps) of the 80 contiguous training classes, in order.
COCO80_TO_91 = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34,
    35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63,
    64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)  # fmt: skip

HEADER = ("%20s" + "%14s" * 7) % ("Class", "Images", "Targets", "P", "R", "mAP@0.5", "mAP@0.5:0.95", "F1")
ROW = "%20s" + "%14i" * 2 + "%14.3g" * 5


def iou_thresholds(device: torch.device | str = "cpu") -> torch.Tensor:
    """The 10 IoU thresholds 0.50, 0.55, .., 0.95 of mAP@0.5:0.95 (column 0 is mAP@0.5)."""
    return torch.linspace(0.5, 0.95, 10, device=device)


class Metrics(NamedTuple):
    """Dataset metrics. Means over the classes present in the labels; per-class arrays follow ``ap_class``."""

    mp: float  # mean precision at confidence 0.1
    mr: float  # mean recall at confidence 0.1
    map50: float  # mAP@0.5
    map: float  # mAP@0.5:0.95
    mf1: float  # mean F1 at confidence 0.1
    p: np.ndarray  # (k,) per class
    r: np.ndarray
    ap50: np.ndarray
    ap: np.ndarray  # (k,) AP@0.5:0.95
    f1: np.ndarray
    ap_class: np.ndarray  # (k,) int class indices present in the labels
    nt: np.ndarray  # (nc,) number of labels per class


def image_stats(pred: torch.Tensor, labels: torch.Tensor, iouv: torch.Tensor) -> tuple | None:
    """Per-image statistics for ``metrics_from_stats``.

    Args:
        pred: (n, 6) detections ``x1, y1, x2, y2, score, class``, xyxy pixels, by descending score.
        labels: (m, 5) ``class, x1, y1, x2, y2``, xyxy pixels of the same image.
        iouv: (niou,) IoU thresholds.

    Returns:
        ``(correct (n, niou) bool, conf (n,), pred_cls (n,), target_cls (m,))`` as numpy arrays, or None for an
        image with neither detections nor labels (it contributes nothing).
    """
    if not pred.shape[0] and not labels.shape[0]:
        return None
    correct = match_predictions(pred, labels, iouv)
    return (
        correct.cpu().numpy(),
        pred[:, 4].float().cpu().numpy(),
        pred[:, 5].float().cpu().numpy(),
        labels[:, 0].float().cpu().numpy(),
    )


def metrics_from_stats(stats: Sequence[tuple], nc: int) -> Metrics:
    """Combine per-image ``image_stats`` into dataset metrics (``ap_per_class``, reference conventions)."""
    stats = [s for s in stats if s is not None]
    zeros = np.zeros(0)
    if not stats:
        return Metrics(0.0, 0.0, 0.0, 0.0, 0.0, zeros, zeros, zeros, zeros, zeros, zeros.astype(int), np.zeros(nc, int))
    correct, conf, pred_cls, target_cls = (np.concatenate(x, 0) for x in zip(*stats))
    nt = np.bincount(target_cls.astype(np.int64), minlength=nc)
    if not target_cls.size:
        return Metrics(0.0, 0.0, 0.0, 0.0, 0.0, zeros, zeros, zeros, zeros, zeros, zeros.astype(int), nt)
    p, r, ap, f1, ap_class = ap_per_class(correct, conf, pred_cls, target_cls)
    p, r, ap50, ap, f1 = p[:, 0], r[:, 0], ap[:, 0], ap.mean(1), f1[:, 0]
    return Metrics(
        float(p.mean()), float(r.mean()), float(ap50.mean()), float(ap.mean()), float(f1.mean()),
        p, r, ap50, ap, f1, ap_class, nt,
    )  # fmt: skip


def evaluate_detections(
    preds: Sequence[torch.Tensor], labels: Sequence[torch.Tensor], nc: int, iouv: torch.Tensor | None = None
) -> Metrics:
    """Metrics of a whole detection set, the same code path as ``test()``.

    Args:
        preds: per image (n, 6) ``x1, y1, x2, y2, score, class`` in pixels, by descending score.
        labels: per image (m, 5) ``class, x1, y1, x2, y2`` in the same pixel coordinates.
        nc: number of classes.
        iouv: IoU thresholds; default 0.50:0.05:0.95.
    """
    iouv = iou_thresholds() if iouv is None else iouv
    return metrics_from_stats([image_stats(p, lab, iouv) for p, lab in zip(preds, labels)], nc)


def print_metrics(m: Metrics, seen: int, names: Sequence[str], nc: int, verbose: bool = True) -> None:
    """The results table: the ``all`` row, then one row per class present when nc > 1 and ``verbose``."""
    print(HEADER)
    print(ROW % ("all", seen, m.nt.sum(), m.mp, m.mr, m.map50, m.map, m.mf1))
    if verbose and nc > 1:
        for i, c in enumerate(m.ap_class):
            name = names[c] if c < len(names) else str(c)
            print(ROW % (name, seen, m.nt[c], m.p[i], m.r[i], m.ap50[i], m.ap[i], m.f1[i]))


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


def output_to_target(output: Sequence[torch.Tensor], width: int, height: int) -> np.ndarray:
    """NMS output -> (n, 7) ``[image, class, x, y, w, h, conf]`` xywh normalised, for ``plot_images``."""
    rows = []
    scale = torch.tensor([width, height, width, height])
    for i, det in enumerate(output):
        det = det.float().cpu()
        xywh = xyxy2xywh(det[:, :4]) / scale
        idx = torch.full((det.shape[0], 1), float(i))
        rows.append(torch.cat((idx, det[:, 5:6], xywh, det[:, 4:5]), 1))
    return torch.cat(rows, 0).numpy() if rows else np.zeros((0, 7), np.float32)


def load_model(cfg: str | Path, weights: str | Path | None, nc: int, img_size: int, device: torch.device) -> Darknet:
    """Darknet from ``cfg`` adapted to ``nc`` classes with ``weights`` loaded (strict), fused, in eval mode."""
    model = Darknet(cfg, img_size=(img_size, img_size), nc=nc)
    if weights:
        load_weights(model, weights)
    else:
        LOGGER.warning("test: no --weights given; evaluating randomly initialised weights")
    model.fuse()
    # channels-last: oneDNN's NHWC convolutions are markedly faster on CPU (bench/), tensor cores like it on CUDA
    return model.to(device, memory_format=torch.channels_last).eval()


def make_dataloader(
    path: str | Sequence[str], img_size: int, batch_size: int, single_cls: bool, nc: int, workers: int | None = None,
    cache_check: str = "mtime",
) -> torch.utils.data.DataLoader:
    """Rectangular-batch validation loader (pad 0.5), as the reference's test loader."""
    dataset = LoadImagesAndLabels(path, img_size, batch_size, rect=True, single_cls=single_cls, nc=nc, pad=0.5,
                                  cache_check=cache_check)
    if workers is None:
        workers = min(os.cpu_count() or 1, batch_size if batch_size > 1 else 0, 8)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=min(batch_size, len(dataset)),
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        collate_fn=LoadImagesAndLabels.collate_fn,
    )


def test(
    cfg: str | Path | None,
    data: str | Path | None,
    weights: str | Path | None = None,
    batch_size: int = 16,
    img_size: int = 416,
    conf_thres: float = 0.001,
    iou_thres: float = 0.6,
    save_json: bool = False,
    single_cls: bool = False,
    augment: bool = False,
    model: torch.nn.Module | None = None,
    dataloader: torch.utils.data.DataLoader | None = None,
    device: str | torch.device | None = None,
    save_dir: str | Path | None = None,
    coco_json: str | Path | None = None,
    names: Sequence[str] | None = None,
    hyp: dict | None = None,
    gr: float = 1.0,
    plots: bool = True,
    multi_label: bool = True,
    verbose: bool = True,
    half: bool = False,
    workers: int | None = None,
    max_det: int | None = None,
    cache_check: str = "mtime",
) -> tuple[tuple[float, ...], np.ndarray]:
    """Evaluate a model on the ``valid`` set of ``data`` (or on ``dataloader``).

    Args:
        cfg: model cfg; used when ``model`` is None.
        data: ``.data`` file: classes, names and the valid images (not needed when ``model``, ``dataloader``
            and ``names`` are all given).
        weights: ``.pt`` or Darknet ``.weights`` for a model built here.
        batch_size, img_size: of the loader built here (img_size is the long side of the letterbox).
        conf_thres, iou_thres: of ``non_max_suppression``.
        save_json: write COCO-format detections to ``save_dir/detections.json`` and score them with
            pycocotools when a COCO annotation file is given (``coco_json``) or found beside the images. Image
            names must carry COCO ids (``coco_image_id``); checked, with the annotation file, before the run.
        single_cls: treat every label and detection as class 0.
        augment: accepted for ultralytics compatibility; test-time augmentation is not implemented and this is
            rejected when True.
        model: an already built model (e.g. the trainer's EMA); evaluated on its device, its train/eval mode
            restored afterwards.
        dataloader: a loader yielding ``(imgs uint8 (bs, 3, h, w), targets (n, 6), paths, shapes)``.
        device: '' / 'cpu' / '0' for a model built here.
        save_dir: folder for plots and the json; None writes nothing (plots skipped).
        coco_json: COCO annotations for pycocotools.
        names: class names (default from ``data``, else ``'0'``, ``'1'``, ...).
        hyp: loss hyperparameters for the validation losses (None: the losses are reported as 0).
        gr: GIoU ratio of the objectness target in the validation losses: the trainer passes its current value
            (it ramps from 0 to 1 during burn-in); 1.0 for a trained model.
        plots: draw ``test_batch0_gt.jpg`` and ``test_batch0_pred.jpg`` of the first batch into ``save_dir``.
        multi_label: several classes per box in NMS.
        verbose: per-class rows in the table.
        half: inference in reduced precision (fp16 on CUDA, bf16 on CPU) through autocast.
        workers: DataLoader workers for a loader built here (default min(cpus, batch_size, 8)).
        cache_check: label cache key of a loader built here: ``'mtime'`` or ``'content'`` (see utils.datasets).
        max_det: most detections kept per image; None (default): all, as the reference.

    Returns:
        ``(P, R, mAP@0.5, mAP@0.5:0.95, F1, val_box, val_obj, val_cls)`` and ``maps`` (nc,): AP@0.5:0.95 per
        class, the mean mAP@0.5:0.95 for classes absent from the labels.
    """
    if augment:
        raise ValueError("test: augment=True (test-time augmentation) is not implemented; leave it off")
    data_dict = resolve_data_cfg(data) if data is not None and (dataloader is None or names is None) else None
    if data_dict is not None:
        nc = 1 if single_cls else int(data_dict["classes"])
        names = names if names is not None else data_dict["names"]
    elif model is not None:
        nc = 1 if single_cls else int(getattr(model, "nc", 1))
    else:
        raise ValueError("test: give data (a .data file) or a model, dataloader and names")
    if single_cls:
        names = ["item"]
    names = list(names) if names is not None else [str(i) for i in range(nc)]

    if model is None:
        if cfg is None:
            raise ValueError("test: give cfg (a model cfg file) or model")
        dev = select_device("" if device is None else str(device), batch_size=batch_size)
        model = load_model(cfg, weights, nc, img_size, dev)
    else:
        dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    if dataloader is None:
        if data_dict is None:
            raise ValueError("test: no dataloader given and no data to build one from")
        dataloader = make_dataloader(data_dict["valid"], img_size, batch_size, single_cls, nc, workers, cache_check)

    save_dir = Path(save_dir) if save_dir is not None else None
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
    coco_gt = None
    if save_json:
        if save_dir is None:
            raise ValueError("test: save_json needs save_dir (where detections.json goes)")
        img_files = list(getattr(dataloader.dataset, "img_files", []))
        for f in img_files:
            coco_image_id(f)  # a name without a COCO id fails here, before the run
        if coco_json is not None and not Path(coco_json).is_file():
            raise FileNotFoundError(f"{coco_json}: COCO annotation json not found (fix --coco-json)")
        anno = Path(coco_json) if coco_json is not None else find_coco_json(img_files)
        if anno is not None:
            coco_gt = load_coco_gt(anno, img_files)
        else:
            LOGGER.info("test: no COCO annotation json found; pycocotools scoring skipped (give --coco-json)")
    low_precision = torch.float16 if dev.type == "cuda" else torch.bfloat16
    autocast = torch.autocast(dev.type, dtype=low_precision) if half else nullcontext()

    iouv = iou_thresholds(dev)
    seen, t_inf, t_nms = 0, 0.0, 0.0
    loss = torch.zeros(3, device=dev)
    stats, jdict, img_ids = [], [], []
    for batch_i, (imgs, targets, paths, shapes) in enumerate(tqdm(dataloader, desc=HEADER)):
        imgs = (imgs.to(dev, non_blocking=True).float() / 255.0).contiguous(memory_format=torch.channels_last)
        targets = targets.to(dev)
        if single_cls:
            targets[:, 1] = 0
        _, _, height, width = imgs.shape
        whwh = torch.tensor([width, height, width, height], device=dev, dtype=torch.float32)

        with torch.no_grad():
            t = time_synchronized()
            with autocast:
                inf_out, train_out = model(imgs)
            t_inf += time_synchronized() - t
            if hyp is not None:
                loss += compute_loss([x.float() for x in train_out], targets, model, hyp, gr)[1][:3]
            t = time_synchronized()
            output = non_max_suppression(
                inf_out.float(), conf_thres=conf_thres, iou_thres=iou_thres, multi_label=multi_label, max_det=max_det
            )
            t_nms += time_synchronized() - t

        for si, pred in enumerate(output):
            seen += 1
            if single_cls:
                pred[:, 5] = 0
            clip_coords(pred, (height, width))
            lab = targets[targets[:, 0] == si, 1:6]
            labels = torch.cat((lab[:, :1], xywh2xyxy(lab[:, 1:5]) * whwh), 1)
            stats.append(image_stats(pred, labels, iouv))
            if save_json:
                box = pred.clone()
                if shapes[si] is not None:
                    scale_coords(imgs[si].shape[1:], box[:, :4], shapes[si][0], shapes[si][1])
                img_ids.append(coco_image_id(paths[si]))
                jdict += coco_json_rows(box, img_ids[-1], nc)

        if plots and batch_i == 0 and save_dir is not None:
            plot_images(imgs, targets, paths, fname=save_dir / "test_batch0_gt.jpg", names=names)
            dets = output_to_target(output, width, height)
            plot_images(imgs, dets, paths, fname=save_dir / "test_batch0_pred.jpg", names=names)

    m = metrics_from_stats(stats, nc)
    print_metrics(m, seen, names, nc, verbose)
    if seen:
        size = getattr(dataloader.dataset, "img_size", img_size)  # a given loader has its own size
        speeds = tuple(x / seen * 1e3 for x in (t_inf, t_nms, t_inf + t_nms)) + (size, size, dataloader.batch_size)
        print("Speed: %.1f/%.1f/%.1f ms inference/NMS/total per %gx%g image at batch-size %g" % speeds)  # noqa: UP031

    if save_json:
        pred_json = save_dir / "detections.json"
        pred_json.write_text(json.dumps(jdict))
        print(f"Detections written to {pred_json}")
        if coco_gt is not None and jdict:
            coco_map, coco_map50 = run_cocoeval(coco_gt, pred_json, img_ids)
            print(f"pycocotools: mAP@0.5:0.95 {coco_map:.4f}, mAP@0.5 {coco_map50:.4f}")
            print(f"this code:   mAP@0.5:0.95 {m.map:.4f}, mAP@0.5 {m.map50:.4f}")
        elif coco_gt is not None:
            print("pycocotools: no detections to score")

    model.train(was_training)
    maps = np.zeros(nc) + m.map
    for i, c in enumerate(m.ap_class):
        if c < nc:
            maps[c] = m.ap[i]
    val_losses = (loss.cpu() / max(len(dataloader), 1)).tolist()
    return (m.mp, m.mr, m.map50, m.map, m.mf1, *val_losses), maps


def sweep(opt: argparse.Namespace, sizes: Sequence[int], out_file: Path) -> np.ndarray:
    """Run ``test`` at each image size; rows ``img_size, P, R, mAP@0.5, mAP@0.5:0.95, F1, seconds``."""
    rows = []
    for size in sizes:
        t = time.time()
        results, _ = test(
            opt.cfg, opt.data, opt.weights, opt.batch_size, size, opt.conf_thres, opt.iou_thres,
            single_cls=opt.single_cls, device=opt.device, plots=False, verbose=False, workers=opt.workers,
        )  # fmt: skip
        rows.append((size, *results[:5], time.time() - t))
    arr = np.array(rows)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(out_file, arr, fmt="%10.4g", header="img_size P R mAP@0.5 mAP@0.5:0.95 F1 seconds")
    print(f"Results saved to {out_file}")
    return arr


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Evaluate a Darknet-cfg YOLO model (P, R, mAP@0.5, mAP@0.5:0.95, F1).")
    p.add_argument("--cfg", default="cfg/yolov3-spp.cfg", help="model cfg file")
    p.add_argument("--data", default="data/coco128.data", help=".data file (classes, valid, names)")
    p.add_argument("--weights", default="", help=".pt checkpoint or Darknet .weights file ('' = random init)")
    p.add_argument("--batch-size", type=int, default=16, help="images per batch")
    p.add_argument("--img-size", type=int, default=416, help="inference size (long side, pixels, multiple of 32)")
    p.add_argument("--conf-thres", type=float, default=0.001, help="object confidence threshold for NMS")
    p.add_argument("--iou-thres", type=float, default=0.6, help="IoU threshold for NMS")
    p.add_argument("--save-json", action="store_true", help="write COCO-format detections.json (+ pycocotools)")
    p.add_argument("--coco-json", default=None, help="COCO annotation json for pycocotools (default: searched)")
    p.add_argument("--single-cls", action="store_true", help="treat every class as one class")
    p.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1 or cpu ('' = first GPU if any)")
    p.add_argument(
        "--task",
        default="test",
        choices=("test", "benchmark", "study"),
        help="test: one evaluation; benchmark: img sizes 320..608 -> benchmark.txt; study: 256..640 -> study_*.txt",
    )
    p.add_argument("--save-dir", default="runs/test", help="folder for plots, detections.json and sweep results")
    p.add_argument("--workers", type=int, default=None, help="dataloader workers (default min(cpus, batch, 8))")
    p.add_argument("--half", action="store_true", help="reduced-precision inference (fp16 CUDA, bf16 CPU)")
    p.add_argument("--cache-check", choices=CACHE_CHECKS, default="mtime", help=CACHE_CHECK_HELP)
    p.add_argument("--verbose", action="store_true", help="also log diagnostics (per-class rows are always printed)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    opt = parse_args(argv)
    logging.basicConfig(level=logging.INFO if opt.verbose else logging.WARNING, format="%(message)s")
    tune_malloc()  # keep per-batch buffers in the heap: no page faults on every batch (utils.general)
    save_dir = Path(opt.save_dir)
    try:
        ensure_builtin_dataset(opt.data)
        if opt.task == "test":
            test(
                opt.cfg, opt.data, opt.weights or None, opt.batch_size, opt.img_size, opt.conf_thres, opt.iou_thres,
                opt.save_json, opt.single_cls, device=opt.device, save_dir=save_dir, coco_json=opt.coco_json,
                half=opt.half, workers=opt.workers, cache_check=opt.cache_check,
            )  # fmt: skip
        elif opt.task == "benchmark":
            sweep(opt, range(320, 609, 64), save_dir / "benchmark.txt")
        else:
            out = save_dir / f"study_{Path(opt.cfg).stem}_{Path(opt.weights).stem or 'random'}.txt"
            sweep(opt, range(256, 641, 64), out)
    except (FileNotFoundError, ImportError, ValueError) as e:
        print(f"test.py: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Evaluate a Darknet-cfg model on a dataset: P, R, mAP@0.5, mAP@0.5:0.95 and F1 per class (``test()``).

Images are letterboxed into rectangular batches (``rect``, padding 0.5 stride), the model runs in eval mode,
detections go through ``non_max_suppression`` and are matched greedily to the labels at IoU 0.50:0.05:0.95
(``utils.metrics.match_predictions``). Both mAP@0.5 and mAP@0.5:0.95 are computed here (the reference
only had mAP@0.5:0.95 through pycocotools). With ``save_json`` the detections are also written in COCO
format and, given a COCO annotation file, scored by pycocotools (``utils.coco``). NMS keeps every detection (no
per-image cap, as the reference; COCOeval applies its own maxDets). ``test.py`` is the command line over this.

Results order (the return value of ``test()`` and the columns ``results.txt`` records):
``(P, R, mAP@0.5, mAP@0.5:0.95, F1, val_box, val_obj, val_cls)``: means over the classes present in the
labels, then the validation losses (``compute_loss`` items averaged over batches with the given ``hyp`` and
``gr``; 0 without hyperparameters).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from models import Darknet
from utils.boxes import clip_coords, scale_coords, xywhn2xyxy, xyxy2xywhn
from utils.coco import coco_image_id, coco_json_rows, prepare_coco_gt, save_and_score
from utils.data_files import resolve_data_cfg
from utils.datasets import LoadImagesAndLabels
from utils.loss import compute_loss
from utils.metrics import ap_per_class, match_predictions
from utils.nms import non_max_suppression
from utils.plots import plot_images
from utils.torch_utils import select_device, time_synchronized
from utils.weights import load_weights

LOGGER = logging.getLogger(__name__)

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



def output_to_target(output: Sequence[torch.Tensor], width: int, height: int) -> np.ndarray:
    """NMS output -> (n, 7) ``[image, class, x, y, w, h, conf]`` xywh normalised, for ``plot_images``."""
    rows = []
    for i, det in enumerate(output):
        det = det.float().cpu()
        xywh = xyxy2xywhn(det[:, :4], width, height)
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



def resolve_classes(
    data: str | Path | None, dataloader, names: Sequence[str] | None, model: torch.nn.Module | None,
    single_cls: bool,
) -> tuple[dict | None, int, list[str]]:
    """``(data_dict, nc, names)`` of an evaluation: from the ``.data`` file unless a loader and names are given.

    The ``.data`` file is read only when something is missing from ``dataloader`` and ``names``; without it,
    ``nc`` is the model's. ``single_cls`` makes one class, ``item``; missing names become ``'0'``, ``'1'``, ...
    """
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
    return data_dict, nc, names


def model_and_device(
    model: torch.nn.Module | None, cfg: str | Path | None, weights: str | Path | None,
    device: str | torch.device | None, batch_size: int, nc: int, img_size: int,
) -> tuple[torch.nn.Module, torch.device]:
    """The given model on its own device, or one built from ``cfg`` and ``weights`` (``load_model``)."""
    if model is not None:
        return model, next(model.parameters()).device
    if cfg is None:
        raise ValueError("test: give cfg (a model cfg file) or model")
    dev = select_device("" if device is None else str(device), batch_size=batch_size)
    return load_model(cfg, weights, nc, img_size, dev), dev


def prepare_outputs(
    save_dir: str | Path | None, save_json: bool, dataloader, coco_json: str | Path | None
) -> tuple[Path | None, object]:
    """Create ``save_dir``; with ``save_json`` check the image ids and load the annotations before the run.

    Returns ``(save_dir as a Path or None, the pycocotools COCO object or None)``.
    """
    save_dir = Path(save_dir) if save_dir is not None else None
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
    coco_gt = None
    if save_json:
        if save_dir is None:
            raise ValueError("test: save_json needs save_dir (where detections.json goes)")
        coco_gt = prepare_coco_gt(getattr(dataloader.dataset, "img_files", []), coco_json)
    return save_dir, coco_gt


@dataclass
class Tally:
    """What the batch loop of ``test()`` accumulates."""

    loss: torch.Tensor  # (3,) summed validation loss items (box, obj, cls)
    seen: int = 0  # images
    t_inf: float = 0.0  # seconds of inference
    t_nms: float = 0.0  # seconds of NMS
    stats: list = field(default_factory=list)  # image_stats per image
    jdict: list = field(default_factory=list)  # COCO detection records (save_json)
    img_ids: list = field(default_factory=list)  # COCO image ids (save_json)


def infer_batch(
    model: torch.nn.Module, imgs: torch.Tensor, targets: torch.Tensor, autocast, hyp: dict | None, gr: float,
    nms_kwargs: dict, tally: Tally,
) -> list[torch.Tensor]:
    """Forward pass, validation loss (with ``hyp``) and NMS of one batch; times and losses go into ``tally``.

    Returns the NMS output: per image (n, 6) ``x1, y1, x2, y2, score, class``, xyxy pixels of ``imgs``.
    """
    with torch.no_grad():
        t = time_synchronized()
        with autocast:
            inf_out, train_out = model(imgs)
        tally.t_inf += time_synchronized() - t
        if hyp is not None:
            tally.loss += compute_loss([x.float() for x in train_out], targets, model, hyp, gr)[1][:3]
        t = time_synchronized()
        output = non_max_suppression(inf_out.float(), **nms_kwargs)
        tally.t_nms += time_synchronized() - t
    return output


def score_batch(
    output: list[torch.Tensor], imgs: torch.Tensor, targets: torch.Tensor, paths: Sequence[str], shapes: Sequence,
    iouv: torch.Tensor, single_cls: bool, coco_nc: int | None, tally: Tally,
) -> None:
    """Match each image's detections to its labels into ``tally.stats``; with ``coco_nc``, also its COCO records.

    ``output`` is clipped to the image in place (and set to class 0 with ``single_cls``). ``targets`` (n, 6)
    ``image, class, x, y, w, h`` xywh normalised. COCO boxes are mapped back to the original image (``shapes``).
    """
    _, _, height, width = imgs.shape
    for si, pred in enumerate(output):
        tally.seen += 1
        if single_cls:
            pred[:, 5] = 0
        clip_coords(pred, (height, width))
        lab = targets[targets[:, 0] == si, 1:6]
        labels = torch.cat((lab[:, :1], xywhn2xyxy(lab[:, 1:5], width, height)), 1)
        tally.stats.append(image_stats(pred, labels, iouv))
        if coco_nc is not None:
            box = pred.clone()
            if shapes[si] is not None:
                scale_coords(imgs[si].shape[1:], box[:, :4], shapes[si][0], shapes[si][1])
            tally.img_ids.append(coco_image_id(paths[si]))
            tally.jdict += coco_json_rows(box, tally.img_ids[-1], coco_nc)


def plot_batch(
    imgs: torch.Tensor, targets: torch.Tensor, output: list[torch.Tensor], paths: Sequence[str], save_dir: Path,
    names: Sequence[str],
) -> None:
    """``test_batch0_gt.jpg`` (the labels) and ``test_batch0_pred.jpg`` (the detections) of a batch."""
    _, _, height, width = imgs.shape
    plot_images(imgs, targets, paths, fname=save_dir / "test_batch0_gt.jpg", names=names)
    dets = output_to_target(output, width, height)
    plot_images(imgs, dets, paths, fname=save_dir / "test_batch0_pred.jpg", names=names)


def run_batches(
    model: torch.nn.Module, dataloader, dev: torch.device, autocast, nms_kwargs: dict, hyp: dict | None, gr: float,
    single_cls: bool, coco_nc: int | None, plot_dir: Path | None, names: Sequence[str],
) -> Tally:
    """The evaluation loop under the tqdm bar: infer, score and (first batch, ``plot_dir``) plot every batch."""
    iouv = iou_thresholds(dev)
    tally = Tally(loss=torch.zeros(3, device=dev))
    for batch_i, (imgs, targets, paths, shapes) in enumerate(tqdm(dataloader, desc=HEADER)):
        imgs = (imgs.to(dev, non_blocking=True).float() / 255.0).contiguous(memory_format=torch.channels_last)
        targets = targets.to(dev)
        if single_cls:
            targets[:, 1] = 0
        output = infer_batch(model, imgs, targets, autocast, hyp, gr, nms_kwargs, tally)
        score_batch(output, imgs, targets, paths, shapes, iouv, single_cls, coco_nc, tally)
        if plot_dir is not None and batch_i == 0:
            plot_batch(imgs, targets, output, paths, plot_dir, names)
    return tally


def print_speed(tally: Tally, img_size: int, batch_size: int) -> None:
    """The ``Speed:`` line: ms per image of inference, NMS and both."""
    speeds = tuple(x / tally.seen * 1e3 for x in (tally.t_inf, tally.t_nms, tally.t_inf + tally.t_nms))
    print("Speed: %.1f/%.1f/%.1f ms inference/NMS/total per %gx%g image at batch-size %g"  # noqa: UP031
          % (*speeds, img_size, img_size, batch_size))  # fmt: skip


def class_maps(m: Metrics, nc: int) -> np.ndarray:
    """(nc,) AP@0.5:0.95 per class; the mean mAP@0.5:0.95 for classes absent from the labels."""
    maps = np.zeros(nc) + m.map
    for i, c in enumerate(m.ap_class):
        if c < nc:
            maps[c] = m.ap[i]
    return maps


def test(
    cfg: str | Path | None, data: str | Path | None, weights: str | Path | None = None, batch_size: int = 16,
    img_size: int = 416, conf_thres: float = 0.001, iou_thres: float = 0.6, save_json: bool = False,
    single_cls: bool = False, augment: bool = False, model: torch.nn.Module | None = None,
    dataloader: torch.utils.data.DataLoader | None = None, device: str | torch.device | None = None,
    save_dir: str | Path | None = None, coco_json: str | Path | None = None, names: Sequence[str] | None = None,
    hyp: dict | None = None, gr: float = 1.0, plots: bool = True, multi_label: bool = True, verbose: bool = True,
    half: bool = False, workers: int | None = None, max_det: int | None = None, cache_check: str = "mtime",
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
    data_dict, nc, names = resolve_classes(data, dataloader, names, model, single_cls)
    model, dev = model_and_device(model, cfg, weights, device, batch_size, nc, img_size)
    was_training = model.training
    model.eval()
    if dataloader is None:
        if data_dict is None:
            raise ValueError("test: no dataloader given and no data to build one from")
        dataloader = make_dataloader(data_dict["valid"], img_size, batch_size, single_cls, nc, workers, cache_check)
    save_dir, coco_gt = prepare_outputs(save_dir, save_json, dataloader, coco_json)
    low_precision = torch.float16 if dev.type == "cuda" else torch.bfloat16
    autocast = torch.autocast(dev.type, dtype=low_precision) if half else nullcontext()
    nms_kwargs = {"conf_thres": conf_thres, "iou_thres": iou_thres, "multi_label": multi_label, "max_det": max_det}
    plot_dir = save_dir if plots else None
    tally = run_batches(model, dataloader, dev, autocast, nms_kwargs, hyp, gr, single_cls,
                        nc if save_json else None, plot_dir, names)  # fmt: skip

    m = metrics_from_stats(tally.stats, nc)
    print_metrics(m, tally.seen, names, nc, verbose)
    if tally.seen:  # a given loader has its own size
        print_speed(tally, getattr(dataloader.dataset, "img_size", img_size), dataloader.batch_size)
    if save_json:
        save_and_score(tally.jdict, tally.img_ids, save_dir, coco_gt, (m.map, m.map50))
    model.train(was_training)
    val_losses = (tally.loss.cpu() / max(len(dataloader), 1)).tolist()
    return (m.mp, m.mr, m.map50, m.map, m.mf1, *val_losses), class_maps(m, nc)

"""Non-maximum suppression of eval-mode YOLO output, with the reference trainer's "merge NMS"."""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from utils.boxes import box_iou, xywh2xyxy

LOGGER = logging.getLogger(__name__)

MIN_WH, MAX_WH = 2, 4096  # candidate box width/height limits (pixels); MAX_WH is also the per-class offset
PER_CLASS_FROM = 4000  # above this many candidates NMS runs class by class (same result, much faster on CPU)


def _torchvision_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_thres: float) -> torch.Tensor:
    """``torchvision.ops.nms`` (the same compiled kernel, ``torch.ops.torchvision.nms``) without importing the
    torchvision package, whose import pulls in torch._dynamo: 1.3-1.5 s of every detect.py and test.py start.
    Only torchvision's operator library is loaded, once; if that fails, torchvision is imported after all."""
    try:
        return torch.ops.torchvision.nms(boxes, scores, iou_thres)
    except (AttributeError, RuntimeError):  # the operator is not registered yet
        pass
    spec = importlib.util.find_spec("torchvision")
    for lib in sorted(Path(spec.origin).parent.glob("_C*.so")) if spec and spec.origin else []:
        try:
            torch.ops.load_library(str(lib))
            return torch.ops.torchvision.nms(boxes, scores, iou_thres)
        except (OSError, AttributeError, RuntimeError):
            continue
    import torchvision

    return torchvision.ops.nms(boxes, scores, iou_thres)


def _nms_offset_boxes(
    boxes: torch.Tensor, scores: torch.Tensor, cls: torch.Tensor | None, iou_thres: float
) -> torch.Tensor:
    """``torchvision.ops.nms`` of class-offset xyxy boxes (n, 4); indices kept, by descending score.

    ``cls`` (n,) are the classes behind the offsets (None: agnostic). With many boxes NMS runs class by class
    on the same offset boxes: the same IoUs (float rounding included) and the same result as one call,
    without its quadratic cost across classes. That holds while boxes of different classes cannot overlap,
    i.e. while the boxes span less than ``MAX_WH - 1`` pixels in x or in y (the pixel of margin covers the
    rounding of the offsets); wider spans take the single call.
    """
    if cls is None or boxes.shape[0] <= PER_CLASS_FROM:
        return _torchvision_nms(boxes, scores, iou_thres)
    raw = boxes - cls[:, None] * MAX_WH  # the boxes before their class offsets
    span_x = raw[:, 2].max() - raw[:, 0].min()
    span_y = raw[:, 3].max() - raw[:, 1].min()
    if min(float(span_x), float(span_y)) >= MAX_WH - 1:
        return _torchvision_nms(boxes, scores, iou_thres)
    keep = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    for c in cls.unique():
        idx = (cls == c).nonzero().view(-1)
        keep[idx[_torchvision_nms(boxes[idx], scores[idx], iou_thres)]] = True
    i = keep.nonzero().view(-1)
    return i[scores[i].sort(descending=True, stable=True)[1]]


def _candidates(
    x: torch.Tensor, conf_thres: float, multi_label: bool, classes: Sequence[int] | None
) -> torch.Tensor:
    """One image's NMS candidates (n, 6) ``x1, y1, x2, y2, score, class`` (xyxy pixels) from its (N, 5 + nc) rows.

    Rows need objectness ``> conf_thres`` and a size within ``MIN_WH``..``MAX_WH``; score = obj * cls, one row
    per (box, class) above ``conf_thres`` with ``multi_label``, else the best class; then only ``classes`` and
    only finite rows. ``x`` is not modified.
    """
    x = x[x[:, 4] > conf_thres]  # boolean indexing copies: the input stays untouched
    x = x[((x[:, 2:4] > MIN_WH) & (x[:, 2:4] < MAX_WH)).all(1)]
    if not x.shape[0]:
        return x.new_zeros((0, 6))
    x[:, 5:] *= x[:, 4:5]
    box = xywh2xyxy(x[:, :4])
    if multi_label:
        i, j = (x[:, 5:] > conf_thres).nonzero().T
        x = torch.cat((box[i], x[i, j + 5, None], j[:, None].to(x.dtype)), 1)
    else:
        conf, j = x[:, 5:].max(1)
        x = torch.cat((box, conf[:, None], j[:, None].to(x.dtype)), 1)[conf > conf_thres]
    if classes:
        x = x[(x[:, 5:6] == torch.tensor(classes, device=x.device, dtype=x.dtype)).any(1)]
    return x[torch.isfinite(x).all(1)]


def non_max_suppression(
    prediction: torch.Tensor,
    conf_thres: float = 0.1,
    iou_thres: float = 0.6,
    multi_label: bool = True,
    classes: Sequence[int] | None = None,
    agnostic: bool = False,
    max_det: int | None = None,
    time_limit: float = 10.0,
    merge: bool = True,
    max_nms: int | None = None,
) -> list[torch.Tensor]:
    """Per-class NMS of eval-mode output, with the reference's rules and float order (defaults: no caps).

    Candidates need objectness ``> conf_thres`` and width and height strictly between 2 and 4096 pixels;
    a candidate's score is obj * cls. With ``multi_label`` (and nc > 1) every (box, class) pair scoring
    ``> conf_thres`` is a candidate; otherwise (and always when nc == 1) each box's best class is, when its
    score is ``> conf_thres``. ``classes`` then keeps only candidates of those classes. Classes are kept apart
    by offsetting the boxes by ``class * 4096`` (not with ``agnostic``) before ``torchvision.ops.nms`` (run class
    by class on those same boxes when there are many candidates: identical result, far faster). With ``merge``
    and 1 < candidates < 3000, each kept box becomes the score-weighted mean of the candidates whose IoU with
    it (in the offset space) exceeds ``iou_thres``, the weights normalised per kept box before the matrix
    product as in the reference ("merge NMS").

    With the default ``max_det=None`` and ``max_nms=None`` the output equals the reference's on finite input
    (test.py evaluates this way). Departures, each opt-in or for non-finite input only: ``max_det`` caps the
    boxes returned per image (detect.py uses one; the reference had none); ``max_nms`` passes only that many
    best-scoring candidates to NMS; candidate rows with a non-finite value are dropped (the reference passed
    them on to NMS); an image past ``time_limit`` gets a (0, 6) tensor and a logged warning (the reference
    returned None silently).

    Args:
        prediction: (bs, N, 5 + nc) rows ``(x, y, w, h, obj, cls_0 .. cls_{nc-1})``, xywh pixels, scores in
            0..1. Not modified.
        conf_thres: candidate threshold on objectness and on obj * cls.
        iou_thres: IoU above which a lower-scoring box is suppressed (and merged).
        multi_label: allow several classes per box (ignored when nc == 1).
        classes: keep only these class indices (None or empty: all).
        agnostic: suppress across classes.
        max_det: most boxes kept per image, best scores first; None: no cap.
        time_limit: seconds; once exceeded a warning is logged and the remaining images get no boxes.
        merge: apply the merge step (the reference always did; off for plain NMS).
        max_nms: most candidates per image passed to NMS; None: no cap.

    Returns:
        One (n, 6) tensor per image, rows ``(x1, y1, x2, y2, score, class)`` xyxy pixels, by descending
        score; an image without detections gets a (0, 6) tensor.
    """
    for name, cap in (("max_det", max_det), ("max_nms", max_nms)):
        if cap is not None and cap < 1:
            raise ValueError(f"non_max_suppression: {name}={cap}; give a positive count or None for no cap")
    nc = prediction.shape[2] - 5
    multi_label &= nc > 1
    output = [prediction.new_zeros((0, 6)) for _ in range(prediction.shape[0])]
    t_start = time.time()
    for xi, x in enumerate(prediction):
        x = _candidates(x, conf_thres, multi_label, classes)
        n = x.shape[0]
        if not n:
            continue
        if max_nms is not None and n > max_nms:
            x = x[x[:, 4].topk(max_nms)[1]]

        c = x[:, 5:6] * (0 if agnostic else MAX_WH)
        boxes, scores = x[:, :4] + c, x[:, 4]
        i = _nms_offset_boxes(boxes, scores, None if agnostic else x[:, 5], iou_thres)[:max_det]
        if merge and 1 < n < 3000:
            weights = (box_iou(boxes[i], boxes) > iou_thres) * scores[None]  # (kept, candidates)
            # normalised before the product, as the reference: the other order rounds differently.
            # .contiguous(): a strided operand makes the matmul ~10x slower on CPU (same floats)
            x[i, :4] = torch.mm(weights / weights.sum(1, keepdim=True), x[:, :4].contiguous()).float()
        output[xi] = x[i]
        if time.time() - t_start > time_limit:
            LOGGER.warning(
                "non_max_suppression: time limit %.1fs exceeded after %d of %d images; the rest get no boxes",
                time_limit, xi + 1, prediction.shape[0],
            )  # fmt: skip
            break
    return output

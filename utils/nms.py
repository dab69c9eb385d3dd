"""Non-maximum suppression of eval-mode YOLO output, with the reference trainer's "merge NMS"."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch
import torchvision

from utils.boxes import box_iou, xywh2xyxy

LOGGER = logging.getLogger(__name__)

MIN_WH, MAX_WH = 2, 4096  # candidate box width/height limits (pixels); MAX_WH is also the per-class offset
PER_CLASS_FROM = 4000  # above this many candidates NMS runs class by class (same result, much faster on CPU)


def _nms_offset_boxes(
    boxes: torch.Tensor, scores: torch.Tensor, cls: torch.Tensor | None, iou_thres: float
) -> torch.Tensor:
    """``torchvision.ops.nms`` of class-offset xyxy boxes (n, 4); indices kept, by descending score.

    The offsets already keep classes apart, so with many boxes NMS runs class by class on the same offset
    boxes: the same IoUs (float rounding included) and the same result as one call, without its quadratic
    cost across classes.
    """
    if cls is None or boxes.shape[0] <= PER_CLASS_FROM:
        return torchvision.ops.nms(boxes, scores, iou_thres)
    keep = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    for c in cls.unique():
        idx = (cls == c).nonzero().view(-1)
        keep[idx[torchvision.ops.nms(boxes[idx], scores[idx], iou_thres)]] = True
    i = keep.nonzero().view(-1)
    return i[scores[i].sort(descending=True, stable=True)[1]]


def non_max_suppression(
    prediction: torch.Tensor,
    conf_thres: float = 0.1,
    iou_thres: float = 0.6,
    multi_label: bool = True,
    classes: Sequence[int] | None = None,
    agnostic: bool = False,
    max_det: int = 300,
    time_limit: float = 10.0,
    merge: bool = True,
    max_nms: int = 30000,
) -> list[torch.Tensor]:
    """Per-class NMS of eval-mode output.

    Candidates need objectness ``> conf_thres`` and width and height strictly between 2 and 4096 pixels;
    a candidate's score is obj * cls. With ``multi_label`` (and nc > 1) every (box, class) pair scoring
    ``> conf_thres`` is a candidate, otherwise only the best class. Classes are kept apart by offsetting the
    boxes by ``class * 4096`` (not with ``agnostic``) before ``torchvision.ops.nms`` (run class by class on those
    same boxes when there are many candidates: identical result, far faster). With ``merge`` and
    1 < candidates < 3000, each kept box becomes the score-weighted mean of the candidates whose IoU with it
    (in the offset space) exceeds ``iou_thres`` (the reference's "merge NMS").

    Departures from the reference, both only for extreme inputs: at most ``max_det`` boxes per image are
    returned (the reference had no cap), and when more than ``max_nms`` candidates remain only the
    ``max_nms`` best-scoring enter NMS (keeps an untrained network at conf 0.001 fast; merge is off at that
    size anyway).

    Args:
        prediction: (bs, N, 5 + nc) rows ``(x, y, w, h, obj, cls_0 .. cls_{nc-1})``, xywh pixels, scores in
            0..1. Not modified.
        conf_thres: candidate threshold on objectness and on obj * cls.
        iou_thres: IoU above which a lower-scoring box is suppressed (and merged).
        multi_label: allow several classes per box.
        classes: keep only these class indices (None or empty: all).
        agnostic: suppress across classes.
        max_det: most boxes kept per image.
        time_limit: seconds; once exceeded a warning is logged and the remaining images get no boxes.
        merge: apply the merge step (the reference always did; off for plain NMS).
        max_nms: most candidates per image passed to NMS.

    Returns:
        One (n, 6) tensor per image, rows ``(x1, y1, x2, y2, score, class)`` xyxy pixels, by descending
        score; an image without detections gets a (0, 6) tensor.
    """
    nc = prediction.shape[2] - 5
    multi_label &= nc > 1
    output = [prediction.new_zeros((0, 6)) for _ in range(prediction.shape[0])]
    t_start = time.time()
    for xi, x in enumerate(prediction):
        x = x[x[:, 4] > conf_thres]  # boolean indexing copies: the input stays untouched
        x = x[((x[:, 2:4] > MIN_WH) & (x[:, 2:4] < MAX_WH)).all(1)]
        if not x.shape[0]:
            continue
        x[:, 5:] *= x[:, 4:5]
        box = xywh2xyxy(x[:, :4])
        if multi_label:
            i, j = (x[:, 5:] > conf_thres).nonzero().T
            x = torch.cat((box[i], x[i, j + 5, None], j[:, None].to(x.dtype)), 1)
        else:
            conf, j = x[:, 5:].max(1)
            x = torch.cat((box, conf[:, None], j[:, None].to(x.dtype)), 1)
        if classes:
            x = x[(j[:, None] == torch.tensor(classes, device=j.device)).any(1)]
        x = x[torch.isfinite(x).all(1)]
        n = x.shape[0]
        if not n:
            continue
        if n > max_nms:
            x = x[x[:, 4].topk(max_nms)[1]]

        c = x[:, 5:6] * (0 if agnostic else MAX_WH)
        boxes, scores = x[:, :4] + c, x[:, 4]
        i = _nms_offset_boxes(boxes, scores, None if agnostic else x[:, 5], iou_thres)[:max_det]
        if merge and 1 < n < 3000:
            weights = (box_iou(boxes[i], boxes) > iou_thres) * scores[None]  # (kept, candidates)
            # .contiguous(): a strided operand makes the matmul ~10x slower on CPU
            x[i, :4] = torch.mm(weights, x[:, :4].contiguous()).float() / weights.sum(1, keepdim=True)
        output[xi] = x[i]
        if time.time() - t_start > time_limit:
            LOGGER.warning(
                "non_max_suppression: time limit %.1fs exceeded after %d of %d images; the rest get no boxes",
                time_limit,
                xi + 1,
                prediction.shape[0],
            )
            break
    return output

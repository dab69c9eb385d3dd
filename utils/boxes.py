"""Box format conversions, clipping, rescaling and IoU variants.

Formats: ``xyxy`` is (x1, y1, x2, y2) corners; ``xywh`` is (centre x, centre y, width, height); ``xywhn`` is
xywh normalised to 0..1 by the image's width and height. Units are whatever the caller passes (pixels, normalised
or grid units) unless the name or the docstring says otherwise.

The small epsilons (``1e-16``) and the order of the arithmetic follow the reference trainer so that losses
computed with these functions equal its values on identical inputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

Array = torch.Tensor | np.ndarray


def _copy(x: Array) -> Array:
    return x.clone() if isinstance(x, torch.Tensor) else np.copy(x)


def xyxy2xywh(x: Array) -> Array:
    """Convert boxes (n, 4) from xyxy corners to xywh (centre, size). Returns a copy; extra columns are kept."""
    y = _copy(x)
    y[:, 0] = (x[:, 0] + x[:, 2]) / 2
    y[:, 1] = (x[:, 1] + x[:, 3]) / 2
    y[:, 2] = x[:, 2] - x[:, 0]
    y[:, 3] = x[:, 3] - x[:, 1]
    return y


def xywh2xyxy(x: Array) -> Array:
    """Convert boxes (n, 4) from xywh (centre, size) to xyxy corners. Returns a copy; extra columns are kept."""
    y = _copy(x)
    y[:, 0] = x[:, 0] - x[:, 2] / 2
    y[:, 1] = x[:, 1] - x[:, 3] / 2
    y[:, 2] = x[:, 0] + x[:, 2] / 2
    y[:, 3] = x[:, 1] + x[:, 3] / 2
    return y


def xywhn2xyxy(x: Array, w: float | Array, h: float | Array, padw: float | Array = 0, padh: float | Array = 0) -> Array:
    """Convert boxes (n, 4) from xywh normalised to 0..1 to xyxy pixels of a ``w`` x ``h`` image placed at
    ``(padw, padh)``: ``x1 = w * (x - bw / 2) + padw`` and so on. ``w``, ``h``, ``padw``, ``padh`` are numbers or
    (n,) arrays (one per box, as in a mosaic). Returns a copy; extra columns are kept."""
    y = _copy(x)
    y[:, 0] = w * (x[:, 0] - x[:, 2] / 2) + padw
    y[:, 1] = h * (x[:, 1] - x[:, 3] / 2) + padh
    y[:, 2] = w * (x[:, 0] + x[:, 2] / 2) + padw
    y[:, 3] = h * (x[:, 1] + x[:, 3] / 2) + padh
    return y


def xyxy2xywhn(x: Array, w: float, h: float) -> Array:
    """Convert boxes (n, 4) from xyxy pixels of a ``w`` x ``h`` image to xywh normalised to 0..1 (centre and size
    divided by the image's width and height; no clipping). Returns a copy; extra columns are kept."""
    y = xyxy2xywh(x)
    y[:, 0] = y[:, 0] / w
    y[:, 1] = y[:, 1] / h
    y[:, 2] = y[:, 2] / w
    y[:, 3] = y[:, 3] / h
    return y


def clip_coords(boxes: Array, img_shape: Sequence[int]) -> Array:
    """Clamp xyxy boxes (n, 4) in place to an image of shape (h, w, ...): x to [0, w], y to [0, h].

    Returns ``boxes`` for convenience.
    """
    h, w = img_shape[0], img_shape[1]
    if isinstance(boxes, torch.Tensor):
        boxes[:, 0].clamp_(0, w)
        boxes[:, 1].clamp_(0, h)
        boxes[:, 2].clamp_(0, w)
        boxes[:, 3].clamp_(0, h)
    else:
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    return boxes


def scale_coords(
    img1_shape: Sequence[int],
    coords: Array,
    img0_shape: Sequence[int],
    ratio_pad: tuple | None = None,
) -> Array:
    """Map xyxy pixel boxes (n, 4) from a letterboxed image back to the original image, in place.

    Args:
        img1_shape: (h, w) of the letterboxed (network input) image the boxes are in.
        coords: (n, 4) xyxy pixel boxes in ``img1_shape`` coordinates; modified in place and returned.
        img0_shape: (h0, w0[, c]) of the original image.
        ratio_pad: optional ``((ratio_h, ratio_w), (pad_w, pad_h))`` as recorded by the loader; when None the
            letterbox gain ``min(h / h0, w / w0)`` and a centred padding are assumed.
    """
    if ratio_pad is None:
        gain = min(img1_shape[0] / img0_shape[0], img1_shape[1] / img0_shape[1])
        pad = (img1_shape[1] - img0_shape[1] * gain) / 2, (img1_shape[0] - img0_shape[0] * gain) / 2
    else:
        gain = ratio_pad[0][0]
        pad = ratio_pad[1]
    coords[:, [0, 2]] -= pad[0]
    coords[:, [1, 3]] -= pad[1]
    coords[:, :4] /= gain
    clip_coords(coords, img0_shape)
    return coords


def bbox_iou(
    box1: torch.Tensor,
    box2: torch.Tensor,
    x1y1x2y2: bool = True,
    GIoU: bool = False,
    DIoU: bool = False,
    CIoU: bool = False,
) -> torch.Tensor:
    """Elementwise IoU (or GIoU, DIoU, CIoU) between ``box1`` and the rows of ``box2``.

    Args:
        box1: (4,) one box, or (4, n) boxes already transposed (one coordinate per row).
        box2: (n, 4) boxes; transposed inside (the reference convention).
        x1y1x2y2: True when both are xyxy corners; False for xywh (centre, size).
        GIoU, DIoU, CIoU: return the generalised, distance or complete IoU instead of plain IoU
            (checked in that order; the first one set wins).

    Returns:
        (n,) IoU values.
    """
    box2 = box2.t()
    if x1y1x2y2:
        b1_x1, b1_y1, b1_x2, b1_y2 = box1[0], box1[1], box1[2], box1[3]
        b2_x1, b2_y1, b2_x2, b2_y2 = box2[0], box2[1], box2[2], box2[3]
    else:
        b1_x1, b1_x2 = box1[0] - box1[2] / 2, box1[0] + box1[2] / 2
        b1_y1, b1_y2 = box1[1] - box1[3] / 2, box1[1] + box1[3] / 2
        b2_x1, b2_x2 = box2[0] - box2[2] / 2, box2[0] + box2[2] / 2
        b2_y1, b2_y2 = box2[1] - box2[3] / 2, box2[1] + box2[3] / 2

    inter = (torch.min(b1_x2, b2_x2) - torch.max(b1_x1, b2_x1)).clamp(0) * (
        torch.min(b1_y2, b2_y2) - torch.max(b1_y1, b2_y1)
    ).clamp(0)
    w1, h1 = b1_x2 - b1_x1, b1_y2 - b1_y1
    w2, h2 = b2_x2 - b2_x1, b2_y2 - b2_y1
    union = (w1 * h1 + 1e-16) + w2 * h2 - inter
    iou = inter / union
    if not (GIoU or DIoU or CIoU):
        return iou

    cw = torch.max(b1_x2, b2_x2) - torch.min(b1_x1, b2_x1)  # enclosing box width
    ch = torch.max(b1_y2, b2_y2) - torch.min(b1_y1, b2_y1)
    if GIoU:
        c_area = cw * ch + 1e-16
        return iou - (c_area - union) / c_area
    c2 = cw**2 + ch**2 + 1e-16  # squared diagonal of the enclosing box
    rho2 = ((b2_x1 + b2_x2) - (b1_x1 + b1_x2)) ** 2 / 4 + ((b2_y1 + b2_y2) - (b1_y1 + b1_y2)) ** 2 / 4
    if DIoU:
        return iou - rho2 / c2
    v = (4 / math.pi**2) * torch.pow(torch.atan(w2 / h2) - torch.atan(w1 / h1), 2)
    with torch.no_grad():  # alpha is a weight, not a path for gradients (as in the CIoU paper)
        alpha = v / (1 - iou + v)
    return iou - (rho2 / c2 + v * alpha)


def box_iou(box1: torch.Tensor, box2: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of xyxy boxes: box1 (N, 4), box2 (M, 4) -> (N, M). No epsilon (0/0 gives NaN)."""
    area1 = (box1[:, 2] - box1[:, 0]) * (box1[:, 3] - box1[:, 1])
    area2 = (box2[:, 2] - box2[:, 0]) * (box2[:, 3] - box2[:, 1])
    inter = (torch.min(box1[:, None, 2:], box2[:, 2:]) - torch.max(box1[:, None, :2], box2[:, :2])).clamp(0).prod(2)
    return inter / (area1[:, None] + area2 - inter)


def wh_iou(wh1: torch.Tensor, wh2: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of boxes given only by size, as if sharing one centre: wh1 (N, 2), wh2 (M, 2) -> (N, M)."""
    wh1 = wh1[:, None]
    wh2 = wh2[None]
    inter = torch.min(wh1, wh2).prod(2)
    return inter / (wh1.prod(2) + wh2.prod(2) - inter)

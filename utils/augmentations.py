"""Image augmentations for detection: letterbox, HSV jitter, random affine and the 4-image mosaic.

Images are HWC BGR ``uint8`` ndarrays as ``cv2.imread`` returns them. Every random choice comes from an explicit
``np.random.Generator`` passed by the caller, so each augmentation is a pure function of its inputs and the
generator's state (the dataset seeds one generator per item and epoch). The left-right flip is the dataset's: it
mirrors the label x and lays the pixels out mirrored (``utils.images.bgr_to_chw_rgb``), with no extra copy.

Label formats are in the names: ``targets`` / ``labels4`` are ``(n, 5)`` rows ``class, x1, y1, x2, y2`` in
pixels (xyxy); ``labels_xywh`` are ``(n, 5)`` rows ``class, x, y, w, h`` normalised to 0..1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from utils.boxes import xywhn2xyxy

PAD_VALUE = 114  # grey used for padding and for the mosaic canvas, as in the reference trainer
# Box-keep rule after mosaic and affine (the reference's): a box the crop or warp cut down to a sliver is dropped.
KEEP_MIN_WH = 4  # pixels: width and height must exceed this
KEEP_MIN_AREA_RATIO = 0.2  # kept area / (area before * scale) must exceed this
KEEP_MAX_AR = 10  # max(w / h, h / w) must stay below this
_EYE2 = np.eye(2)
_LEVELS = np.arange(256, dtype=np.float64)  # the 8-bit values, for lookup tables


def letterbox(
    img: np.ndarray,
    new_shape: int | Sequence[int] = (416, 416),
    color: tuple[int, int, int] = (PAD_VALUE, PAD_VALUE, PAD_VALUE),
    auto: bool = True,
    scaleFill: bool = False,  # the reference's argument name, kept for its users
    scaleup: bool = True,
) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """Resize ``img`` keeping its aspect ratio and pad it to ``new_shape``.

    Args:
        img: (h, w, c) uint8 image.
        new_shape: target ``(h, w)`` or one int for a square.
        color: padding colour.
        auto: pad only up to the next multiple of 32 (minimum rectangle) instead of to ``new_shape``.
        scaleFill: stretch to exactly ``new_shape`` without padding (ratios then differ for w and h).
        scaleup: allow enlarging; when False the ratio is capped at 1 (small images are only padded).

    Returns:
        ``(img, (rw, rh), (dw, dh))``: the new image (always a new array), the width and height ratios applied
        to the input, and the half paddings in pixels as floats (left pad = ``round(dw - 0.1)``, right pad =
        ``round(dw + 0.1)``, likewise top/bottom with ``dh``). A point ``(x, y)`` of the input maps to
        ``(x * rw + dw, y * rh + dh)`` up to the sub-pixel rounding of the pads.
    """
    shape = img.shape[:2]  # h, w
    if isinstance(new_shape, int):
        new_shape = (new_shape, new_shape)
    r = min(new_shape[0] / shape[0], new_shape[1] / shape[1])
    if not scaleup:
        r = min(r, 1.0)
    ratio = (r, r)
    new_unpad = (int(round(shape[1] * r)), int(round(shape[0] * r)))  # w, h
    dw, dh = new_shape[1] - new_unpad[0], new_shape[0] - new_unpad[1]
    if auto:
        dw, dh = dw % 32, dh % 32
    elif scaleFill:
        dw, dh = 0, 0
        new_unpad = (new_shape[1], new_shape[0])
        ratio = (new_shape[1] / shape[1], new_shape[0] / shape[0])
    dw, dh = dw / 2, dh / 2

    if (shape[1], shape[0]) != new_unpad:
        img = cv2.resize(img, new_unpad, interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=color)
    return img, ratio, (dw, dh)


def hsv_gains(hgain: float, sgain: float, vgain: float, rng: np.random.Generator) -> np.ndarray:
    """Draw the (3,) hue, saturation and value gains of :func:`apply_hsv`, each uniform in ``1 +- gain``."""
    return rng.uniform(-1, 1, 3) * (hgain, sgain, vgain) + 1


def apply_hsv(img: np.ndarray, gains: np.ndarray, dst: np.ndarray | None = None) -> np.ndarray:
    """Multiply the hue (modulo 180, OpenCV's 8-bit hue range), saturation and value (clipped to 255) of a BGR
    uint8 image by ``gains`` (3,).

    The result goes to ``dst`` when given (it may be ``img`` itself: every step is per pixel, so in place is exact
    and saves two image-sized buffers), else to a new image. Gains of exactly 1 leave the pixels unchanged (the
    lossy HSV round trip is skipped).
    """
    if dst is None:
        dst = np.empty_like(img)
    if np.all(gains == 1):
        if dst is not img:
            np.copyto(dst, img)
        return dst
    lut = _LEVELS[:, None] * gains  # (256, 3): x * gain per channel, as the reference's three tables
    np.remainder(lut[:, 0], 180, out=lut[:, 0])
    np.clip(lut[:, 1:], 0, 255, out=lut[:, 1:])
    cv2.cvtColor(img, cv2.COLOR_BGR2HSV, dst=dst)
    cv2.LUT(dst, lut.astype(np.uint8).reshape(1, 256, 3), dst=dst)
    return cv2.cvtColor(dst, cv2.COLOR_HSV2BGR, dst=dst)


def _translate(img: np.ndarray, tx: int, ty: int, height: int, width: int) -> np.ndarray:
    """Shift ``img`` by integer pixels into a new ``(height, width)`` canvas filled with ``PAD_VALUE``.

    Equal to ``cv2.warpAffine`` with a pure integer translation matrix and a constant border, but a plain copy.
    """
    h, w = img.shape[:2]
    out = np.full((height, width, *img.shape[2:]), PAD_VALUE, dtype=img.dtype)
    x0, x1 = max(tx, 0), min(w + tx, width)
    y0, y1 = max(ty, 0), min(h + ty, height)
    if x1 > x0 and y1 > y0:
        out[y0:y1, x0:x1] = img[y0 - ty : y1 - ty, x0 - tx : x1 - tx]
    return out


def affine_matrix(
    img_hw: Sequence[int],
    degrees: float,
    translate: float,
    scale: float,
    shear: float,
    border: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, float]:
    """Draw the random affine transform of :func:`random_affine` for an image of size ``img_hw`` = (h, w).

    Returns ``(M, s)``: the 3x3 matrix mapping input pixels to output pixels and the random scale ``s``.
    ``M = S @ T @ R`` (rotation+scale about the image centre, then translation, then shear), the reference's order.
    """
    h, w = img_hw[0], img_hw[1]
    a = rng.uniform(-degrees, degrees)
    s = rng.uniform(1 - scale, 1 + scale)
    R = np.eye(3)
    R[:2] = cv2.getRotationMatrix2D(center=(w / 2, h / 2), angle=a, scale=s)
    T = np.eye(3)
    T[0, 2] = rng.uniform(-translate, translate) * w + border
    T[1, 2] = rng.uniform(-translate, translate) * h + border
    S = np.eye(3)
    S[0, 1] = math.tan(math.radians(rng.uniform(-shear, shear)))
    S[1, 0] = math.tan(math.radians(rng.uniform(-shear, shear)))
    return S @ T @ R, s


def _is_integer_translation(M: np.ndarray) -> bool:
    """True when the 3x3 affine ``M`` only shifts by whole pixels (no rotation, scale or shear)."""
    t = M[:2, 2]
    return bool((M[:2, :2] == _EYE2).all() and (t == np.round(t)).all())


def warp_image(img: np.ndarray, M: np.ndarray, height: int, width: int) -> np.ndarray:
    """Apply the 3x3 affine ``M`` to ``img`` into a new ``(height, width)`` image, grey (114) outside.

    A pure integer translation (the default hyperparameters: no rotation, scale or shear) is done by copying
    slices, which gives the same pixels as ``cv2.warpAffine`` (bilinear weights are exactly 0/1) much faster.
    """
    if _is_integer_translation(M):
        return _translate(img, int(M[0, 2]), int(M[1, 2]), height, width)
    return cv2.warpAffine(
        img, M[:2], dsize=(width, height), flags=cv2.INTER_LINEAR, borderValue=(PAD_VALUE, PAD_VALUE, PAD_VALUE)
    )


def transform_boxes(targets: np.ndarray, M: np.ndarray, s: float, height: int, width: int) -> np.ndarray:
    """Map xyxy pixel boxes through the affine ``M`` and drop the ones the transform made degenerate.

    Args:
        targets: (n, 5) ``class, x1, y1, x2, y2`` in input pixels.
        M: 3x3 affine matrix; s: its random scale factor.
        height, width: output image size; boxes are clipped to it.

    Returns:
        (m, 5) float32 rows for the kept boxes: the min/max of the 4 transformed corners, clipped, kept by the
        reference trainer's rule (``KEEP_MIN_WH``, ``KEEP_MIN_AREA_RATIO``, ``KEEP_MAX_AR``): w > 4 and h > 4
        pixels, area / (original area * s) > 0.2 and aspect ratio max(w/h, h/w) < 10.
    """
    n = len(targets)
    if n == 0:
        return np.zeros((0, 5), dtype=np.float32)
    corners = np.ones((n * 4, 3))
    corners[:, :2] = targets[:, [1, 2, 3, 4, 1, 4, 3, 2]].reshape(n * 4, 2)  # x1y1, x2y2, x1y2, x2y1
    corners = (corners @ M.T)[:, :2].reshape(n, 4, 2)
    xy = np.concatenate((corners.min(1), corners.max(1)), 1)  # x1 y1 x2 y2
    return _clip_and_keep(targets, xy, s, height, width)


def shift_boxes(targets: np.ndarray, tx: int, ty: int, height: int, width: int) -> np.ndarray:
    """:func:`transform_boxes` for a pure whole-pixel shift ``M = [[1, 0, tx], [0, 1, ty], [0, 0, 1]]`` (scale 1),
    bit for bit, without the corner products (each product has exact zero terms, so it is ``x + tx``)."""
    if len(targets) == 0:
        return np.zeros((0, 5), dtype=np.float32)
    t = targets[:, 1:5].astype(np.float64)
    xy = np.empty_like(t)
    np.minimum(t[:, :2], t[:, 2:], out=xy[:, :2])
    np.maximum(t[:, :2], t[:, 2:], out=xy[:, 2:])
    xy += (tx, ty, tx, ty)
    return _clip_and_keep(targets, xy, 1.0, height, width)


def _clip_and_keep(targets: np.ndarray, xy: np.ndarray, s: float, height: int, width: int) -> np.ndarray:
    """Clip the transformed float64 boxes ``xy`` (n, 4) to the image and keep those that stay boxes (see
    :func:`transform_boxes`); the kept rows as (m, 5) float32 ``class, x1, y1, x2, y2``."""
    np.clip(xy, 0, (width, height, width, height), out=xy)
    wh = xy[:, 2:] - xy[:, :2]
    w, h = wh[:, 0], wh[:, 1]
    d0 = targets[:, 3:5] - targets[:, 1:3]
    area0 = d0[:, 0] * d0[:, 1]
    ar = np.maximum(w / (h + 1e-16), h / (w + 1e-16))
    keep = (w > KEEP_MIN_WH) & (h > KEEP_MIN_WH) & (w * h / (area0 * s + 1e-16) > KEEP_MIN_AREA_RATIO)
    keep &= ar < KEEP_MAX_AR
    out = np.empty((int(keep.sum()), 5), dtype=np.float32)
    out[:, 0] = targets[keep, 0]
    out[:, 1:] = xy[keep]
    return out


def random_affine(
    img: np.ndarray,
    targets: np.ndarray,
    degrees: float = 10,
    translate: float = 0.1,
    scale: float = 0.1,
    shear: float = 10,
    border: int = 0,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Random rotation, scale, translation and shear of an image and its boxes.

    Args:
        img: (h, w, c) uint8 image.
        targets: (n, 5) ``class, x1, y1, x2, y2`` pixels of ``img``.
        degrees: rotation range +-degrees; translate: fraction of the image size; scale: gain range 1 +- scale;
        shear: +-degrees for x and y.
        border: pixels added on each side of the output (negative crops: the mosaic uses ``-size // 2`` to cut
            its 2s x 2s canvas down to s x s).
        rng: the random generator (required).

    Returns:
        ``(img, targets)``: the new (h + 2 border, w + 2 border, c) image and the kept boxes (m, 5) float32 xyxy.
    """
    if rng is None:
        raise ValueError("random_affine needs an explicit rng (np.random.Generator)")
    height, width = img.shape[0] + 2 * border, img.shape[1] + 2 * border
    M, s = affine_matrix(img.shape[:2], degrees, translate, scale, shear, border, rng)
    if border != 0 or not np.array_equal(M, np.eye(3)):
        img = warp_image(img, M, height, width)
    else:
        img = img.copy()
    return img, transform_boxes(np.asarray(targets, dtype=np.float32).reshape(-1, 5), M, s, height, width)


def _mosaic_layout(
    hw: Sequence[tuple[int, int]], size: int, rng: np.random.Generator
) -> list[tuple[int, int, int, int, int, int]]:
    """Draw the mosaic centre and place 4 images of sizes ``hw`` around it on the 2s x 2s canvas.

    Returns one ``(x1a, y1a, cx1, cy1, cx2, cy2)`` per image: where its top-left corner lands on the canvas
    (may be negative) and the canvas rectangle it covers after clipping to the canvas.
    """
    s = size
    xc, yc = (int(rng.uniform(s * 0.5, s * 1.5)) for _ in range(2))
    out = []
    for k, (h, w) in enumerate(hw):
        x1a = xc - w if k in (0, 2) else xc
        y1a = yc - h if k in (0, 1) else yc
        out.append((x1a, y1a, max(x1a, 0), max(y1a, 0), min(x1a + w, 2 * s), min(y1a + h, 2 * s)))
    return out


def _mosaic_labels(
    labels_xywh: Sequence[np.ndarray], hw: Sequence[tuple[int, int]], layout: Sequence[tuple], size: int
) -> np.ndarray:
    """The 4 images' normalised xywh labels as (n, 5) float32 ``class, x1, y1, x2, y2`` canvas pixels in [0, 2s]."""
    lab = [np.asarray(x, dtype=np.float32).reshape(-1, 5) for x in labels_xywh]
    x = np.concatenate(lab, 0)
    # per row: the image's (w, h) and the canvas position of its top-left corner, in float32 like the labels
    geo = np.repeat(np.array([(w, h, x1a, y1a) for (h, w), (x1a, y1a, *_) in zip(hw, layout)], np.float32),
                    [len(v) for v in lab], axis=0)
    labels4 = x.copy()
    labels4[:, 1:] = xywhn2xyxy(x[:, 1:], geo[:, 0], geo[:, 1], geo[:, 2], geo[:, 3])
    np.clip(labels4[:, 1:], 0, 2 * size, out=labels4[:, 1:])
    return labels4


def _paste(
    dst: np.ndarray, imgs: Sequence[np.ndarray], layout: Sequence[tuple], tx: int = 0, ty: int = 0
) -> np.ndarray:
    """Copy each image's canvas rectangle into ``dst``, shifted by ``(tx, ty)`` and clipped to ``dst``."""
    height, width = dst.shape[:2]
    for img, (x1a, y1a, cx1, cy1, cx2, cy2) in zip(imgs, layout):
        x1, y1 = max(cx1 + tx, 0), max(cy1 + ty, 0)
        x2, y2 = min(cx2 + tx, width), min(cy2 + ty, height)
        if x2 > x1 and y2 > y1:
            dst[y1:y2, x1:x2] = img[y1 - ty - y1a : y2 - ty - y1a, x1 - tx - x1a : x2 - tx - x1a]
    return dst


def mosaic(
    imgs: Sequence[np.ndarray], labels_xywh: Sequence[np.ndarray], size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Tile 4 images around a random centre of a 2size x 2size grey canvas.

    Args:
        imgs: 4 (h, w, 3) uint8 images (already resized so their long side is ``size``), placed top-left,
            top-right, bottom-left, bottom-right of the centre; what falls outside the canvas is cropped.
        labels_xywh: 4 arrays (n_i, 5) ``class, x, y, w, h`` normalised to their image.
        size: the output size s of the training image (the canvas is 2s x 2s).
        rng: draws the centre ``(xc, yc)``, each uniform in [s/2, 3s/2).

    Returns:
        ``(img4, labels4)``: the (2s, 2s, 3) canvas and (n, 5) float32 ``class, x1, y1, x2, y2`` canvas pixels,
        clipped to [0, 2s]. Callers then apply :func:`random_affine` with ``border=-s // 2``
        (:func:`mosaic_affine` does both).
    """
    hw = [img.shape[:2] for img in imgs]
    layout = _mosaic_layout(hw, size, rng)
    img4 = _paste(np.full((2 * size, 2 * size, imgs[0].shape[2]), PAD_VALUE, dtype=np.uint8), imgs, layout)
    return img4, _mosaic_labels(labels_xywh, hw, layout, size)


def mosaic_affine(
    imgs: Sequence[np.ndarray],
    labels_xywh: Sequence[np.ndarray],
    size: int,
    degrees: float,
    translate: float,
    scale: float,
    shear: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """A mosaic training image: ``random_affine(*mosaic(...), border=-size // 2)`` with the same draws and output.

    When the drawn transform is a pure integer translation (always so with the default hyperparameters: no
    rotation, scale or shear, no random translation), the images are copied straight into the s x s output
    instead of into a 2s x 2s canvas that is then cropped: a quarter of the pixels written, same result.

    Returns:
        ``(img, targets)``: the (s, s, 3) uint8 image and the kept boxes (m, 5) float32 ``class, x1, y1, x2, y2``
        pixels of it.
    """
    s = size
    hw = [img.shape[:2] for img in imgs]
    layout = _mosaic_layout(hw, s, rng)
    labels4 = _mosaic_labels(labels_xywh, hw, layout, s)
    c = imgs[0].shape[2]
    if degrees == translate == scale == shear == 0:  # the default hyp: only the shift that cuts out the centre
        rng.random(6)  # affine_matrix's six draws (each scaled by 0), so later draws (HSV, flip) stay the same
        b = -s // 2
        img = _paste(np.full((s, s, c), PAD_VALUE, dtype=np.uint8), imgs, layout, b, b)
        return img, shift_boxes(labels4, b, b, s, s)
    M, sc = affine_matrix((2 * s, 2 * s), degrees, translate, scale, shear, -s // 2, rng)
    if _is_integer_translation(M):
        img = _paste(np.full((s, s, c), PAD_VALUE, dtype=np.uint8), imgs, layout, int(M[0, 2]), int(M[1, 2]))
    else:
        img = warp_image(_paste(np.full((2 * s, 2 * s, c), PAD_VALUE, dtype=np.uint8), imgs, layout), M, s, s)
    return img, transform_boxes(labels4, M, sc, s, s)

"""Images: read a file's size and EXIF orientation, decode and resize it (``load_image``), and lay it out for torch."""

from __future__ import annotations

import math

import cv2
import numpy as np
from PIL import Image

_EXIF_ORIENTATION = 0x0112
_REDUCED_FLAGS = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


def read_image_size(path: str) -> tuple[int, int, int] | None:
    """``(w, h, orientation)`` of an image as ``cv2.imread`` will return it (after EXIF rotation), or None.

    The size and the EXIF orientation come from the file header (Pillow, fast); the image is then decoded at
    1/8 scale with OpenCV to make sure the loader can read it. ``orientation`` is the EXIF tag (1 = upright), or
    0 when unknown. None means the file cannot be decoded.
    """
    try:
        with Image.open(path) as im:
            w, h = im.size
            try:
                orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1))
            except (OSError, ValueError, SyntaxError, TypeError):
                orientation = 0
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        img = cv2.imread(path, cv2.IMREAD_COLOR)  # a format Pillow does not read: let OpenCV decide
        return None if img is None else (img.shape[1], img.shape[0], 0)
    if orientation in (5, 6, 7, 8):  # rotated by 90 degrees: OpenCV returns the image transposed
        w, h = h, w
    if cv2.imread(path, cv2.IMREAD_REDUCED_GRAYSCALE_8) is None:
        return None
    return w, h, orientation


def load_image(
    path: str,
    img_size: int,
    augment: bool = False,
    shape_hw0: tuple[int, int] | None = None,
    orientation: int = 0,
    reduced: bool = False,
) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """Read an image as 3-channel BGR uint8 and resize it so its long side is ``img_size``.

    Grayscale, 16-bit (scaled to 8 bits) and 4-channel files come back as 3-channel BGR; EXIF rotation is applied.
    The file is decoded at full resolution with ``cv2.imread`` and resized with ``cv2.resize``: INTER_AREA when
    shrinking without augmentation, INTER_LINEAR otherwise, as the reference trainer does.

    ``reduced`` (opt-in, ``--reduced-decode``): when the original size ``shape_hw0`` is known, the EXIF orientation
    is 1 (OpenCV's reduced modes ignore EXIF rotation) and the image is a JPEG shrunk by 2x or more, it is decoded
    directly at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling) and only the rest is resized. The output size is the
    same as decoding in full but the pixels differ (about 20% faster at 640 -> 320; the README's parity table gives
    its measured mAP cost).

    Returns:
        ``(img, (h0, w0), (h, w))``: the resized (h, w, 3) image and the original and resized sizes.

    Raises:
        ValueError: the file cannot be decoded (naming it).
    """
    img = None
    if reduced and shape_hw0 is not None and orientation == 1 and path.lower().endswith((".jpg", ".jpeg")):
        h0, w0 = shape_hw0
        r = img_size / max(h0, w0)
        f = next((f for f in (8, 4, 2) if r <= 1 / f), 1)
        if f > 1:
            img = cv2.imread(path, _REDUCED_FLAGS[f])
            if img is not None and (
                abs(img.shape[0] - math.ceil(h0 / f)) > 1 or abs(img.shape[1] - math.ceil(w0 / f)) > 1
            ):
                img = None  # the file is not what the header scan recorded: decode in full
    if img is None:
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"{path}: cannot decode image (fix: replace or remove the file)")
        h0, w0 = img.shape[:2]
    r = img_size / max(h0, w0)
    if r != 1:
        size = (int(w0 * r), int(h0 * r))
        if (img.shape[1], img.shape[0]) != size:
            interp = cv2.INTER_AREA if r < 1 and not augment else cv2.INTER_LINEAR
            img = cv2.resize(img, size, interpolation=interp)
    return img, (h0, w0), img.shape[:2]


def resized_shapes(shapes_wh: np.ndarray, img_size: int) -> np.ndarray:
    """(n, 2) ``(h, w)`` that ``load_image`` gives images of original sizes ``shapes_wh`` (n, 2) ``(w, h)``."""
    wh = np.asarray(shapes_wh, dtype=np.int64).reshape(-1, 2)
    r = img_size / np.maximum(wh.max(1, keepdims=True), 1)
    return (wh[:, ::-1] * r).astype(np.int64)  # float64 products truncated, as load_image's int(w0 * r)


def bgr_to_chw_rgb(img: np.ndarray, flip: bool = False, inplace: bool = False) -> np.ndarray:
    """(h, w, 3) BGR uint8 -> new contiguous (3, h, w) RGB array, mirrored left-right when ``flip``.

    ``cv2.split`` into the reversed planes of the output is ~4x faster than copying a transposed numpy view.
    ``inplace``: ``img`` may be overwritten (the flip is then done in place, with no extra image-sized buffer).
    """
    if flip:
        img = cv2.flip(img, 1, dst=img) if inplace else cv2.flip(img, 1)
    h, w = img.shape[:2]
    out = np.empty((3, h, w), dtype=np.uint8)
    planes = cv2.split(img, [out[2], out[1], out[0]])
    if not np.shares_memory(planes[0], out):  # OpenCV allocated new planes after all
        out = np.stack(planes[::-1])
    return out


"""Augmentations: boxes move with the pixels, letterbox numbers, the crop fast path, HSV and flips."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from utils.augmentations import (
    PAD_VALUE,
    affine_matrix,
    apply_hsv,
    hsv_gains,
    letterbox,
    mosaic,
    mosaic_affine,
    random_affine,
    shift_boxes,
    transform_boxes,
    warp_image,
)
from utils.datasets import AUGMENT_KEYS, LoadImagesAndLabels
from utils.hyp import DEFAULT_HYP


def _canvas(h: int, w: int, boxes: list[tuple[int, int, int, int]], value: int = 255) -> np.ndarray:
    """Black (h, w, 3) image with filled rectangles (x1, y1, x2, y2 pixel edges, exclusive x2/y2)."""
    img = np.zeros((h, w, 3), np.uint8)
    for x1, y1, x2, y2 in boxes:
        img[y1:y2, x1:x2] = value
    return img


def _found_box(img: np.ndarray, lo: int = 128) -> np.ndarray:
    """xyxy pixel-edge box of the pixels brighter than ``lo`` in every channel (the drawn rectangle)."""
    ys, xs = np.nonzero((img > lo).all(2))
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)


@pytest.mark.parametrize(
    ("hw", "kwargs", "out_hw", "ratio", "pad"),
    [
        ((480, 640), {"new_shape": 416, "auto": False}, (416, 416), (0.65, 0.65), (0.0, 52.0)),
        ((480, 640), {"new_shape": 416, "auto": True}, (320, 416), (0.65, 0.65), (0.0, 4.0)),
        ((500, 333), {"new_shape": 416, "auto": False}, (416, 416), (0.832, 0.832), (69.5, 0.0)),
        ((500, 333), {"new_shape": 416, "auto": True}, (416, 288), (0.832, 0.832), (5.5, 0.0)),
        ((100, 200), {"new_shape": 416, "auto": False, "scaleup": False}, (416, 416), (1.0, 1.0), (108.0, 158.0)),
        ((100, 200), {"new_shape": (320, 416), "auto": False}, (320, 416), (2.08, 2.08), (0.0, 56.0)),
        ((480, 640), {"new_shape": 416, "auto": False, "scaleFill": True}, (416, 416), (0.65, 416 / 480), (0, 0)),
    ],
)
def test_letterbox_ratio_and_padding(hw, kwargs, out_hw, ratio, pad):
    img = np.zeros((*hw, 3), np.uint8)
    out, r, p = letterbox(img, **kwargs)
    assert out.shape == (*out_hw, 3)
    assert r == pytest.approx(ratio)
    assert p == pytest.approx(pad)


def test_letterbox_pads_with_grey_and_keeps_the_box():
    img = _canvas(480, 640, [(100, 50, 300, 250)])
    out, (rw, rh), (dw, dh) = letterbox(img, 416, auto=False)
    assert out[0, 0].tolist() == [PAD_VALUE] * 3  # top padding
    expected = np.array([100 * rw + dw, 50 * rh + dh, 300 * rw + dw, 250 * rh + dh])
    np.testing.assert_allclose(_found_box(out), expected, atol=1.0)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    "params",
    [
        {"degrees": 0, "translate": 0.1, "scale": 0.3, "shear": 0},
        {"degrees": 30, "translate": 0.1, "scale": 0.2, "shear": 0},
        {"degrees": 10, "translate": 0.0, "scale": 0.1, "shear": 8},
    ],
)
def test_random_affine_boxes_follow_pixels(seed, params):
    box = (60, 40, 140, 110)
    img = _canvas(160, 200, [box])
    targets = np.array([[3, *box]], np.float32)
    out, t = random_affine(img, targets, **params, rng=np.random.default_rng(seed))
    assert out.shape == img.shape and out.dtype == np.uint8
    assert t.shape == (1, 5) and t.dtype == np.float32 and t[0, 0] == 3
    # The warped box is the min/max of the warped corners: it bounds the warped rectangle's pixels.
    np.testing.assert_allclose(_found_box(out), t[0, 1:], atol=1.5)


def test_random_affine_border_crops_and_drops_boxes_outside():
    img = _canvas(200, 200, [(10, 10, 40, 40), (80, 80, 140, 120)])
    targets = np.array([[0, 10, 10, 40, 40], [1, 80, 80, 140, 120]], np.float32)
    out, t = random_affine(img, targets, 0, 0, 0, 0, border=-50, rng=np.random.default_rng(0))
    assert out.shape == (100, 100, 3)
    assert t[:, 0].tolist() == [1.0]  # the first box is outside the crop and is dropped
    np.testing.assert_allclose(t[0, 1:], [30, 30, 90, 70])
    np.testing.assert_allclose(_found_box(out), t[0, 1:])


def test_random_affine_drops_degenerate_boxes():
    img = _canvas(100, 100, [])
    targets = np.array([[0, 10, 10, 11, 50], [1, 10, 10, 60, 60]], np.float32)  # 1 px wide, then a fine one
    _, t = random_affine(img, targets, 0, 0, 0, 0, rng=np.random.default_rng(0))
    assert t[:, 0].tolist() == [1.0]


@pytest.mark.parametrize(("h", "w", "border"), [(640, 640, -160), (300, 200, 0), (100, 120, 7), (64, 64, -16)])
def test_translation_crop_equals_warp_affine(h, w, border):
    img = np.random.default_rng(1).integers(0, 255, (h, w, 3), dtype=np.uint8)
    M, _ = affine_matrix((h, w), 0, 0, 0, 0, border, np.random.default_rng(0))
    assert np.array_equal(M[:2, :2], np.eye(2))
    hh, ww = h + 2 * border, w + 2 * border
    fast = warp_image(img, M, hh, ww)
    ref = cv2.warpAffine(img, M[:2], (ww, hh), flags=cv2.INTER_LINEAR, borderValue=(PAD_VALUE,) * 3)
    assert np.array_equal(fast, ref)


def test_integer_translation_crop_equals_warp_affine_for_shifts():
    img = np.random.default_rng(2).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    for tx, ty in [(5, -3), (-20, 12), (0, 0), (100, 0), (-80, -60)]:
        M = np.array([[1.0, 0, tx], [0, 1.0, ty], [0, 0, 1]])
        ref = cv2.warpAffine(img, M[:2], (60, 40), flags=cv2.INTER_LINEAR, borderValue=(PAD_VALUE,) * 3)
        assert np.array_equal(warp_image(img, M, 40, 60), ref), (tx, ty)


def test_hsv_shape_dtype_and_identity():
    """The dataset's HSV jitter: ``apply_hsv(img, hsv_gains(...))`` into a new image."""
    img = np.random.default_rng(3).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    same = apply_hsv(img, hsv_gains(0, 0, 0, np.random.default_rng(0)))
    assert same is not img and np.array_equal(same, img)
    out = apply_hsv(img, hsv_gains(0.0138, 0.678, 0.36, np.random.default_rng(0)))
    assert out.shape == img.shape and out.dtype == np.uint8
    assert not np.array_equal(out, img)
    assert np.array_equal(out, apply_hsv(img, hsv_gains(0.0138, 0.678, 0.36, np.random.default_rng(0))))


def test_hsv_equals_per_channel_tables_and_works_in_place():
    """The single 3-channel table equals three per-channel tables on split planes (the reference's way), and
    writing into the input itself (dst=img, as the loader does) gives the same pixels as a new image."""
    img = np.random.default_rng(4).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    gains = hsv_gains(0.0138, 0.678, 0.36, np.random.default_rng(1))
    assert np.array_equal(gains, np.random.default_rng(1).uniform(-1, 1, 3) * (0.0138, 0.678, 0.36) + 1)
    x = np.arange(256)
    tables = [((x * gains[0]) % 180).astype(np.uint8), np.clip(x * gains[1], 0, 255).astype(np.uint8),
              np.clip(x * gains[2], 0, 255).astype(np.uint8)]
    h, s, v = cv2.split(cv2.cvtColor(img, cv2.COLOR_BGR2HSV))
    expected = cv2.cvtColor(cv2.merge([cv2.LUT(c, t) for c, t in zip((h, s, v), tables)]), cv2.COLOR_HSV2BGR)
    out = apply_hsv(img, gains)
    assert out is not img and np.array_equal(out, expected)
    assert np.array_equal(apply_hsv(img, hsv_gains(0.0138, 0.678, 0.36, np.random.default_rng(1))), expected)
    own = img.copy()
    assert apply_hsv(own, gains, dst=own) is own and np.array_equal(own, expected)
    same = img.copy()
    apply_hsv(same, np.ones(3), dst=same)
    assert np.array_equal(same, img)  # gains of 1: untouched, no lossy HSV round trip


def test_hsv_value_gain_darkens_or_brightens_grey():
    img = np.full((4, 4, 3), 100, np.uint8)  # grey: saturation 0, value 100
    rng = np.random.default_rng(0)
    gain = rng.uniform(-1, 1, 3)[2] * 0.5 + 1
    out = apply_hsv(img, hsv_gains(0, 0, 0.5, np.random.default_rng(0)))
    assert np.all(out == int(np.clip(100 * gain, 0, 255)))


def test_dataset_flip_moves_boxes_with_pixels(tmp_path):
    """The dataset's left-right flip (label x mirrored in the item, pixels mirrored by bgr_to_chw_rgb): with every
    other augmentation at zero, the box found in each item's pixels is where its label says, flipped or not, and the
    stored labels stay untouched."""
    h, w = 64, 128  # multiples of 32: the rect letterbox neither resizes nor pads
    images, labels_dir = tmp_path / "images" / "train", tmp_path / "labels" / "train"
    images.mkdir(parents=True)
    labels_dir.mkdir(parents=True)
    cv2.imwrite(str(images / "a.png"), _canvas(h, w, [(10, 20, 30, 50)]))
    (labels_dir / "a.txt").write_text(f"2 {20 / w} {35 / h} {20 / w} {30 / h}\n")
    hyp = {**DEFAULT_HYP, **dict.fromkeys(AUGMENT_KEYS, 0.0)}
    ds = LoadImagesAndLabels(images, img_size=w, augment=True, rect=True, hyp=hyp, nc=3, verbose=False)
    flipped = set()
    for epoch in range(8):
        ds.set_epoch(epoch)
        chw, targets, *_ = ds[0]
        out = np.ascontiguousarray(chw.numpy().transpose(1, 2, 0))
        oh, ow = out.shape[:2]
        x1, y1, x2, y2 = _found_box(out)
        np.testing.assert_allclose(targets[0, 2:].numpy(), [(x1 + x2) / 2 / ow, (y1 + y2) / 2 / oh, (x2 - x1) / ow,
                                                            (y2 - y1) / oh], rtol=1e-6)  # fmt: skip
        flipped.add(bool(x1 > ow / 2))
    assert flipped == {True, False}  # both sides drawn over the epochs
    assert ds.labels[0][0, 1] == pytest.approx(20 / w)  # the stored labels untouched


@pytest.mark.parametrize("seed", range(3))
def test_mosaic_places_images_and_labels(seed):
    s = 64
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    imgs, labels = [], []
    for k, (h, w) in enumerate([(64, 48), (40, 64), (64, 64), (32, 64)]):
        img = np.zeros((h, w, 3), np.uint8)
        x1, y1, x2, y2 = w // 4, h // 4, 3 * w // 4, 3 * h // 4
        img[y1:y2, x1:x2] = colours[k]
        imgs.append(img)
        labels.append(np.array([[k, (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h]], np.float32))
    rng = np.random.default_rng(seed)
    img4, labels4 = mosaic(imgs, labels, s, rng)
    assert img4.shape == (2 * s, 2 * s, 3) and labels4.shape == (4, 5)
    for out, lab in [(img4, labels4), random_affine(img4, labels4, 0, 0, 0, 0, border=-s // 2, rng=rng)]:
        for row in lab:
            mask = (out == colours[int(row[0])]).all(2)
            ys, xs = np.nonzero(mask)
            np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], row[1:], atol=0.5)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(
    "params",
    [
        {"degrees": 0, "translate": 0, "scale": 0, "shear": 0},  # pure integer shift: the no-canvas fast path
        {"degrees": 0, "translate": 0.2, "scale": 0, "shear": 0},  # fractional shift: warpAffine
        {"degrees": 10, "translate": 0.1, "scale": 0.3, "shear": 5},
    ],
)
def test_mosaic_affine_equals_mosaic_then_random_affine(seed, params):
    rng_img = np.random.default_rng(100 + seed)
    s = 64
    sizes = [(64, 48), (40, 64), (64, 64), (20, 64)] if seed % 2 else [(64, 64), (64, 30), (50, 64), (64, 64)]
    imgs = [rng_img.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    labels = [np.array([[k, 0.5, 0.5, 0.4, 0.3], [k, 0.2, 0.7, 0.1, 0.2]], np.float32) for k in range(4)]
    labels[2] = np.zeros((0, 5), np.float32)
    rng = np.random.default_rng(seed)
    img4, labels4 = mosaic(imgs, labels, s, rng)
    want_img, want_t = random_affine(img4, labels4, border=-s // 2, rng=rng, **params)
    rng_got = np.random.default_rng(seed)
    got_img, got_t = mosaic_affine(imgs, labels, s, rng=rng_got, **params)
    assert got_img.shape == (s, s, 3)
    np.testing.assert_array_equal(got_img, want_img)
    np.testing.assert_array_equal(got_t, want_t)
    assert rng_got.random() == rng.random()  # the same draws were used up: later draws (HSV, flip) agree too


@pytest.mark.parametrize("seed", range(4))
def test_shift_boxes_equals_transform_boxes_for_whole_pixel_shifts(seed):
    rng = np.random.default_rng(seed)
    n = 200
    xy = rng.uniform(-50, 250, (n, 4)).astype(np.float32)
    xy[:20, 2:] = xy[:20, :2] + rng.uniform(0, 3, (20, 2)).astype(np.float32)  # thin boxes: dropped
    targets = np.concatenate((rng.integers(0, 5, (n, 1)).astype(np.float32), xy), 1)
    for tx, ty in [(0, 0), (-32, -32), (17, -5), (-100, 40)]:
        M = np.array([[1.0, 0, tx], [0, 1.0, ty], [0, 0, 1]])
        want = transform_boxes(targets, M, 1.0, 128, 96)
        got = shift_boxes(targets, tx, ty, 128, 96)
        assert got.dtype == np.float32 and 0 < len(got) < n
        np.testing.assert_array_equal(got, want)
    assert shift_boxes(targets[:0], 3, 3, 10, 10).shape == (0, 5)


@pytest.mark.parametrize("keep", [transform_boxes, shift_boxes])
def test_box_keep_rule_is_the_references(keep):
    """After mosaic/affine a box is kept when w > 4, h > 4 px, area ratio > 0.2 and aspect ratio < 10 (the
    reference's rule; the older w > 2, ar < 20 rule keeps the 3-4 px slivers and the 10-11 ar boxes below)."""
    rows = [  # class, x1, y1, x2, y2 in pixels, no transform (identity / zero shift)
        (0, 10, 10, 13, 60),  # 3 px wide: dropped
        (1, 10, 10, 14, 60),  # 4 px wide: dropped (needs > 4)
        (2, 10, 10, 15, 60),  # 5 px wide, ar 10.0: dropped (needs < 10)
        (3, 10, 10, 20, 100),  # 10 x 90, ar 9: kept
        (4, 10, 10, 20, 110),  # 10 x 100, ar 10: dropped
        (5, 10, 10, 20, 120),  # 10 x 110, ar 11: dropped
        (6, 10, 10, 15, 54),  # 5 x 44, ar 8.8: kept
        (7, 10, 10, 100, 19),  # 90 x 9, ar 10: dropped
    ]
    targets = np.array(rows, dtype=np.float32)
    if keep is transform_boxes:
        out = transform_boxes(targets, np.eye(3), 1.0, 200, 200)
    else:
        out = shift_boxes(targets, 0, 0, 200, 200)
    assert out[:, 0].tolist() == [3, 6]
    np.testing.assert_array_equal(out[:, 1:], targets[[3, 6], 1:])

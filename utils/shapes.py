"""The built-in dataset: coloured circles, squares and triangles on textured backgrounds.

A small detection set generated deterministically from a seed, so a fresh machine can train and test without
downloading anything. Classes are told apart by shape only: colours are drawn independently of the class and
always contrast with the background under the object.

Layout (as YOLO users know it)::

    <root>/images/train/0000.jpg ...   <root>/labels/train/0000.txt ...
    <root>/images/valid/0000.jpg ...   <root>/labels/valid/0000.txt ...

Images are mostly 256x256, with some 320x240 and 240x320 ones so rectangular batching is exercised; each has
1-4 objects 24-110 pixels across that overlap each other by less than 30%. Every image comes from its own
generator ``np.random.default_rng([seed, split, index])``, so a smaller set is a prefix of a larger one, and
the same seed gives the same bytes (same OpenCV build: JPEG quality 90).

``data/shapes.data`` marks the set with ``builtin=shapes``; ``ensure_builtin_dataset`` generates it on first use.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

from utils.boxes import xyxy2xywhn
from utils.parse_config import parse_data_cfg

CLASS_NAMES = ("circle", "square", "triangle")
SPLITS = ("train", "valid")
IMAGE_SIZES = ((256, 256), (320, 240), (240, 320))  # (w, h)
IMAGE_SIZE_P = (0.7, 0.15, 0.15)
OBJECT_SIZE = (24, 110)  # bounding-box extent range in pixels
MAX_OVERLAP = 0.3  # intersection / smaller box area, between any two objects
JPEG_QUALITY = 90
_SHIFT = 4  # OpenCV drawing with 4 fractional bits: sub-pixel accurate shapes
_LUMA = np.array([0.114, 0.587, 0.299])  # BGR


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A (h, w, 3) uint8 texture: two colours blended by smooth noise, grain and a few faint lines."""
    base = rng.uniform(30, 225, 3)
    other = np.clip(base + rng.uniform(-60, 60, 3), 0, 255)
    field = cv2.resize(rng.random((5, 5)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    field = np.clip(field, 0, 1)[..., None]
    img = base * (1 - field) + other * field + rng.normal(0, 6, (h, w, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(3, 9))):
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        color = np.clip(base + rng.uniform(-25, 25, 3), 0, 255)
        cv2.line(img, p1, p2, tuple(float(c) for c in color), int(rng.integers(1, 4)), cv2.LINE_AA)
    return img


def _contrasting_color(rng: np.random.Generator, region: np.ndarray) -> tuple[float, float, float]:
    """A random BGR colour whose luma differs from the region's mean luma by at least 80."""
    luma = float(region.reshape(-1, 3).mean(0) @ _LUMA)
    for _ in range(50):
        color = rng.uniform(0, 255, 3)
        if abs(float(color @ _LUMA) - luma) >= 80:
            return tuple(float(c) for c in color)
    return (0.0, 0.0, 0.0) if luma > 127 else (255.0, 255.0, 255.0)


def _outline(cls: int, size: float, rng: np.random.Generator) -> np.ndarray | None:
    """Polygon vertices (k, 2) centred on 0 whose bounding box's larger side is ``size``; None for a circle."""
    if cls == 0:
        return None
    if cls == 1:  # square, turned by up to 20 degrees
        a = math.radians(rng.uniform(-20, 20))
        angles = a + np.arange(4) * math.pi / 2 + math.pi / 4
    else:  # equilateral triangle, any orientation
        angles = math.radians(rng.uniform(0, 360)) + np.arange(3) * 2 * math.pi / 3
    v = np.stack((np.cos(angles), np.sin(angles)), 1)
    return v * size / (v.max(0) - v.min(0)).max()


def make_shapes_image(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One image and its labels.

    Returns:
        ``(img, labels)``: (h, w, 3) uint8 BGR image and (n, 5) float ``class, x, y, w, h`` normalised.
    """
    w, h = IMAGE_SIZES[int(rng.choice(len(IMAGE_SIZES), p=IMAGE_SIZE_P))]
    img = _background(rng, w, h)
    boxes: list[np.ndarray] = []  # xyxy pixels
    classes: list[int] = []
    for _ in range(int(rng.integers(1, 5))):
        cls = int(rng.integers(0, len(CLASS_NAMES)))
        size = rng.uniform(OBJECT_SIZE[0], min(OBJECT_SIZE[1], min(w, h) - 8))
        outline = _outline(cls, size, rng)
        half = np.array([size / 2, size / 2]) if outline is None else (outline.max(0) - outline.min(0)) / 2
        for _attempt in range(20):
            centre = rng.uniform(half + 2, np.array([w, h]) - half - 2)
            box = np.concatenate((centre - half, centre + half))
            if all(_overlap(box, b) < MAX_OVERLAP for b in boxes):
                break
        else:
            continue
        x1, y1, x2, y2 = (int(v) for v in box)
        color = _contrasting_color(rng, img[y1:y2, x1:x2])
        if outline is None:
            c = tuple(int(round(v * 2**_SHIFT)) for v in centre)
            cv2.circle(img, c, int(round(size / 2 * 2**_SHIFT)), color, -1, cv2.LINE_AA, _SHIFT)
            box = np.concatenate((centre - size / 2, centre + size / 2))
        else:
            pts = outline + centre
            cv2.fillPoly(img, [np.round(pts * 2**_SHIFT).astype(np.int32)], color, cv2.LINE_AA, _SHIFT)
            box = np.concatenate((pts.min(0), pts.max(0)))
        boxes.append(box)
        classes.append(cls)
    labels = np.zeros((len(boxes), 5))
    labels[:, 0] = classes
    if boxes:
        labels[:, 1:] = xyxy2xywhn(np.array(boxes, dtype=np.float64), w, h).clip(0, 1)
    return img, labels


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection of two xyxy boxes over the smaller one's area."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    area = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / area


def _write_split(root: Path, split: str, split_id: int, n: int, seed: int) -> None:
    (root / "images" / split).mkdir(parents=True)
    (root / "labels" / split).mkdir(parents=True)
    for i in range(n):
        img, labels = make_shapes_image(np.random.default_rng([seed, split_id, i]))
        if not cv2.imwrite(
            str(root / "images" / split / f"{i:04d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
        ):
            raise OSError(f"{root / 'images' / split}: cannot write images")
        rows = "".join(f"{int(c)} {x:.6f} {y:.6f} {bw:.6f} {bh:.6f}\n" for c, x, y, bw, bh in labels)
        (root / "labels" / split / f"{i:04d}.txt").write_text(rows)


def make_shapes_dataset(
    root: str | Path, seed: int = 0, n_train: int = 400, n_valid: int = 100, overwrite: bool = True
) -> Path:
    """Generate the dataset into ``root`` (see the module docstring) and return ``root``.

    The files are written to a temporary folder beside ``root`` and renamed into place, so ``root`` is either
    absent or complete. With ``overwrite=False`` an existing ``root`` is kept (another process made it first).
    """
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        for split_id, (split, n) in enumerate(zip(SPLITS, (n_train, n_valid))):
            _write_split(tmp, split, split_id, n, seed)
        if root.exists() and overwrite:
            shutil.rmtree(root)
        if not root.exists():
            try:
                os.rename(tmp, root)
            except OSError:
                # Another process (a second machine's rank on shared storage) renamed its copy in first:
                # the generator is deterministic, so its files are the same as ours.
                if overwrite or not root.is_dir():
                    raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return root


def ensure_builtin_dataset(data_cfg_path: str | Path, verbose: bool = True) -> bool:
    """Generate the built-in dataset of a ``.data`` file that has ``builtin=shapes`` if its train folder is missing.

    The dataset root is the folder two levels above ``train`` (``train=shapes/images/train`` relative to the
    ``.data`` file -> ``<data folder>/shapes``); an optional ``seed=`` key picks the generator seed (default 0).
    Returns True when it generated the set; False for other ``.data`` files or when the set exists.
    """
    data_cfg_path = Path(data_cfg_path)
    cfg = parse_data_cfg(data_cfg_path)
    if cfg.get("builtin") != "shapes":
        return False
    train = data_cfg_path.parent / str(cfg["train"])
    if train.is_dir():
        return False
    if train.parent.name != "images" or train.name != SPLITS[0]:
        raise ValueError(f"{data_cfg_path}: builtin=shapes needs train=<root>/images/train, got {cfg['train']}")
    root = train.parent.parent
    if verbose:
        print(f"Generating the built-in shapes dataset in {root} ...")
    make_shapes_dataset(root, seed=int(cfg.get("seed", 0)), overwrite=False)
    return True

"""Synthetic inputs for the benchmark, all deterministic given a seed.

'Trained-like' detection outputs for NMS, a random labelled image set, and a random training batch.

Why trained-like outputs: NMS cost grows with the number of candidates above `conf_thres`. A randomly
initialised head gives every box a score near 0.5, so every row passes and NMS times are meaningless
(the reference took ~27 s per image that way, see ../shared/reference/baseline-cpu.md). A trained detector
is confident about few boxes: most objectness logits are very negative, a few hundred boxes per image
score above 0.001 and a few dozen above 0.1, clustered on the objects. `trained_like_predictions` imitates
that (the benchmark prints the counts it produced next to the timings).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

# Anchors (pixels) of the official cfgs per YOLO layer, in cfg order: (stride, anchors of that layer's mask).
TINY_LAYERS = [(32, [(81, 82), (135, 169), (344, 319)]), (16, [(23, 27), (37, 58), (81, 82)])]
YOLOV3_LAYERS = [
    (32, [(116, 90), (156, 198), (373, 326)]),
    (16, [(30, 61), (62, 45), (59, 119)]),
    (8, [(10, 13), (16, 30), (33, 23)]),
]


def _wh_iou(wh1: np.ndarray, wh2: np.ndarray) -> np.ndarray:
    """IoU of boxes sharing a centre: wh1 (n,2), wh2 (m,2) -> (n,m)."""
    inter = np.minimum(wh1[:, None], wh2[None]).prod(2)
    return inter / (wh1.prod(1)[:, None] + wh2.prod(1)[None] - inter)


def trained_like_predictions(
    batch: int,
    img_size: int,
    nc: int,
    layers: list[tuple[int, list[tuple[int, int]]]] = TINY_LAYERS,
    objects: tuple[int, int] = (2, 12),
    seed: int = 0,
) -> torch.Tensor:
    """Decoded eval-mode outputs (batch, N, 5 + nc) like a trained detector's, float32.

    Rows are (x, y, w, h) pixels, objectness, class probabilities, in the model's order (layers in cfg
    order, anchor-major, then grid rows, then columns). The generator:
    - background: objectness logit ~ N(-9, 1.6), so ~14% of rows exceed 0.001 and ~none exceed 0.1;
      boxes at their cell with the anchor's size times exp(N(0, 0.3)); class logits ~ N(-4.5, 1.5);
    - objects: 2-11 per image, centre uniform, size log-uniform from 12 px to 70% of the image; every row
      whose cell lies within 1 cell of the centre and whose anchor overlaps the box (wh IoU > 0.15) gets an
      objectness logit 6*overlap - 2.5*distance - 1 + N(0, 1) (dozens of rows above 0.1 per image), a box
      jittered around the object, its class logit ~ N(2, 1) and the other classes ~ N(-5, 1.5).
    With the defaults: yolov3-tiny@320, nc=3: ~210 rows per image above 0.001 and ~65 above 0.1;
    yolov3(-spp)@416, nc=80: ~1100 rows (~5900 multi-label pairs) above 0.001, ~85 rows above 0.1.
    """
    rng = np.random.default_rng(seed)
    no = 5 + nc
    cells = []  # per layer: (stride, anchors (na,2), grid xy of each row (n,2), anchor index of each row)
    for stride, anchors in layers:
        g = img_size // stride
        anchors_np = np.asarray(anchors, dtype=np.float64)
        na = len(anchors)
        gy, gx = np.meshgrid(np.arange(g), np.arange(g), indexing="ij")
        grid = np.stack([gx.ravel(), gy.ravel()], 1)  # rows then columns
        cells.append((stride, anchors_np, np.tile(grid, (na, 1)), np.repeat(np.arange(na), g * g)))
    n_rows = sum(len(c[2]) for c in cells)
    out = np.empty((batch, n_rows, no), dtype=np.float64)
    for b in range(batch):
        chunks = []
        for stride, anchors_np, grid, a in cells:
            n = len(grid)
            p = np.empty((n, no))
            p[:, :2] = (grid + rng.uniform(0.05, 0.95, (n, 2))) * stride
            p[:, 2:4] = anchors_np[a] * np.exp(rng.normal(0, 0.3, (n, 2)))
            p[:, 4] = rng.normal(-9.0, 1.6, n)
            p[:, 5:] = rng.normal(-4.5, 1.5, (n, nc))
            for _ in range(int(rng.integers(objects[0], objects[1]))):
                centre = rng.uniform(0, img_size, 2)
                wh = np.exp(rng.uniform(np.log(12), np.log(0.7 * img_size), 2))
                cls = int(rng.integers(nc))
                dist = np.abs(grid + 0.5 - centre / stride).max(1)
                overlap = _wh_iou(anchors_np[a], wh[None])[:, 0]
                hit = (dist <= 1.0) & (overlap > 0.15)
                k = int(hit.sum())
                if not k:
                    continue
                p[hit, 0:2] = centre + rng.normal(0, 0.08, (k, 2)) * wh
                p[hit, 2:4] = wh * np.exp(rng.normal(0, 0.12, (k, 2)))
                p[hit, 4] = 6.0 * overlap[hit] - 2.5 * dist[hit] - 1.0 + rng.normal(0, 1.0, k)
                p[hit, 5:] = rng.normal(-5.0, 1.5, (k, nc))
                p[hit, 5 + cls] = rng.normal(2.0, 1.0, k)
            chunks.append(p)
        out[b] = np.concatenate(chunks, 0)
    out[..., 4:] = 1.0 / (1.0 + np.exp(-out[..., 4:]))
    return torch.from_numpy(out.astype(np.float32))


def candidate_counts(pred: torch.Tensor, conf_thres: float) -> dict[str, float]:
    """Mean per image of rows with objectness > conf_thres and of (row, class) pairs with obj*cls > conf_thres
    among those rows (what multi-label NMS keeps as candidates)."""
    obj = pred[..., 4]
    rows = obj > conf_thres
    pairs = (pred[..., 5:] * obj[..., None] > conf_thres) & rows[..., None]
    return {"rows": float(rows.sum()) / len(pred), "pairs": float(pairs.sum()) / len(pred)}


def write_random_dataset(root: Path, n: int = 32, nc: int = 80, seed: int = 0) -> Path:
    """Write a labelled image set root/images/train + root/labels/train of `n` JPEGs (640x480, 480x640,
    640x427, like COCO's common sizes) with smooth backgrounds and 1-12 filled rectangles each, labelled
    with random classes. Returns the images folder. Deterministic for a seed.

    Used when the real coco128 set is absent, so loader and epoch figures still run (they are then not
    comparable with the reference: real photos decode more slowly than these).
    """
    rng = np.random.default_rng(seed)
    images = root / "images" / "train"
    labels = root / "labels" / "train"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    sizes = [(480, 640), (640, 480), (427, 640)]
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = rng.uniform(0, 255, 3)
        slope = rng.uniform(-0.2, 0.2, (2, 3))
        img = base + xx[..., None] * slope[0] + yy[..., None] * slope[1]
        img = np.clip(img + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)
        rows = []
        for _ in range(int(rng.integers(1, 13))):
            bw, bh = rng.uniform(0.05, 0.5) * w, rng.uniform(0.05, 0.5) * h
            x1, y1 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            cv2.rectangle(img, (int(x1), int(y1)), (int(x1 + bw), int(y1 + bh)), colour, -1)
            rows.append(f"{int(rng.integers(nc))} {(x1 + bw / 2) / w:.6f} {(y1 + bh / 2) / h:.6f} "
                        f"{bw / w:.6f} {bh / h:.6f}")
        cv2.imwrite(str(images / f"{i:06d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        (labels / f"{i:06d}.txt").write_text("\n".join(rows) + "\n")
    return images


def random_batch(batch: int, img_size: int, nc: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random training batch: images (batch, 3, img_size, img_size) float 0..1 and targets (n, 6)
    (image, class, x, y, w, h) normalised, 1-30 boxes per image with COCO-like sizes (what a mosaic of four
    COCO images holds)."""
    gen = torch.Generator().manual_seed(seed)
    imgs = torch.rand(batch, 3, img_size, img_size, generator=gen)
    rows = []
    for i in range(batch):
        k = int(torch.randint(1, 31, (1,), generator=gen))
        wh = torch.exp(torch.empty(k, 2).uniform_(np.log(0.01), np.log(0.6), generator=gen))
        xy = wh / 2 + torch.rand(k, 2, generator=gen) * (1 - wh)
        cls = torch.randint(0, nc, (k, 1), generator=gen).float()
        rows.append(torch.cat([torch.full((k, 1), float(i)), cls, xy, wh], 1))
    return imgs, torch.cat(rows, 0)

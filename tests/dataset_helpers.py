"""Helpers of the data tests: a tiny YOLO dataset written to a folder, and label texts."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def make_dataset(root: Path, labels: dict[str, str | None], sizes: dict[str, tuple[int, int]] | None = None) -> Path:
    """Write ``root/images/train/<name>.jpg`` (random pixels, default 64x48) and the given label file texts.

    ``labels`` maps an image stem to its label text (None: no label file). Returns the images folder.
    """
    images, label_dir = root / "images" / "train", root / "labels" / "train"
    images.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for stem, text in labels.items():
        w, h = (sizes or {}).get(stem, (64, 48))
        cv2.imwrite(str(images / f"{stem}.jpg"), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        if text is not None:
            (label_dir / f"{stem}.txt").write_text(text)
    return images


GOOD = "0 0.5 0.5 0.2 0.3\n1 0.25 0.25 0.1 0.1\n"

SIZES6 = {"a": (64, 48), "b": (48, 64), "c": (80, 60), "d": (64, 64), "e": (100, 40), "f": (50, 50)}

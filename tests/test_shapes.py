"""The built-in shapes dataset: deterministic bytes, valid labels, generation on first use."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

import utils.shapes as shapes
from utils.data_files import resolve_data_cfg
from utils.datasets import LoadImagesAndLabels
from utils.shapes import (
    CLASS_NAMES,
    IMAGE_SIZE_P,
    IMAGE_SIZES,
    OBJECT_SIZE,
    ensure_builtin_dataset,
    make_shapes_dataset,
    make_shapes_image,
)


def _digest(root: Path) -> dict[str, str]:
    files = [p for p in root.rglob("*") if p.is_file()]
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_generation_is_deterministic(tmp_path):
    a = _digest(make_shapes_dataset(tmp_path / "a", seed=3, n_train=4, n_valid=2))
    b = _digest(make_shapes_dataset(tmp_path / "b", seed=3, n_train=4, n_valid=2))
    assert len(a) == 12 and a == b
    c = _digest(make_shapes_dataset(tmp_path / "c", seed=4, n_train=4, n_valid=2))
    assert c != a
    d = _digest(make_shapes_dataset(tmp_path / "d", seed=3, n_train=2, n_valid=1))
    assert all(a[k] == v for k, v in d.items())  # a smaller set is a prefix of a larger one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c", "d"]  # no temporary folders left


def test_images_and_labels_are_valid(tmp_path):
    root = make_shapes_dataset(tmp_path / "s", n_train=24, n_valid=0)
    ds = LoadImagesAndLabels(root / "images" / "train", img_size=256, nc=len(CLASS_NAMES), verbose=False)
    assert ds.report["found"] == 24
    sizes = {tuple(s) for s in ds.shapes.tolist()}
    assert sizes <= {(256, 256), (320, 240), (240, 320)} and (256, 256) in sizes
    labels = np.concatenate(ds.labels)
    assert set(labels[:, 0].astype(int).tolist()) == {0, 1, 2}
    assert all(1 <= len(x) <= 4 for x in ds.labels)
    extent = [max(x[3] * w, x[4] * h) for lab, (w, h) in zip(ds.labels, ds.shapes) for x in lab]
    assert OBJECT_SIZE[0] - 1 <= min(extent) and max(extent) <= OBJECT_SIZE[1] + 1


@pytest.mark.parametrize("seed", range(6))
def test_object_pixels_match_boxes(seed):
    """The pixels that differ from the background are bounded by the union of the labelled boxes."""
    img, labels = make_shapes_image(np.random.default_rng(seed))
    rng = np.random.default_rng(seed)  # replay the draws that made the background
    w, h = IMAGE_SIZES[int(rng.choice(len(IMAGE_SIZES), p=IMAGE_SIZE_P))]
    background = shapes._background(rng, w, h)
    assert img.shape == background.shape == (h, w, 3)
    ys, xs = np.nonzero(np.abs(img.astype(int) - background).max(2) > 30)
    boxes = np.stack(
        [
            (labels[:, 1] - labels[:, 3] / 2) * w,
            (labels[:, 2] - labels[:, 4] / 2) * h,
            (labels[:, 1] + labels[:, 3] / 2) * w,
            (labels[:, 2] + labels[:, 4] / 2) * h,
        ],
        1,
    )
    union = [boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max()]
    np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], union, atol=2.0)


def test_ensure_builtin_dataset_generates_once(tmp_path, repo_root, monkeypatch):
    small = shapes.make_shapes_dataset

    def fake(root, seed=0, n_train=400, n_valid=100, overwrite=True):
        return small(root, seed=seed, n_train=3, n_valid=2, overwrite=overwrite)

    monkeypatch.setattr(shapes, "make_shapes_dataset", fake)
    for name in ("shapes.data", "shapes.names"):
        shutil.copy(repo_root / "data" / name, tmp_path / name)
    data = tmp_path / "shapes.data"
    assert ensure_builtin_dataset(data, verbose=False) is True
    assert ensure_builtin_dataset(data, verbose=False) is False
    cfg = resolve_data_cfg(data)
    assert cfg["names"] == list(CLASS_NAMES) and cfg["classes"] == 3
    assert len(LoadImagesAndLabels(cfg["train"], img_size=256, nc=3, verbose=False)) == 3
    assert ensure_builtin_dataset(repo_root / "data" / "coco128.data") is False  # not a built-in set


@pytest.mark.slow
def test_full_builtin_dataset(tmp_path):
    root = make_shapes_dataset(tmp_path / "shapes")
    assert len(list((root / "images" / "train").iterdir())) == 400
    assert len(list((root / "images" / "valid").iterdir())) == 100

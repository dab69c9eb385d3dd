"""Plots write non-empty images from small inputs (utils/plots.py)."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from utils.evolve import append_evolve
from utils.hyp import DEFAULT_HYP
from utils.plots import (
    RESULTS_COLUMNS,
    class_color,
    color_list,
    place_labels,
    plot_evolution_results,
    plot_images,
    plot_labels,
    plot_one_box,
    plot_results,
)


def _written(path) -> bool:
    return path.is_file() and path.stat().st_size > 0 and cv2.imread(str(path)) is not None


def test_class_colors_are_deterministic_and_distinct():
    assert class_color(3) == class_color(3) == color_list(5)[3]
    assert len(set(color_list(20))) == 20
    assert all(0 <= c <= 255 for rgb in color_list(80) for c in rgb)


def test_plot_one_box_draws_in_place():
    img = np.zeros((60, 80, 3), np.uint8)
    out = plot_one_box([10, 20, 50, 40], img, color=(0, 255, 0), label="person 0.9")
    assert out is img and img[20, 30].tolist() == [0, 255, 0] and img.any()
    plot_one_box([0, 0, 10, 10], img, label="top edge")  # label has no room above: drawn inside


def test_plot_images_labels_from_uint8_tensor(tmp_path):
    images = torch.randint(0, 255, (3, 3, 64, 96), dtype=torch.uint8)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.4, 0.3], [2, 0, 0.2, 0.3, 0.1, 0.2]])
    fname = tmp_path / "train_batch0.jpg"
    mosaic = plot_images(images, targets, paths=["a/x.jpg", "b/y.jpg", "c/z.jpg"], fname=fname, names=["cat", "dog"])
    assert _written(fname)
    assert mosaic.shape == (2 * 64, 2 * 96, 3) and mosaic.dtype == np.uint8


def test_plot_images_pixel_detections_float_and_limits(tmp_path):
    images = np.random.default_rng(0).random((20, 3, 800, 600), dtype=np.float32)  # 0..1 floats, > max_size
    detections = np.array([[0, 3, 300.0, 400.0, 100.0, 80.0, 0.9], [1, 5, 100.0, 100.0, 50.0, 50.0, 0.1]])
    fname = tmp_path / "test_batch0_pred.jpg"
    mosaic = plot_images(images, detections, fname=fname, max_size=200, max_subplots=16)
    assert _written(fname)
    assert mosaic.shape == (4 * 200, 4 * 150, 3)
    none = plot_images(images[:1], None, fname=None)
    assert none.shape == (640, 480, 3)  # default max_size=640
    with pytest.raises(ValueError, match="6 or 7 columns"):
        plot_images(images[:1], np.zeros((1, 5)), fname=None)


def test_plot_results_by_header_and_headerless(tmp_path, caplog):
    rng = np.random.default_rng(0)
    path = tmp_path / "results.txt"
    rows = [" ".join([f"{e}/4", "0.1G", *(f"{v:.4g}" for v in rng.random(14))]) for e in range(5)]
    path.write_text(" ".join(RESULTS_COLUMNS) + "\n" + "\n".join(rows) + "\n")
    assert _written(plot_results(path, tmp_path / "results.png"))
    headerless = tmp_path / "old_results.txt"
    headerless.write_text("\n".join(" ".join(f"{v:.3g}" for v in rng.random(15)) for _ in range(3)))
    assert _written(plot_results(headerless, tmp_path / "old.png"))
    with caplog.at_level("WARNING"):
        assert plot_results(tmp_path / "missing.txt", tmp_path / "none.png") is None
    assert "missing.txt" in caplog.text and not (tmp_path / "none.png").exists()


def test_plot_labels(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.concatenate([rng.integers(0, 3, (50, 1)), rng.random((50, 4)) * 0.5 + 0.1], 1)
    assert _written(plot_labels(labels, ["a", "b", "c"], tmp_path / "labels.png"))
    assert _written(plot_labels(np.zeros((0, 5)), None, tmp_path / "empty.png"))


def test_plot_evolution_results(tmp_path):
    path = tmp_path / "evolve.txt"
    rng = np.random.default_rng(0)
    for _ in range(4):
        hyp = {k: v * (1 + 0.2 * rng.standard_normal()) for k, v in DEFAULT_HYP.items()}
        append_evolve(path, tuple(rng.random(8)), hyp)
    out = plot_evolution_results(path, tmp_path / "evolve.png", fitness_fn=lambda r: 0.5 * r[:, 2] + 0.5 * r[:, 4])
    assert _written(out)


def test_import_touches_no_matplotlib_state(repo_root):
    code = "import sys, utils.plots; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False" and out.stderr == ""


# ------------------------------------------------------------------------------------------- labels (issue 14)
def test_place_labels_never_overlap_each_other_or_reserved_areas():
    rng = np.random.default_rng(0)
    boxes = [[10, 10, 60, 40]] * 6 + [[x, y, x + 20, y + 15] for x, y in rng.uniform(0, 90, (20, 2))]  # a pile, more
    sizes = [(30, 10)] * len(boxes)
    reserved = [(0, 0, 50, 18)]
    spots = place_labels(boxes, sizes, 120, 100, reserved)
    placed = [s for s in spots if s is not None]
    assert len(placed) >= 15  # most find a place
    for k, a in enumerate(placed):
        assert min(a[:2]) >= 0 and a[2] <= 120 and a[3] <= 100 and (a[2] - a[0], a[3] - a[1]) == (30, 10)
        for b in placed[k + 1 :] + reserved:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)
    first = place_labels([[10, 30, 60, 60]], [(30, 10)], 120, 100)[0]
    assert first == (10, 20, 40, 30)  # room above the box: the label sits on its top edge


def _color_pixels(mosaic: np.ndarray, bgr: tuple[int, int, int]) -> np.ndarray:
    return (mosaic == np.array(bgr[::-1], dtype=np.uint8)).all(-1)  # mosaic is RGB


def test_plot_images_labels_do_not_overprint_each_other_or_the_file_name():
    """Issue 14: two boxes at the same place near the file name: both labels stay readable, the name too."""
    images = np.zeros((1, 3, 96, 128), np.uint8)
    targets = np.array([[0, 0, 0.25, 0.2, 0.3, 0.3], [0, 1, 0.25, 0.2, 0.3, 0.3], [0, 2, 0.26, 0.21, 0.3, 0.3]])
    mosaic = plot_images(images, targets, paths=["dir/000000000009.jpg"], fname=None, names=["cat", "dog", "cow"])
    (tw, th), _ = cv2.getTextSize("cat", cv2.FONT_HERSHEY_SIMPLEX, 1 / 3, 1)
    fills = [int(_color_pixels(mosaic, class_color(c)).sum()) for c in range(3)]
    assert all(f >= tw * th for f in fills), fills  # every label's filled box is there, none painted over
    (nw, nh), base = cv2.getTextSize("000000000009.jpg", cv2.FONT_HERSHEY_SIMPLEX, 0.45, 3)
    name_area = mosaic[: 14 + base + 2, : 4 + nw + 2]
    assert not any(_color_pixels(name_area, class_color(c)).any() for c in range(3))
    assert (name_area >= 200).all(-1).sum() > 20  # the light text of the name itself

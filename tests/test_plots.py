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

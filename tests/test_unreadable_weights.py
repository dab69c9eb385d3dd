"""Unreadable weights give one error line on every entry point: utils.weights.load_weights, test, detect, train."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import detect
import train
from models import Darknet
from utils.checkpoint import make_checkpoint
from utils.weights import load_weights

REPO = Path(__file__).resolve().parents[1]
TINY_CFG = REPO / "cfg" / "yolov3-tiny.cfg"


@pytest.fixture(scope="module")
def half_pt(tmp_path_factory) -> Path:
    """The first half of the bytes of a real checkpoint of yolov3-tiny (2 classes), as a cut-off copy leaves."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    model = Darknet(TINY_CFG, nc=2)
    full = folder / "full.pt"
    torch.save(make_checkpoint(epoch=0, best_fitness=0.0, training_results="", model=model, names=["a", "b"]), full)
    data = full.read_bytes()
    half = folder / "half.pt"
    half.write_bytes(data[: len(data) // 2])
    return half


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    img_dir = root / "images"
    img_dir.mkdir()
    for i in range(2):
        cv2.imwrite(str(img_dir / f"{i}.jpg"), np.full((64, 64, 3), 114, np.uint8))
        (img_dir / f"{i}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "tiny.names").write_text("a\nb\n")
    data = root / "tiny.data"
    data.write_text(f"classes=2\ntrain={img_dir}\nvalid={img_dir}\nnames={root / 'tiny.names'}\n")
    return data


def _one_error_line(err: str, prog: str, path: Path, what: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [lines[0]] and "Traceback" not in err, err
    assert lines[0].startswith(f"{prog}{path}: {what}"), lines[0]


def test_load_weights_truncated(half_pt):
    with pytest.raises(ValueError) as e:
        load_weights(Darknet(TINY_CFG, nc=2), half_pt)
    assert str(e.value).startswith(f"{half_pt}: truncated: a PyTorch zip archive of ")
    assert "copy or download it again" in str(e.value) and "\n" not in str(e.value)


def test_darknet_suffix_on_a_file_that_is_not_darknet(half_pt, tmp_path):
    model = Darknet(TINY_CFG, nc=2)
    zipped = tmp_path / "renamed.weights"
    zipped.write_bytes(half_pt.read_bytes())
    with pytest.raises(ValueError, match=r"renamed.weights: not a Darknet .weights file but a PyTorch checkpoint"):
        load_weights(model, zipped)
    text = tmp_path / "page.weights"
    text.write_text("<html>404 not found</html>" * 10)  # what a failed download often saves
    with pytest.raises(ValueError, match=r"page.weights: not a Darknet .weights file: its header reads version "):
        load_weights(model, text)


def test_test_py_main_truncated(test_cli, half_pt, tiny_data, tmp_path, capsys):
    argv = ["--cfg", str(TINY_CFG), "--data", str(tiny_data), "--weights", str(half_pt), "--img-size", "64",
            "--device", "cpu", "--save-dir", str(tmp_path / "run"), "--workers", "0"]  # fmt: skip
    assert test_cli.main(argv) == 1
    _one_error_line(capsys.readouterr().err, "test.py: error: ", half_pt, "truncated: a PyTorch zip archive")


def test_detect_py_main_truncated(half_pt, tiny_data, tmp_path, capsys):
    argv = ["--cfg", str(TINY_CFG), "--weights", str(half_pt), "--source", str(tiny_data.parent / "images"),
            "--output", str(tmp_path / "out"), "--img-size", "64", "--device", "cpu"]  # fmt: skip
    assert detect.main(argv) == 1
    _one_error_line(capsys.readouterr().err, "detect.py: error: ", half_pt, "truncated: a PyTorch zip archive")


def test_train_py_main_truncated(half_pt, tiny_data, tmp_path, capsys):
    argv = ["--cfg", str(TINY_CFG), "--data", str(tiny_data), "--weights", str(half_pt), "--epochs", "1",
            "--img-size", "64", "--batch-size", "2", "--num-workers", "0", "--device", "cpu",
            "--project", str(tmp_path / "runs")]  # fmt: skip
    assert train.main(argv) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].startswith(f"ERROR: {half_pt}: truncated: a PyTorch zip archive")

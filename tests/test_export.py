"""export.py: the ONNX graph returns the eval-mode inference tensor and matches PyTorch (needs onnx/onnxruntime)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from export import InferenceOutput, check_onnx, export_onnx, image_shape, main
from models import Darknet

REPO = Path(__file__).resolve().parents[1]
TINY_CFG = REPO / "cfg" / "yolov3-tiny.cfg"


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A randomly initialised 3-class yolov3-tiny in our checkpoint format."""
    torch.manual_seed(0)
    model = Darknet(TINY_CFG, nc=3)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    torch.save({"model": model.state_dict(), "names": ["circle", "square", "triangle"]}, path)
    return path


def test_wrapper_returns_only_the_inference_tensor():
    model = Darknet(TINY_CFG, nc=3).eval()
    with torch.no_grad():
        out = InferenceOutput(model)(torch.rand(2, 3, 64, 96))
    # yolov3-tiny: 3 anchors on a 2x3 grid (stride 32) and on a 4x6 grid (stride 16)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3 * (6 + 24), 5 + 3)


def test_image_shape_validation():
    assert image_shape(416) == (416, 416) and image_shape([320, 416]) == (320, 416)
    for bad in (100, [320, 100], [0], [32, 64, 96]):
        with pytest.raises(ValueError, match="multiples of 32"):
            image_shape(bad)


def test_missing_onnx_package_says_how_to_install(tiny_ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` fail as if it were not installed
    with pytest.raises(ModuleNotFoundError, match="pip install onnx"):
        export_onnx(TINY_CFG, tiny_ckpt, tmp_path / "m.onnx", img_size=64)
    assert main(["--cfg", str(TINY_CFG), "--weights", str(tiny_ckpt), "--img-size", "64"]) == 1
    assert "pip install onnx" in capsys.readouterr().err


@pytest.mark.slow
def test_onnx_output_equals_pytorch(tiny_ckpt, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    path = export_onnx(TINY_CFG, tiny_ckpt, tmp_path / "tiny.onnx", img_size=(64, 96))
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["names"] == "circle,square,triangle"
    diff, ok = check_onnx(path, TINY_CFG, tiny_ckpt, (64, 96), batch=2)  # batch is dynamic
    print(f"max |ONNX - PyTorch| = {diff:.3g}")
    assert ok and diff < 1e-4


@pytest.mark.slow
def test_dynamic_export_runs_other_sizes_and_default_output_name(tiny_ckpt, tmp_path, capsys):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    weights = tmp_path / "best.pt"
    weights.write_bytes(tiny_ckpt.read_bytes())
    assert main(["--cfg", str(TINY_CFG), "--weights", str(weights), "--img-size", "64", "--dynamic"]) == 0
    assert "onnxruntime check: max |ONNX - PyTorch|" in capsys.readouterr().out
    diff, ok = check_onnx(tmp_path / "best.onnx", TINY_CFG, weights, (96, 128))
    assert ok and diff < 1e-4

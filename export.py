"""Export a trained Darknet-cfg model to ONNX.

    python export.py --cfg cfg/yolov3-tiny.cfg --weights weights/best.pt --img-size 416

The ONNX graph (needs ``pip install onnx``) has

- input ``images``: ``(batch, 3, H, W)`` float32, RGB, values 0..1 (an image letterboxed as detect.py does,
  divided by 255); ``H`` and ``W`` are ``--img-size`` (one value: square; two values: height width) and are
  fixed unless ``--dynamic`` is given; the batch dimension is always dynamic.
- output ``output``: ``(batch, N, 5 + nc)`` float32, the model's eval-mode inference tensor before NMS: rows
  ``x, y, w, h`` (box centre and size in input pixels), objectness, then the ``nc`` class scores (all after the
  sigmoid); YOLO layers in cfg order, anchors before grid rows before grid columns.

The model is fused (conv+BN) and in eval mode. The class names are stored in the ONNX metadata (``names``,
comma-separated) with the input description. When ``onnxruntime`` is installed the exported file is run on a
random input and compared with PyTorch; the largest absolute difference is printed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from detect import MAX_STRIDE, load_model, load_names, model_arg_parser, parse_cli

logger = logging.getLogger(__name__)

ONNX_TOLERANCE = 1e-4


class InferenceOutput(nn.Module):
    """Wraps an eval-mode Darknet so that ``forward(images)`` returns only the ``(bs, N, 5 + nc)`` inference tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)[0]


def image_shape(img_size: int | Sequence[int]) -> tuple[int, int]:
    """``(H, W)`` from one size (square) or two (height, width); each must be a positive multiple of 32."""
    sizes = [img_size] if isinstance(img_size, int) else list(img_size)
    if len(sizes) not in (1, 2) or any(s <= 0 or s % MAX_STRIDE for s in sizes):
        raise ValueError(f"--img-size {sizes}: give one or two positive multiples of {MAX_STRIDE}, e.g. 416 or 320 416")
    return (sizes[0], sizes[-1])


def export_onnx(
    cfg: str | Path,
    weights: str | Path,
    output: str | Path | None = None,
    img_size: int | Sequence[int] = 416,
    opset: int = 12,
    dynamic: bool = False,
    names: str | Path | Sequence[str] | None = None,
) -> Path:
    """Write the fused eval-mode model as ONNX (see the module docstring for the graph's input and output).

    Args:
        output: the ``.onnx`` file; default: ``weights`` with the suffix ``.onnx``.
        img_size: export size, one int (square) or (height, width), multiples of 32.
        dynamic: make height and width dynamic too (the batch dimension is always dynamic).
        names: class names (list, or a ``.names``/``.data`` file); default from the checkpoint, else numbers.
    Returns the path written. Raises ModuleNotFoundError with the install command when ``onnx`` is missing.
    """
    try:
        import onnx
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError("ONNX export needs the onnx package: pip install onnx") from e
    h, w = image_shape(img_size)
    output = Path(output) if output is not None else Path(weights).with_suffix(".onnx")
    if isinstance(names, (str, Path)):
        names = load_names(names)
    model, names = load_model(cfg, weights, torch.device("cpu"), names=names)
    wrapped = InferenceOutput(model).eval()
    images = torch.zeros(1, 3, h, w)
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic else {0: "batch"}
    output.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter is chosen on purpose (the dynamo one needs onnxscript); its tracer's notes on the
        # stride check and on slice folding concern code paths that do not change the graph.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding")
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
        torch.onnx.export(
            wrapped,
            (images,),
            str(output),
            input_names=["images"],
            output_names=["output"],
            opset_version=opset,
            dynamic_axes={"images": axes, "output": {0: "batch", 1: "boxes"}},
            do_constant_folding=True,
            dynamo=False,
        )
    proto = onnx.load(str(output))
    onnx.checker.check_model(proto)
    meta = {
        "names": ",".join(names),
        "input": "images: (batch, 3, H, W) float32 RGB 0..1, letterboxed",
        "output": f"output: (batch, N, {5 + len(names)}) xywh pixels, objectness, class scores (sigmoid), before NMS",
        "stride": str(MAX_STRIDE),
    }
    for key, value in meta.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.save(proto, str(output))
    return output


def check_onnx(
    onnx_path: str | Path,
    cfg: str | Path,
    weights: str | Path,
    img_size: int | Sequence[int] = 416,
    batch: int = 1,
    names: str | Path | Sequence[str] | None = None,
) -> tuple[float, bool]:
    """Run the ONNX file with onnxruntime and PyTorch on the same seeded random input in 0..1.

    ``batch``, and ``img_size`` with a ``--dynamic`` export, may differ from the export's. Returns
    ``(max_abs_diff, ok)``: the largest absolute difference of the outputs, and whether every value agrees within
    ``ONNX_TOLERANCE`` absolute (scores, small coordinates) or 1e-5 relative (large pixel coordinates, where float32
    spacing alone approaches 1e-4). Raises ModuleNotFoundError when onnxruntime is not installed.
    """
    import onnxruntime

    h, w = image_shape(img_size)
    images = torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(0))
    if isinstance(names, (str, Path)):
        names = load_names(names)
    model, _ = load_model(cfg, weights, torch.device("cpu"), names=names)
    with torch.no_grad():
        expected = model(images)[0].numpy()
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(["output"], {"images": images.numpy()})[0]
    if got.shape != expected.shape:
        raise ValueError(f"{onnx_path}: output shape {got.shape} != PyTorch {expected.shape}")
    ok = bool(np.allclose(got, expected, rtol=1e-5, atol=ONNX_TOLERANCE))
    return float(np.abs(got - expected).max(initial=0.0)), ok


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = model_arg_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--names", type=str, default=None, help=".names or .data file (default: from the checkpoint)")
    parser.add_argument("--img-size", type=int, nargs="+", default=[416], help="export size: H (square) or H W")
    parser.add_argument("--output", type=str, default=None, help="ONNX file (default: the weights path with .onnx)")
    parser.add_argument("--opset", type=int, default=12, help="ONNX opset version")
    parser.add_argument("--dynamic", action="store_true", help="dynamic height and width (batch is always dynamic)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (0 success, 1 error, 2 usage)."""
    opt = parse_cli(parse_args, argv)
    if isinstance(opt, int):
        return opt
    try:
        path = export_onnx(opt.cfg, opt.weights, opt.output, opt.img_size, opt.opset, opt.dynamic, opt.names)
    except (OSError, ValueError, ModuleNotFoundError) as e:
        print(f"export.py: error: {e}", file=sys.stderr)
        return 1
    h, w = image_shape(opt.img_size)
    print(f"ONNX export saved to {path} (input 'images': batch x 3 x {h} x {w} float32 RGB 0..1)")
    try:
        diff, ok = check_onnx(path, opt.cfg, opt.weights, opt.img_size, names=opt.names)
    except ModuleNotFoundError:
        print("onnxruntime not installed: output not checked (pip install onnxruntime)")
        return 0
    status = "OK" if ok else f"MISMATCH: above {ONNX_TOLERANCE:g} absolute and 1e-5 relative"
    print(f"onnxruntime check: max |ONNX - PyTorch| = {diff:.3g} ({status})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

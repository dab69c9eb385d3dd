"""Command line of the evaluation (``utils.evaluate.test``): one run, or a sweep over image sizes.

    python test.py --cfg cfg/yolov3-tiny.cfg --data data/coco128.data --weights weights/best.pt

``--task test`` evaluates once and prints P, R, mAP@0.5, mAP@0.5:0.95 and F1 per class (with ``--save-json``
also the COCO detections and pycocotools' figures, ``utils.coco``); ``--task benchmark`` and ``--task study``
evaluate at a range of image sizes and save one row per size.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import utils.evaluate as evaluation
from utils.general import tune_malloc
from utils.label_cache import CACHE_CHECK_HELP, CACHE_CHECKS
from utils.shapes import ensure_builtin_dataset


def sweep(
    sizes: Sequence[int], out_file: Path, cfg: str, data: str, weights: str, batch_size: int, conf_thres: float,
    iou_thres: float, single_cls: bool, device: str, workers: int | None,
) -> np.ndarray:
    """Run ``test`` at each image size; rows ``img_size, P, R, mAP@0.5, mAP@0.5:0.95, F1, seconds``."""
    rows = []
    for size in sizes:
        t = time.time()
        results, _ = evaluation.test(
            cfg, data, weights, batch_size, size, conf_thres, iou_thres,
            single_cls=single_cls, device=device, plots=False, verbose=False, workers=workers,
        )  # fmt: skip
        rows.append((size, *results[:5], time.time() - t))
    arr = np.array(rows)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(out_file, arr, fmt="%10.4g", header="img_size P R mAP@0.5 mAP@0.5:0.95 F1 seconds")
    print(f"Results saved to {out_file}")
    return arr


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Evaluate a Darknet-cfg YOLO model (P, R, mAP@0.5, mAP@0.5:0.95, F1).")
    p.add_argument("--cfg", default="cfg/yolov3-spp.cfg", help="model cfg file")
    p.add_argument("--data", default="data/coco128.data", help=".data file (classes, valid, names)")
    p.add_argument("--weights", default="", help=".pt checkpoint or Darknet .weights file ('' = random init)")
    p.add_argument("--batch-size", type=int, default=16, help="images per batch")
    p.add_argument("--img-size", type=int, default=416, help="inference size (long side, pixels, multiple of 32)")
    p.add_argument("--conf-thres", type=float, default=0.001, help="object confidence threshold for NMS")
    p.add_argument("--iou-thres", type=float, default=0.6, help="IoU threshold for NMS")
    p.add_argument("--save-json", action="store_true", help="write COCO-format detections.json (+ pycocotools)")
    p.add_argument("--coco-json", default=None, help="COCO annotation json for pycocotools (default: searched)")
    p.add_argument("--single-cls", action="store_true", help="treat every class as one class")
    p.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1 or cpu ('' = first GPU if any)")
    p.add_argument(
        "--task",
        default="test",
        choices=("test", "benchmark", "study"),
        help="test: one evaluation; benchmark: img sizes 320..608 -> benchmark.txt; study: 256..640 -> study_*.txt",
    )
    p.add_argument("--save-dir", default="runs/test", help="folder for plots, detections.json and sweep results")
    p.add_argument("--workers", type=int, default=None, help="dataloader workers (default min(cpus, batch, 8))")
    p.add_argument("--half", action="store_true", help="reduced-precision inference (fp16 CUDA, bf16 CPU)")
    p.add_argument("--cache-check", choices=CACHE_CHECKS, default="mtime", help=CACHE_CHECK_HELP)
    p.add_argument("--verbose", action="store_true", help="also log diagnostics (per-class rows are always printed)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    opt = parse_args(argv)
    logging.basicConfig(level=logging.INFO if opt.verbose else logging.WARNING, format="%(message)s")
    tune_malloc()  # keep per-batch buffers in the heap: no page faults on every batch (utils.general)
    save_dir = Path(opt.save_dir)
    try:
        ensure_builtin_dataset(opt.data)
        if opt.task == "test":
            evaluation.test(
                opt.cfg, opt.data, opt.weights or None, opt.batch_size, opt.img_size, opt.conf_thres, opt.iou_thres,
                opt.save_json, opt.single_cls, device=opt.device, save_dir=save_dir, coco_json=opt.coco_json,
                half=opt.half, workers=opt.workers, cache_check=opt.cache_check,
            )  # fmt: skip
        else:
            sizes, out = range(320, 609, 64), save_dir / "benchmark.txt"
            if opt.task == "study":
                sizes = range(256, 641, 64)
                out = save_dir / f"study_{Path(opt.cfg).stem}_{Path(opt.weights).stem or 'random'}.txt"
            sweep(sizes, out, opt.cfg, opt.data, opt.weights, opt.batch_size, opt.conf_thres, opt.iou_thres,
                  opt.single_cls, opt.device, opt.workers)  # fmt: skip
    except (FileNotFoundError, ImportError, ValueError) as e:
        print(f"test.py: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Inference workloads: eval-mode forward ms/image (unfused and conv+BN fused) and NMS ms/image."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from bench.synthetic import TINY_LAYERS, YOLOV3_LAYERS, candidate_counts, trained_like_predictions
from bench.timing import measure
from bench.training import autocast_for, build_model


def bench_inference(
    cfg: Path,
    img_size: int,
    batches: list[int],
    device: torch.device,
    channels_last: bool,
    precisions: list[str],
    reps: int,
    budget_s: float,
    nc: int = 80,
) -> list[dict[str, object]]:
    """Rows of eval-mode forward ms/image for every (fused, batch, precision), one model build.

    Inputs are random images: a forward's cost does not depend on pixel values. `torch.inference_mode`,
    as test.py and detect.py run.
    """
    base = build_model(cfg, img_size, nc, device, channels_last).eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    rows = []
    for fused in (False, True):
        model = copy.deepcopy(base).fuse() if fused else base
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        for precision in precisions:
            autocast = autocast_for(device, precision)
            for batch in batches:
                x = torch.rand(batch, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
                x = x.to(device).contiguous(memory_format=fmt)

                def forward(model=model, x=x, autocast=autocast) -> None:
                    with torch.inference_mode(), autocast():
                        model(x)

                timing = measure(forward, reps=reps, warmup=1, budget_s=budget_s, device=device)
                rows.append({
                    "model": cfg.stem,
                    "img_size": img_size,
                    "batch_size": batch,
                    "fused": fused,
                    "precision": precision,
                    "channels_last": channels_last,
                    "ms_per_img": timing.per_item_ms(batch),
                })
    return rows


def synthetic_layouts(quick: bool) -> list[tuple[str, int, int, list]]:
    """(name, img_size, nc, layers) of the synthetic NMS inputs: the reference's case (a 3-class
    yolov3-tiny at 320) and a COCO yolov3-spp at 416 (10,647 rows, 80 classes)."""
    if quick:
        return [("yolov3-tiny@64/nc3", 64, 3, TINY_LAYERS)]
    return [("yolov3-tiny@320/nc3", 320, 3, TINY_LAYERS), ("yolov3-spp@416/nc80", 416, 80, YOLOV3_LAYERS)]


def model_predictions(
    cfg: Path, weights: Path, images: str | list[str], img_size: int, n_images: int, device: torch.device
) -> tuple[torch.Tensor, int]:
    """Eval-mode outputs (n_images, N, 5 + nc) of a trained model on the first letterboxed images of the set,
    and nc (read from the weights: the output channels of the conv feeding the first YOLO layer)."""
    from models import Darknet
    from utils.datasets import LoadImagesAndLabels
    from utils.weights import load_weights

    nc = 80
    if weights.suffix == ".pt":
        ckpt = torch.load(weights, map_location="cpu", weights_only=False)
        state = (ckpt.get("ema") or ckpt.get("model") or ckpt) if isinstance(ckpt, dict) else ckpt
        if hasattr(state, "state_dict"):
            state = state.state_dict()
        probe = Darknet(str(cfg), img_size=(img_size, img_size))
        layer = probe.yolo_layers[0]
        key = f"module_list.{layer - 1}.Conv2d.weight"
        if key in state:
            nc = state[key].shape[0] // probe.module_list[layer].na - 5
    model = Darknet(str(cfg), img_size=(img_size, img_size), nc=nc)
    load_weights(model, str(weights))
    model.to(device).eval()
    dataset = LoadImagesAndLabels(images, img_size=img_size, batch_size=n_images, augment=False, verbose=False)
    items = [dataset[i % dataset.n] for i in range(n_images)]
    imgs = LoadImagesAndLabels.collate_fn(items)[0].to(device).float() / 255
    with torch.inference_mode():
        pred = model(imgs)[0]
    return pred.float(), nc


def bench_nms(
    pred: torch.Tensor, source: str, layout: str, conf_list: list[float], reps: int
) -> list[dict[str, object]]:
    """ms/image of non_max_suppression (iou 0.6, multi-label, merge: test.py's settings) on `pred`
    (n, N, 5 + nc): at batch 1 (one call per image, over all n images) and at batch n (one call)."""
    from utils.nms import non_max_suppression

    n = len(pred)
    rows = []
    for conf in conf_list:
        counts = candidate_counts(pred, conf)
        for batch in (1, n):

            def run(batch=batch, conf=conf) -> None:
                for i in range(0, n, batch):
                    non_max_suppression(pred[i : i + batch], conf_thres=conf, iou_thres=0.6, multi_label=True)

            timing = measure(run, reps=reps, warmup=1)
            kept = sum(len(d) for d in non_max_suppression(pred, conf_thres=conf, iou_thres=0.6)) / n
            rows.append({
                "source": source,
                "layout": layout,
                "conf_thres": conf,
                "batch_size": batch,
                "images": n,
                "rows_above_conf": counts["rows"],
                "pairs_above_conf": counts["pairs"],
                "kept_per_img": kept,
                "ms_per_img": timing.per_item_ms(n),
            })
    return rows


def synthetic_nms(quick: bool, n_images: int, reps: int, device: torch.device) -> list[dict[str, object]]:
    """NMS rows on every synthetic layout."""
    rows = []
    for name, img_size, nc, layers in synthetic_layouts(quick):
        pred = trained_like_predictions(n_images, img_size, nc, layers, seed=0).to(device)
        rows += bench_nms(pred, "synthetic", name, [0.001, 0.1], reps)
    return rows

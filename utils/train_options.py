"""The train.py command line: its flags, their checks, and the values derived from them (image sizes)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from utils.label_cache import CACHE_CHECK_HELP, CACHE_CHECKS
from utils.schedule import RECIPES, SCHEDULES, multi_scale_range

REPO = Path(__file__).resolve().parents[1]
GS = 32  # the network's largest stride: image sizes must be multiples of it


def build_parser(argument_default: Any = None) -> argparse.ArgumentParser:
    """The train.py command line. ``argument_default=argparse.SUPPRESS`` yields only the flags given."""
    p = argparse.ArgumentParser(
        prog="train.py",
        description="Train a Darknet-cfg YOLOv3 network (ultralytics/yolov3 compatible).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        argument_default=argument_default,
    )

    def d(value: Any) -> Any:  # defaults only in the normal parser
        return argparse.SUPPRESS if argument_default is argparse.SUPPRESS else value

    # in the order --help lists them
    for add in (_add_model_and_data, _add_run_flags, _add_device_and_loading, _add_recipe):
        add(p, d)
    return p


def _add_model_and_data(p: argparse.ArgumentParser, d: Callable[[Any], Any]) -> None:
    """What is trained on what: epochs, batch, model, data set, image sizes."""
    p.add_argument("--epochs", type=int, default=d(100), help="number of epochs")
    p.add_argument("--batch-size", type=int, default=d(16), help="global batch size (split over torchrun ranks)")
    p.add_argument("--accumulate", type=int, default=d(None), metavar="N",
                   help="batches per optimizer step (default: max(round(64 / batch-size), 1), reached by a ramp "
                   "from 1 during burn-in; --recipe 2019: 4); a value given here overrides the default")
    p.add_argument("--cfg", default=d("cfg/yolov3-spp.cfg"), help="model .cfg file")
    p.add_argument(
        "--data-cfg", "--data", dest="data", default=d("data/shapes.data"),
        help="data set .data file (the built-in data/shapes.data is generated on first use)",
    )  # fmt: skip
    p.add_argument("--multi-scale", action="store_true", default=d(False),
                   help="a new training size at every optimizer step, in [img-size // 1.5, img-size // 0.667] "
                   "floored to multiples of 32 (416: 256..608); --recipe 2019: every 10 steps in 288..640 for 416")
    p.add_argument("--img-size", type=int, nargs="+", default=d([416]), metavar="SIZE",
                   help="pixels, multiples of 32, as the reference: 'SIZE' trains and tests at SIZE; 'MIN MAX' "
                   "trains multi-scale in MIN..MAX and tests at MAX; 'MIN MAX TEST' sets the test size too")
    p.add_argument("--rect", action="store_true", default=d(False), help="rectangular training batches (no mosaic)")


def _add_run_flags(p: argparse.ArgumentParser, d: Callable[[Any], Any]) -> None:
    """How the run starts and what it writes: resume, transfer, saving, testing, evolve, weights."""
    p.add_argument("--resume", action="store_true", default=d(False),
                   help="continue a stopped run exactly where it stopped: --weights PATH, else "
                   "<project>/<name>/weights/last.pt with --name, else the latest stopped run (never one that is "
                   "still training: a run folder belongs to one live trainer). --resume --epochs N with N above the "
                   "epochs done extends a run, a finished one too; the schedule is then recomputed for N epochs "
                   "from the next epoch on (the cosine's remaining epochs follow the N-epoch curve, MultiStep's "
                   "milestones move to 80%%/90%% of N; burn-in is not repeated). Exit code 0 when the epochs are "
                   "done, 130 / 143 when Ctrl-C / SIGTERM stopped the run after saving")
    p.add_argument("--transfer", action="store_true", default=d(False),
                   help="transfer learning as the seed: load weights/yolov3-spp.pt (or --weights) where shapes fit "
                   "and train only the output convolutions (to fine-tune every layer, use --weights alone)")
    p.add_argument("--num-workers", type=int, default=d(min(4, os.cpu_count() or 1)), help="data loader workers")
    p.add_argument("--nosave", action="store_true", default=d(False), help="save only the final checkpoint")
    p.add_argument("--notest", action="store_true", default=d(False), help="test only after the final epoch")
    p.add_argument("--xywh", action="store_true", default=d(False),
                   help="the seed's MSE x,y,w,h box loss instead of GIoU (uses hyp xy, wh)")
    p.add_argument("--evolve", type=int, nargs="?", const=300, default=d(None), metavar="N",
                   help="evolve hyperparameters for N generations (bare flag: 300)")
    p.add_argument("--bucket", default=d(""), help="gsutil bucket to sync evolve.txt and results with")
    p.add_argument("--var", type=int, default=d(None), help="free debug integer, recorded in the checkpoint only")
    p.add_argument("--weights", default=d(None),
                   help="initial weights: any .pt checkpoint or Darknet .weights file, for any class count: every "
                   "tensor whose name and shape fit is loaded, the rest (the output layers of another nc) start "
                   "fresh, and all layers train; default: the backbone in weights/ when present; '' trains from "
                   "scratch")


def _add_device_and_loading(p: argparse.ArgumentParser, d: Callable[[Any], Any]) -> None:
    """Device, optimizer, image caching, compile, run folder."""
    p.add_argument("--device", default=d(""), help="'' (CUDA if available), cpu, 0, or 0,1")
    p.add_argument("--adam", action="store_true", default=d(False),
                   help="Adam (PyTorch's default betas) instead of SGD; same lr0 and groups")
    p.add_argument("--cache-images", action="store_true", default=d(False), help="cache images in memory")
    p.add_argument("--cache-check", choices=CACHE_CHECKS, default=d("mtime"), help=CACHE_CHECK_HELP)
    p.add_argument("--ram-cache-mb", type=float, default=d(1024.0), metavar="MB",
                   help="without --cache-images: keep up to MB MiB of decoded, resized images per data set in one "
                   "shared-memory cache (at most half of /dev/shm's free space; items identical with or without "
                   "it; 0 switches it off). A 200k-image set needs ~70 GiB at 416: the bound keeps the first images "
                   "that fit and decodes the rest")
    p.add_argument("--compile", action="store_true", default=d(False),
                   help="run the model's forward through torch.compile (opt-in: minutes to compile, then a few "
                   "percent faster on CPU; not bit-identical to eager; falls back to eager if compiling fails)")
    p.add_argument("--single-cls", action="store_true", default=d(False), help="train as a single-class data set")
    p.add_argument("--name", default=d(None), help="run name: results go to <project>/<name> (default exp)")
    p.add_argument("--project", default=d("runs"), help="folder holding the runs")


def _add_recipe(p: argparse.ArgumentParser, d: Callable[[Any], Any]) -> None:
    """The training recipe: freezing, hyperparameters, seed, burn-in, schedule, precision, EMA."""
    p.add_argument("--freeze-layers", action="store_true", default=d(False),
                   help="train only the output convolutions, starting from --weights")
    p.add_argument("--hyp", default=d(None), help="hyperparameter file: YAML by key or hyp*.txt by position")
    p.add_argument("--seed", type=int, default=d(0), help="random seed (data order, augmentation, init)")
    p.add_argument("--deterministic", action="store_true", default=d(False),
                   help="deterministic algorithms (bit-exact resume on CPU)")
    p.add_argument("--recipe", choices=RECIPES, default=d("2020"),
                   help="2020: the reference's 2020 recipe (long burn-in ramping lr, momentum, weight decay, "
                   "accumulation and gr; cosine schedule to 0.05 lr0; EMA). 2019: the seed's (short lr**4 burn-in, "
                   "MultiStep at 80%%/90%%, accumulate 4, no EMA)")
    p.add_argument("--burn-in", type=int, default=d(None), metavar="N",
                   help="burn-in batches (default max(3 * batches per epoch, 500); --recipe 2019: "
                   "min(round(batches per epoch / 5 + 1), 1000)); 0 switches burn-in off")
    p.add_argument("--schedule", choices=SCHEDULES, default=d(None),
                   help="per-epoch lr factor: cos ((1 + cos(pi * epoch / epochs)) / 2 * 0.95 + 0.05) or multistep "
                   "(x0.1 at 80%% and 90%% of the epochs); default: the recipe's (2020 cos, 2019 multistep)")
    p.add_argument("--no-amp", action="store_true", default=d(False), help="no mixed precision on CUDA")
    p.add_argument("--bf16", action="store_true", default=d(False), help="bfloat16 autocast on CPU (opt-in)")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=d(None),
                   help="keep an exponential moving average of the weights, test it and save it as the checkpoint's "
                   "'model' (default: on; --recipe 2019: off)")
    p.add_argument("--smart-bias", action=argparse.BooleanOptionalAction, default=d(None),
                   help="start the heads' objectness biases at -4.5 and class biases at log(0.6 / (nc - 0.99)) "
                   "(default: off with --recipe 2020, whose heads keep PyTorch's init as the reference's do; on "
                   "with --recipe 2019, this project's earlier default: its short burn-in needs it)")
    p.add_argument("--reduced-decode", action="store_true", default=d(False),
                   help="speed: decode training JPEGs shrunk by 2x or more at reduced DCT scale (other pixels than "
                   "the reference's full-resolution decode; see the README's parity table for its mAP cost)")
    p.add_argument("--sync-bn", action="store_true", default=d(False), help="SyncBatchNorm under torchrun")
    # testing hook: behaves exactly like receiving SIGTERM after N batches (counted from this process's start)
    p.add_argument("--stop-after-batches", type=int, default=d(None), help=argparse.SUPPRESS)


def _repo_default(path: str) -> str:
    """A relative default path works from any directory: fall back to the repository's copy."""
    if path and not Path(path).exists() and (REPO / path).exists():
        return str(REPO / path)
    return path


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the command line; contradictions end with ``parser.error`` before anything loads."""
    parser = build_parser()
    opt = parser.parse_args(argv)
    opt.explicit = sorted(vars(build_parser(argparse.SUPPRESS).parse_args(argv)))
    err = parser.error
    _check_img_size(opt.img_size, err)
    for flag, value, low in (("--epochs", opt.epochs, 1), ("--batch-size", opt.batch_size, 1),
                             ("--accumulate", opt.accumulate, 1), ("--num-workers", opt.num_workers, 0)):
        if value is not None and value < low:
            err(f"{flag} {value}: must be >= {low}")
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if opt.batch_size < world:
        err(f"--batch-size {opt.batch_size} is the global batch and must be >= the {world} torchrun ranks")
    if opt.resume and (opt.transfer or opt.evolve is not None):
        err("--resume cannot be combined with --transfer or --evolve (resume continues a run as it was)")
    if opt.rect and opt.multi_scale:
        err("--rect and --multi-scale contradict each other (rect batches have fixed shapes); choose one")
    if opt.evolve is not None and opt.evolve < 1:
        err(f"--evolve {opt.evolve}: need at least 1 generation")
    if opt.burn_in is not None and opt.burn_in < 0:
        err(f"--burn-in {opt.burn_in}: must be >= 0")
    if opt.bf16 and opt.device.strip().lower() not in ("cpu",) and (opt.device.strip() or torch.cuda.is_available()):
        err("--bf16 is the CPU autocast option; on CUDA mixed precision is on by default (--no-amp turns it off)")
    if opt.stop_after_batches is not None and opt.stop_after_batches < 1:
        err("--stop-after-batches must be >= 1")
    opt.cfg = _repo_default(opt.cfg)
    opt.data = _repo_default(opt.data)
    for flag, path in (("--cfg", opt.cfg), ("--data", opt.data), ("--hyp", opt.hyp)):
        if path and not Path(path).is_file():
            err(f"{flag} {path}: file not found")
    return opt



def _check_img_size(img_size: list[int], err: Callable[[str], Any]) -> None:
    """``--img-size``: one to three multiples of ``GS``, MIN not above MAX; ``err`` (``parser.error``) if not."""
    if len(img_size) > 3:
        err(f"--img-size takes one to three values (SIZE, or MIN MAX, or MIN MAX TEST), got {len(img_size)}")
    for s in img_size:
        if s < GS or s % GS:
            err(f"--img-size {s} is not a multiple of {GS}; use {max(GS, round(s / GS) * GS)}")
    if len(img_size) > 1 and img_size[0] > img_size[1]:
        err(f"--img-size {img_size[0]} {img_size[1]}: MIN is larger than MAX; swap them")


def image_sizes(img_size: list[int], multi_scale: bool, recipe: str = "2020") -> tuple[int, int, int, bool]:
    """``(lo, hi, test, multi)`` training size range, test size and whether sizes vary, from ``--img-size``.

    As the reference: one value trains and tests at it (``--multi-scale`` varies it within
    ``utils.schedule.multi_scale_range``); two values ``MIN MAX`` train multi-scale in MIN..MAX and test at MAX;
    a third value is the test size. Images are loaded at ``hi``; the batch is resized to the drawn size.
    """
    sizes = list(img_size) + [img_size[-1]] * (3 - len(img_size))
    lo, hi, test = sizes
    multi = multi_scale or lo != hi
    if multi and lo == hi:
        lo, hi = multi_scale_range(lo, recipe, GS)
    return lo, hi, test, multi



def opt_to_dict(opt: argparse.Namespace) -> dict[str, Any]:
    """Command-line options as plain values (for opt.yaml and checkpoints)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opt).items() if k != "explicit"}


def smart_bias_for(smart_bias: bool | None, recipe: str) -> bool:
    """Whether the heads start from the smart bias: ``--smart-bias`` / ``--no-smart-bias`` when given, else on for
    the 2019 recipe only (measured: without it the 2019 recipe's short burn-in learns far less; with the 2020
    recipe's long burn-in it changes nothing measurable, so the reference's PyTorch init is kept)."""
    return recipe == "2019" if smart_bias is None else bool(smart_bias)

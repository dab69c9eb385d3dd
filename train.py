"""Train a YOLOv3 network described by a Darknet .cfg file on a YOLO-format data set.

    python train.py --cfg cfg/yolov3-tiny.cfg --data data/shapes.data --img-size 256 --epochs 30
    python train.py --resume                      # continue the latest run exactly where it stopped
    python train.py --evolve 50 --epochs 10       # hyperparameter evolution, see runs/evolve/
    torchrun --nproc_per_node 2 train.py ...      # several processes; --batch-size stays the global batch

Every run writes to runs/<name>/ (exp, exp2, ...; an earlier run's files are never overwritten): results.txt
(one row per epoch), hyp.yaml, opt.yaml, labels.png, train_batch0.jpg, test_batch0_*.jpg, results.png and
weights/last.pt (every epoch), best.pt (when fitness improves), backup{epoch}.pt (every 10 epochs).

The default recipe is the reference trainer's of 2020 (``--recipe 2020``, see utils/schedule.py): SGD with Nesterov
momentum in three parameter groups; an optimizer step every ``max(round(64 / batch_size), 1)`` batches; the loss
multiplied by ``batch_size / 64`` before backward (the hyperparameters were evolved at a nominal batch of 64, and
this keeps a gradient step what it was there whatever the batch); a burn-in of ``max(3 * nb, 500)`` batches that
ramps every group's lr, the momentum, the weight decay, the accumulation and ``gr`` together; a cosine schedule
down to 0.05 lr0; an EMA of the weights, which the per-epoch test scores and the checkpoints store as ``model``.
``--recipe 2019`` is the seed's (short lr**4 burn-in, MultiStep, accumulate 4, no EMA). After each epoch (or only
the last with --notest) rank 0 evaluates the valid set with conf_thres 0.001 (single-label NMS during burn-in, as
the reference, since an untrained net yields boxes everywhere).

Ctrl-C or SIGTERM stops after the current batch with a checkpoint at that exact position; ``--resume`` then
continues bit for bit (on CPU with ``--deterministic``) as if never interrupted. Under torchrun, resume by
rerunning the same torchrun command with ``--resume --weights runs/<name>/weights/last.pt`` added: rank 0
picks the checkpoint and every rank loads it from that path, so on several machines it must be on shared
storage (or copied to the same path on each); every rank gets back its own RNG state and pending gradients.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.distributed.elastic.multiprocessing.errors import record
from tqdm import tqdm

import test as evaluation  # this project's test.py (the evaluation CLI), not the standard library package
from models import Darknet, load_weights_fitting
from utils.checkpoint import (
    CheckpointSaveError,
    NonFiniteCheckpointError,
    atomic_save,
    load_checkpoint,
    make_checkpoint,
    previous_checkpoint_note,
    rng_state,
    set_rng_state,
)
from utils.datasets import (
    CACHE_CHECK_HELP,
    CACHE_CHECKS,
    LoadImagesAndLabels,
    resize_batch,
    resolve_data_cfg,
    worker_init,
)
from utils.distributed import (
    DistInfo,
    GlobalBatchSampler,
    all_reduce_sum,
    barrier,
    broadcast_object,
    cleanup_distributed,
    convert_sync_bn,
    setup_distributed,
)
from utils.evolve import (
    best_hyp,
    bucket_url,
    gsutil_available,
    gsutil_cp,
    print_mutation,
    propose_hyp,
    read_evolve,
    write_hyp_yaml,
)
from utils.finite import model_nonfinite
from utils.general import tune_malloc
from utils.hyp import DEFAULT_HYP, HYP_GAINS, derive_loss_hyp, format_hyp, load_hyp
from utils.loss import compute_loss, loss_counts
from utils.metrics import fitness
from utils.parse_config import net_values_used
from utils.plots import plot_evolution_results, plot_images, plot_labels, plot_results
from utils.runlock import RunLockedError, lock_holder
from utils.runs import hold_run_dir, latest_resumable_run, next_run_dir, remove_stale_tmp
from utils.runstop import StopRequest
from utils.schedule import (
    NOMINAL_BATCH,
    RECIPES,
    SCHEDULES,
    SEED_ACCUMULATE,
    Recipe,
    auto_accumulate,
    burn_in_batches,
    multi_scale_range,
)
from utils.shapes import ensure_builtin_dataset
from utils.torch_utils import (
    ModelEMA,
    apply_batch_settings,
    build_optimizer,
    compile_forward,
    de_parallel,
    init_seeds,
    model_info,
)

LOGGER = logging.getLogger("train")
REPO = Path(__file__).resolve().parent
CHANNELS_LAST = torch.channels_last  # memory format of the model and its input batches while training
GS = 32  # the network's largest stride: image sizes must be multiples of it
RESULTS_COLUMNS = (
    "epoch", "gpu_mem", "box", "obj", "cls", "total", "targets", "img_size",
    "P", "R", "mAP@0.5", "mAP@0.5:0.95", "F1", "val_box", "val_obj", "val_cls",
)  # fmt: skip
# taken from the command line on --resume (they do not change what is trained)
RESUME_MAY_CHANGE = ("device", "num_workers", "stop_after_batches", "ram_cache_mb")


class NonFiniteLoss(RuntimeError):
    """The loss or the gradients became inf or NaN; the message names the batch's images, the loss components
    and which checkpoint files hold the last finite state."""


@dataclass
class TrainResult:
    """What ``train`` hands back: the last test results (results order), how it ended, and where."""

    results: tuple[float, ...]
    stopped: bool
    save_dir: Path
    best_fitness: float
    exit_code: int = 0  # utils.runstop: 0 finished, 130 / 143 stopped by SIGINT / SIGTERM


# ---------------------------------------------------------------------------------------------- command line


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
    p.add_argument("--reduced-decode", action="store_true", default=d(False),
                   help="speed: decode training JPEGs shrunk by 2x or more at reduced DCT scale (other pixels than "
                   "the reference's full-resolution decode; see the README's parity table for its mAP cost)")
    p.add_argument("--sync-bn", action="store_true", default=d(False), help="SyncBatchNorm under torchrun")
    # testing hook: behaves exactly like receiving SIGTERM after N batches (counted from this process's start)
    p.add_argument("--stop-after-batches", type=int, default=d(None), help=argparse.SUPPRESS)
    return p


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
    if len(opt.img_size) > 3:
        err(f"--img-size takes one to three values (SIZE, or MIN MAX, or MIN MAX TEST), got {len(opt.img_size)}")
    for s in opt.img_size:
        if s < GS or s % GS:
            err(f"--img-size {s} is not a multiple of {GS}; use {max(GS, round(s / GS) * GS)}")
    if len(opt.img_size) > 1 and opt.img_size[0] > opt.img_size[1]:
        err(f"--img-size {opt.img_size[0]} {opt.img_size[1]}: MIN is larger than MAX; swap them")
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


# ---------------------------------------------------------------------------------------------- model helpers


def default_weights(cfg: str, weights_dir: Path) -> Path | None:
    """The Darknet backbone a cfg starts from when --weights is not given: tiny cfgs use
    ``yolov3-tiny.conv.15``, others ``darknet53.conv.74`` (cutoff from the name); None when the file is absent."""
    name = "yolov3-tiny.conv.15" if "tiny" in Path(cfg).name else "darknet53.conv.74"
    path = weights_dir / name
    return path if path.is_file() else None


def output_layer_indices(model: nn.Module) -> list[int]:
    """Indices in ``module_list`` of the convolutions feeding each YOLO layer (the only ones --transfer trains)."""
    return [j - 1 for j in de_parallel(model).yolo_layers]


def freeze_non_output(model: nn.Module) -> int:
    """Freeze every parameter except those of the output convolutions; returns how many tensors froze."""
    keep = tuple(f"module_list.{i}." for i in output_layer_indices(model))
    frozen = 0
    for name, p in model.named_parameters():
        trainable = name.startswith(keep)
        p.requires_grad_(trainable)
        frozen += not trainable
    return frozen


def initial_weights_path(opt: argparse.Namespace, weights_dir: Path) -> Path | None:
    """The file the run starts from: ``--weights``; else for ``--transfer`` ``weights/yolov3-spp.pt``; else the
    Darknet backbone of the cfg in ``weights/`` when present (``default_weights``); None: train from scratch."""
    if opt.weights:
        return Path(opt.weights)
    if opt.weights == "":
        return None
    if opt.transfer:
        return weights_dir / "yolov3-spp.pt"
    return default_weights(opt.cfg, weights_dir)


def load_initial_weights(model: nn.Module, opt: argparse.Namespace, weights_dir: Path, verbose: bool = True) -> None:
    """Initial weights as the options ask. Any .pt or .weights file, any class count: the tensors that fit load,
    the rest start fresh (``models.load_weights_fitting``). All layers train, except with ``--transfer`` /
    ``--freeze-layers``, which train only the output convolutions (the seed's transfer learning)."""
    say = print if verbose else lambda *args, **kwargs: None
    freeze = opt.transfer or opt.freeze_layers
    path = initial_weights_path(opt, weights_dir)
    if path is None:
        if freeze:
            raise FileNotFoundError("--freeze-layers needs --weights PATH (or a backbone in weights/)")
        if opt.weights == "":
            say("Training from scratch (--weights '').")
        else:
            name = "yolov3-tiny.conv.15" if "tiny" in Path(opt.cfg).name else "darknet53.conv.74"
            say(f"WARNING: no pretrained backbone at {weights_dir / name}: training from scratch. Put the file "
                f"there (see weights/README.md) or pass --weights PATH; --weights '' silences this warning.")
        return
    report = load_weights_fitting(model, path)
    skipped = report["skipped"]
    layers = sorted({int(k.split(".")[1]) for k, _ in skipped if k.startswith("module_list.")})
    line = (f"Loaded {report['loaded']} of {report['total']} tensors from {path}"
            + (f" (Darknet, trained for nc={report['file_nc']})" if report["format"] == "darknet" else "")
            + (f"; {len(skipped)} start fresh (layers {_ranges(layers)}: name or shape differ)" if skipped else ""))
    if freeze:
        n_frozen = freeze_non_output(model)
        say(f"{line}; froze {n_frozen} tensors, training only layers {output_layer_indices(model)}")
    else:
        say(f"{line}; training all layers")


def _ranges(values: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``'0-2, 5, 7-8'``."""
    out: list[str] = []
    for v in values:
        if out and v == int(out[-1].split("-")[-1]) + 1:
            out[-1] = f"{out[-1].split('-')[0]}-{v}"
        else:
            out.append(str(v))
    return ", ".join(out)


def memory_gb(device: torch.device) -> float:
    """Memory in use, GB: CUDA memory reserved by torch, or this process's resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.memory_reserved(device) / 1e9
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9
    except (OSError, ValueError, AttributeError):
        return 0.0


def _worker_init(worker_id: int) -> None:
    """Data-loader workers ignore Ctrl-C and SIGTERM sent to the whole process group: the main process stops
    cleanly after the current batch and shuts them down (a worker still exits if its parent dies)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    worker_init(worker_id)


def gradient_state(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """Gradients accumulated but not yet stepped (mid-accumulation), by parameter name; None if none."""
    grads = {n: p.grad.detach().cpu().clone() for n, p in model.named_parameters() if p.grad is not None}
    return grads or None


def save_emergency(ckpt: dict[str, Any], path: Path) -> str:
    """Save the last finite state after a non-finite loss or gradient; says what was saved (never inf/NaN)."""
    try:
        atomic_save(ckpt, path, require_finite=True)
    except NonFiniteCheckpointError as e:
        return f"nothing was saved ({e})"
    return f"the state before this batch is saved to {path}"


def resume_command(last: Path, info: DistInfo) -> str:
    """How to continue a stopped run from ``last``: the same launcher, with --resume (torchrun restarts every
    rank; the other flags may stay, the checkpoint's options win)."""
    if info.distributed:
        return (f"the same torchrun command with --resume --weights {last} added (every rank needs {last} "
                f"at that path)")
    return f"python train.py --resume --weights {last}"


def gather_rank_states(state: dict[str, Any], info: DistInfo) -> list[dict[str, Any]]:
    """Every rank's ``state`` (RNG, pending gradients), in rank order, on every rank."""
    if not info.distributed:
        return [state]
    return [broadcast_object(state if info.rank == r else None, info, src=r) for r in range(info.world_size)]


def tensorboard_writer(save_dir: Path) -> Any:
    """A TensorBoard SummaryWriter logging into ``save_dir`` when the tensorboard package is installed, else None."""
    if importlib.util.find_spec("tensorboard") is None:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(save_dir))


def epoch_summary(epoch: int, results: tuple[float, ...], fit: float, improved: bool) -> str:
    """One line per epoch: the test metrics and validation losses (results order) and the fitness."""
    p, r, map50, map5095, f1, vbox, vobj, vcls = results
    return (f"Epoch {epoch}: P {p:.3f}  R {r:.3f}  mAP@0.5 {map50:.3f}  mAP@0.5:0.95 {map5095:.3f}  F1 {f1:.3f}  "
            f"val box {vbox:.4g} obj {vobj:.4g} cls {vcls:.4g}  fitness {fit:.4f}{' (best)' if improved else ''}")


def results_header() -> str:
    return "".join(f"{c:>13s}" for c in RESULTS_COLUMNS) + "\n"


def results_row(epoch: int, mem: float, mloss: torch.Tensor, n_targets: int, img_size: int, results) -> str:
    values = [epoch, mem, *mloss.tolist(), n_targets, img_size, *results]
    return "".join(f"{v:>13.5g}" for v in values) + "\n"


# ---------------------------------------------------------------------------------------------- training


def train(
    opt: argparse.Namespace,
    hyp: dict[str, float],
    save_dir: Path,
    device: torch.device,
    info: DistInfo | None = None,
    ckpt: dict[str, Any] | None = None,
    weights_dir: Path = REPO / "weights",
) -> TrainResult:
    """Train as ``opt`` describes, writing into ``save_dir`` (rank 0 only). ``ckpt`` resumes from a checkpoint.

    Raises:
        NonFiniteLoss: the loss became inf/NaN (weights/emergency.pt was saved; last.pt is untouched).
        ValueError, FileNotFoundError: bad data, cfg or weights, before training starts.
    """
    info = info or DistInfo()
    main_rank = info.is_main
    save_dir = Path(save_dir)
    wdir = save_dir / "weights"
    last, best = wdir / "last.pt", wdir / "best.pt"
    results_file = save_dir / "results.txt"
    if main_rank:
        wdir.mkdir(parents=True, exist_ok=True)
    init_seeds(opt.seed + info.rank, opt.deterministic)
    lo, hi, test_size, multi_scale = image_sizes(opt.img_size, opt.multi_scale, opt.recipe)
    world, epochs = info.world_size, opt.epochs
    stop = StopRequest(opt.stop_after_batches, announce_fd=2 if main_rank else None)

    # Data. Label problems surface here, before any training.
    data = resolve_data_cfg(opt.data)
    data_nc = int(data["classes"])  # labels are checked against the data set's classes, then merged by --single-cls
    nc = 1 if opt.single_cls else data_nc
    names = ["item"] if opt.single_cls and len(data["names"]) != 1 else list(data["names"])
    loss_hyp = derive_loss_hyp(hyp, nc)
    # images load at the largest training size; multi-scale batches are resized down to the drawn size
    dataset = LoadImagesAndLabels(data["train"], hi, opt.batch_size, augment=True, hyp=hyp, rect=opt.rect,
                                  cache_images=opt.cache_images, single_cls=opt.single_cls, nc=data_nc, seed=opt.seed,
                                  verbose=main_rank, reduced_decode=opt.reduced_decode, cache_check=opt.cache_check,
                                  ram_cache_mb=opt.ram_cache_mb)
    batch_size = min(opt.batch_size, dataset.n)  # as the reference: a set smaller than a batch is one batch
    sampler = GlobalBatchSampler(dataset.n, batch_size, world, info.rank, shuffle=not opt.rect, seed=opt.seed,
                                 batches=dataset.batch_indices() if opt.rect else None)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=opt.num_workers,
                                         collate_fn=LoadImagesAndLabels.collate_fn, pin_memory=device.type == "cuda",
                                         worker_init_fn=_worker_init, persistent_workers=opt.num_workers > 0)
    nb = len(sampler)
    testloader = None
    if main_rank:
        testset = LoadImagesAndLabels(data["valid"], test_size, batch_size, hyp=hyp, rect=True,
                                      cache_images=opt.cache_images, single_cls=opt.single_cls, nc=data_nc, pad=0.5,
                                      cache_check=opt.cache_check, ram_cache_mb=opt.ram_cache_mb)
        testloader = torch.utils.data.DataLoader(testset, batch_size=batch_size, num_workers=opt.num_workers,
                                                 collate_fn=LoadImagesAndLabels.collate_fn,
                                                 pin_memory=device.type == "cuda", worker_init_fn=_worker_init,
                                                 persistent_workers=opt.num_workers > 0)

    recipe = Recipe(
        name=opt.recipe, epochs=epochs, nb=nb, n_burn=burn_in_batches(nb, opt.recipe, opt.burn_in),
        schedule=opt.schedule or ("cos" if opt.recipe == "2020" else "multistep"),
        accumulate=opt.accumulate or (auto_accumulate(batch_size) if opt.recipe == "2020" else SEED_ACCUMULATE),
        lr0=hyp["lr0"], momentum=hyp["momentum"], weight_decay=hyp["weight_decay"],
    )  # fmt: skip

    # Model, initial weights, optimizer, EMA, AMP.
    # channels-last: the convolution kernels are faster in NHWC on CPU (oneDNN) and on CUDA tensor cores
    net_used = net_values_used(batch_size, recipe.steps_accumulate, hi, hyp, recipe.n_burn, recipe.schedule)
    model = Darknet(opt.cfg, img_size=(hi, hi), nc=nc, warn_unused=main_rank, net_used=net_used)
    model = model.to(device, memory_format=CHANNELS_LAST)
    cfg_text = Path(opt.cfg).read_text()
    if ckpt is None:  # every rank loads (freezing must happen everywhere); DDP then broadcasts rank 0's weights
        load_initial_weights(model, opt, weights_dir, verbose=main_rank)
    else:
        if opt.transfer or opt.freeze_layers:
            freeze_non_output(model)
        model.load_state_dict(ckpt["model_raw"] if "model_raw" in ckpt else ckpt["model"])
    optimizer = build_optimizer(model, hyp, opt.adam)
    use_ema = opt.ema if opt.ema is not None else opt.recipe == "2020"
    ema = ModelEMA(model) if use_ema and main_rank else None  # only rank 0 tests and saves; DDP keeps weights equal
    use_amp = device.type == "cuda" and not opt.no_amp or device.type == "cpu" and opt.bf16
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp and device.type == "cuda")

    start_epoch, start_batch, best_fitness = 0, 0, 0.0
    mloss, mloss_n = torch.zeros(4), 0  # running means of (box, obj, cls, total) over this epoch's batches
    if ckpt is not None:
        start_epoch, start_batch = ckpt["epoch"] + 1, ckpt.get("batch", 0)
        best_fitness = ckpt.get("best_fitness") or 0.0
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        if ema is not None and ckpt.get("ema_updates") is not None:
            ema.ema.load_state_dict(ckpt["model"])  # a checkpoint's 'model' is the EMA when the run keeps one
            ema.updates = ckpt["ema_updates"]
        if start_batch:
            mloss, mloss_n = ckpt["mloss"].clone(), ckpt["mloss_n"]
        restore_rank_state(model, ckpt, info, device)
        if main_rank:
            results_file.write_text(ckpt.get("training_results") or results_header())
            print(f"Resuming from epoch {start_epoch}, batch {start_batch} of {nb} ({save_dir})")
    elif main_rank:
        results_file.write_text(results_header())
        (save_dir / "hyp.yaml").write_text(yaml.safe_dump(dict(hyp), sort_keys=False))
        (save_dir / "opt.yaml").write_text(yaml.safe_dump(opt_to_dict(opt), sort_keys=False))
        boxes = [lb for lb in dataset.labels if len(lb)]
        plot_labels(np.concatenate(boxes) if boxes else np.zeros((0, 5), np.float32), names, save_dir / "labels.png")

    if opt.sync_bn:
        model = convert_sync_bn(model, info)
    if info.distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    raw_model = de_parallel(model)
    forward = compile_forward(model) if opt.compile else model  # the model itself stays what is saved and stepped
    # BatchNorm statistics as they were before the current batch's forward: a batch whose loss is not finite has
    # already updated them, and the emergency checkpoint must hold the last finite state
    float_buffers = [b for b in raw_model.buffers() if b.is_floating_point()]
    buffers_before = [b.detach().clone() for b in float_buffers]

    def snapshot(epoch_done: int, batch: int, rank_states: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The checkpoint at this position: ``epoch_done`` completed epochs, ``batch`` next in the next one."""
        return make_checkpoint(
            epoch=epoch_done, best_fitness=best_fitness,
            training_results=results_file.read_text() if results_file.exists() else "",
            model=raw_model if ema is None else ema.ema, model_raw=raw_model, optimizer=optimizer, scaler=scaler,
            scheduler=recipe.describe(epoch_done + 1), ema_updates=None if ema is None else ema.updates,
            hyp=hyp, opt=opt_to_dict(opt), cfg_text=cfg_text, names=names, batch=batch,
            ranks=rank_states, mloss=mloss.clone(), mloss_n=mloss_n,
        )  # fmt: skip

    if main_rank:
        print(format_hyp(hyp))
        model_info(raw_model, img_size=hi)
        sizes = f"{lo}-{hi} (multi-scale)" if multi_scale else f"{hi}"
        print(f"Image sizes {sizes} train, {test_size} test; {world} rank(s), global batch {batch_size}, "
              f"accumulate {recipe.steps_accumulate}, {nb} batches per epoch; recipe {recipe.name}: burn-in "
              f"{recipe.n_burn} batches, {recipe.schedule} schedule, EMA {'on' if ema is not None else 'off'}; "
              f"{opt.num_workers} data workers; results in {save_dir}\nStarting training for {epochs} epochs...")

    tb = tensorboard_writer(save_dir) if main_rank else None
    results: tuple[float, ...] = (0.0,) * 8
    t0 = time.time()
    stop.install()
    try:
        for epoch in range(start_epoch, epochs):
            model.train()  # frozen layers too: their BatchNorm statistics follow the new data, as the reference
            dataset.set_epoch(epoch)
            sampler.set_epoch(epoch)
            first = start_batch if epoch == start_epoch else 0
            sampler.set_start(first)
            if first == 0:
                mloss, mloss_n = torch.zeros(4), 0
            if main_rank:
                print(("\n" + "%10s" * 8) % ("Epoch", "gpu_mem", "xy" if opt.xywh else "GIoU", "obj", "cls", "total",
                                             "targets", "img_size"))
            pbar = tqdm(enumerate(loader, first), total=nb, initial=first, disable=not main_rank,
                        bar_format="{l_bar}{bar:10}{r_bar}")
            for i, (imgs, targets, paths, _) in pbar:
                stop.count_batch()
                ni = i + nb * epoch  # integrated batch index
                settings = recipe.settings(ni)  # burn-in ramps and the epoch's lr, a pure function of ni
                apply_batch_settings(optimizer, settings.lr, settings.weight_decay, settings.momentum)
                imgs = imgs.to(device, non_blocking=True).float() / 255.0
                targets = targets.to(device)
                if multi_scale:
                    imgs = resize_batch(imgs, recipe.multi_scale_size(ni, lo, hi, opt.seed, GS))
                imgs = imgs.contiguous(memory_format=CHANNELS_LAST)
                stepping = recipe.steps_after(ni)
                # DDP: skip the gradient all-reduce on batches that only accumulate (forward must be inside too)
                sync = model.no_sync() if info.distributed and not stepping else contextlib.nullcontext()
                torch._foreach_copy_(buffers_before, float_buffers)
                with sync:
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                        pred = forward(imgs)
                    pred = [p.float() for p in pred]  # the loss in float32 whatever the autocast dtype
                    denominators = all_reduce_sum(loss_counts(pred, targets, raw_model, loss_hyp), info) \
                        if info.distributed else None
                    loss, loss_items = compute_loss(pred, targets, raw_model, hyp=loss_hyp, gr=settings.gr,
                                                    xywh=opt.xywh,
                                                    denominators=denominators)
                    # one collective for the global loss items, target count and any rank's stop request
                    shared = all_reduce_sum(torch.cat([loss_items, loss_items.new_tensor(
                        [len(targets), float(stop.requested)])]), info)
                    loss_items, n_targets, stop_any = shared[:4], int(shared[4]), bool(shared[5] > 0)
                    if not torch.isfinite(loss_items).all():
                        torch._foreach_copy_(float_buffers, buffers_before)
                        states = gather_rank_states({"rng": rng_state(), "grads": gradient_state(raw_model)}, info)
                        saved = save_emergency(snapshot(epoch - 1, i, states), wdir / "emergency.pt") \
                            if main_rank else ""
                        raise NonFiniteLoss(
                            f"non-finite loss at epoch {epoch} batch {i}: box, obj, cls, total = "
                            f"{loss_items.tolist()}; images of this batch:\n  " + "\n  ".join(paths)
                            + f"\n{saved}; {previous_checkpoint_note(last)}")
                    loss = loss * (batch_size / NOMINAL_BATCH) * world  # hyp evolved at bs 64; DDP averages ranks
                    scaler.scale(loss).backward()
                # fp16 AMP's GradScaler skips steps with inf/NaN gradients itself; otherwise they would poison the
                # weights, so look before stepping (DDP: the gradients are all-reduced, every rank agrees)
                bad = model_nonfinite(raw_model, weights=False, grads=True) \
                    if stepping and not scaler.is_enabled() else []
                if bad:
                    torch._foreach_copy_(float_buffers, buffers_before)
                    states = gather_rank_states({"rng": rng_state(), "grads": None}, info)
                    saved = save_emergency(snapshot(epoch - 1, i, states), wdir / "emergency.pt") \
                        if main_rank else ""
                    raise NonFiniteLoss(
                        f"non-finite gradients at epoch {epoch} batch {i} ({', '.join(bad[:3])}"
                        f"{' and more' if len(bad) > 3 else ''}): the weights were not updated; images of this "
                        f"batch:\n  " + "\n  ".join(paths) + f"\n{saved} (without the gradients accumulated "
                        f"since the last optimizer step); {previous_checkpoint_note(last)}")
                if stepping:
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    if ema is not None:
                        ema.update(raw_model)

                mloss = (mloss * mloss_n + loss_items.cpu()) / (mloss_n + 1)
                mloss_n += 1
                img_size = max(imgs.shape[2:])
                if main_rank:
                    pbar.set_description(("%10s" * 2 + "%10.3g" * 6) % (
                        f"{epoch}/{epochs - 1}", f"{memory_gb(device):.3g}G", *mloss.tolist(), n_targets, img_size))
                    if ni == 0:
                        plot_images(imgs, targets, paths=paths, fname=save_dir / "train_batch0.jpg", names=names)
                if stop_any and i + 1 < nb:
                    states = gather_rank_states({"rng": rng_state(), "grads": gradient_state(raw_model)}, info)
                    if main_rank:
                        atomic_save(snapshot(epoch - 1, i + 1, states), last, require_finite=True)
                        print(f"\nStopped at epoch {epoch} batch {i + 1}/{nb}; saved {last}. "
                              f"Continue with: {resume_command(last, info)}")
                    barrier(info)
                    return TrainResult(results, True, save_dir, best_fitness, stop.exit_code(False))

            # End of epoch: test and log (rank 0), then save (rank 0, with every rank's RNG state).
            final = epoch + 1 == epochs
            if main_rank:
                if not opt.notest or final:
                    with stop.during(f"the test of epoch {epoch}"):
                        results, _maps = evaluation.test(
                            opt.cfg, opt.data, batch_size=batch_size, img_size=test_size,
                            model=ema.ema if ema is not None else raw_model, dataloader=testloader,
                            conf_thres=0.001, iou_thres=0.6, single_cls=opt.single_cls, save_dir=save_dir,
                            names=names, hyp=loss_hyp, gr=settings.gr, plots=epoch == start_epoch or final,
                            multi_label=ni > recipe.n_burn,
                        )  # fmt: skip
                    results = tuple(float(x) for x in results)
                with results_file.open("a") as f:
                    f.write(results_row(epoch, memory_gb(device), mloss, n_targets, img_size, results))
                fit = float(fitness(np.array(results)))
                improved = fit > best_fitness or not best.exists()
                best_fitness = max(best_fitness, fit)
                print(epoch_summary(epoch, results, fit, improved))
                if tb is not None:
                    for k, v in zip(RESULTS_COLUMNS[2:], [*mloss.tolist(), n_targets, img_size, *results]):
                        tb.add_scalar(k, v, epoch)
            # the other ranks wait here while rank 0 tests; a stop request on any rank stops all (and, even
            # with --nosave, saves last.pt so that the run can be resumed)
            stop_any = all_reduce_sum(torch.tensor([float(stop.requested)]), info).item() > 0
            if not opt.nosave or final or stop_any:
                # taken after the test: iterating its DataLoader draws from rank 0's torch RNG; the 2020 recipe
                # accumulates across epoch ends, so gradients may be pending here too
                states = gather_rank_states({"rng": rng_state(), "grads": gradient_state(raw_model)}, info)
                if main_rank:
                    ckpt_now = snapshot(epoch, 0, states)
                    atomic_save(ckpt_now, last, require_finite=True)
                    if improved and not opt.nosave:
                        atomic_save(ckpt_now, best)
                    if epoch > 0 and epoch % 10 == 0 and not opt.nosave:
                        atomic_save(ckpt_now, wdir / f"backup{epoch}.pt")
                    del ckpt_now
            barrier(info)
            if stop_any:
                if main_rank and not final:
                    print(f"\nStopped after epoch {epoch}; continue with: {resume_command(last, info)}")
                return TrainResult(results, not final, save_dir, best_fitness, stop.exit_code(final))
    finally:
        stop.uninstall()
        if tb is not None:
            tb.close()

    if main_rank:
        plot_results(results_file, save_dir / "results.png")
        print(f"{epochs - start_epoch} epochs completed in {(time.time() - t0) / 3600:.3f} hours. "
              f"Results in {save_dir}")
    return TrainResult(results, False, save_dir, best_fitness)


def restore_rank_state(model: nn.Module, ckpt: dict[str, Any], info: DistInfo, device: torch.device) -> None:
    """Restore this rank's RNG states and pending (accumulated, not yet stepped) gradients from a checkpoint.

    ``ckpt['ranks']`` holds one ``{"rng", "grads"}`` entry per rank of the run that saved it. With a different
    number of ranks the pending gradients are dropped (a warning says so) and each rank that has an entry
    takes its RNG from it; a rank without one keeps its fresh ``seed + rank`` seeding, so no two ranks share
    a random stream. A checkpoint without ``ranks`` restores its ``rng`` on rank 0 only.
    """
    ranks = ckpt.get("ranks") or [{"rng": ckpt.get("rng"), "grads": None}]
    same_world = len(ranks) == info.world_size
    if not same_world and any(r.get("grads") for r in ranks):
        LOGGER.warning("checkpoint was written by %d rank(s), this run has %d: the gradients accumulated "
                       "before the interruption are dropped", len(ranks), info.world_size)
    state = ranks[info.rank] if info.rank < len(ranks) else {}
    if state.get("rng"):
        set_rng_state(state["rng"])
    grads = (state.get("grads") if same_world else None) or {}
    for name, p in model.named_parameters():
        if name in grads:
            p.grad = grads[name].to(device=device, dtype=p.dtype)


# ---------------------------------------------------------------------------------------------- resume, evolve


class ResumeError(ValueError):
    """--resume cannot continue: no run to resume, or the chosen run folder is held by a live trainer."""


def run_folder(path: Path) -> Path:
    """The run folder of a checkpoint: ``runs/NAME`` for ``runs/NAME/weights/last.pt``."""
    return path.parent.parent if path.parent.name == "weights" else path.parent


def find_resume_checkpoint(opt: argparse.Namespace) -> Path:
    """--resume: --weights PATH if given, else <project>/<name>/weights/last.pt with --name, else the last.pt of the
    most recently saved run in <project> that is stopped, never a live one (with ``--epochs N`` also a finished
    run of fewer epochs, which then extends). Under torchrun only rank 0 calls this (see prepare_resume)."""
    if opt.weights:
        return Path(opt.weights)
    if opt.name:
        return Path(opt.project) / opt.name / "weights" / "last.pt"
    chosen, skipped = latest_resumable_run(opt.project, opt.epochs if "epochs" in opt.explicit else None)
    for s in skipped:
        print(f"--resume: skipped {s.run_dir} ({s.describe()})")
    print(f"--resume: continuing {chosen.run_dir} ({chosen.describe()}), the latest stopped run in {opt.project}")
    return chosen.last


def resume_epochs(saved_epochs: int, epochs_done: int, batch: int, wanted: int | None, path: Path) -> int:
    """The --epochs a resumed run trains to: the checkpoint's, or ``wanted`` (``--resume --epochs N``) when given.

    N larger than the completed epochs extends the run, a finished one too (as the 2019 seed resumed at
    ``epoch + 1`` and ran to the command line's ``--epochs``). The schedule is a pure function of (epoch,
    epochs), so it is then recomputed for N epochs: with the cosine the epochs still to come follow the longer
    curve (the lr goes back up from the floor a finished run ended at); MultiStep's milestones move to 80% / 90%
    of N. Burn-in is counted in batches since the start and is not repeated.

    Raises:
        ValueError: the run is finished and no larger N was given, or N is not larger than the completed epochs.
    """
    if wanted is None:
        if epochs_done >= saved_epochs and not batch:
            raise ValueError(f"{path}: this run already finished its {saved_epochs} epochs; nothing to resume. "
                             f"To train it further pass --resume --epochs N with N > {saved_epochs}; to fine-tune "
                             f"from it start a new run with --weights {path}")
        return saved_epochs
    if wanted <= epochs_done and not (wanted == epochs_done and batch):
        raise ValueError(f"{path}: --epochs {wanted} is not more than the {epochs_done} epochs this run completed; "
                         f"pass --epochs N with N > {epochs_done}")
    return wanted


def prepare_resume(
    opt: argparse.Namespace, info: DistInfo | None = None
) -> tuple[argparse.Namespace, dict[str, Any], Path]:
    """Load the checkpoint to resume, the options it was trained with, and the run folder it belongs to.

    Under torchrun rank 0 picks the checkpoint ("latest by modification time" could differ from machine to
    machine) and every rank then loads that same path: all ranks must see it there, on shared storage or a
    copy at the same path on every machine. A run folder held by a live trainer is refused before anything
    is loaded (``ResumeError`` naming the pid and host).
    """
    info = info or DistInfo()
    found: tuple[str | None, str | None] = (None, None)  # (path, error): rank 0's answer for every rank
    if info.is_main:
        try:
            path = find_resume_checkpoint(opt)
            holder = lock_holder(run_folder(path))
            if holder is not None:
                raise RunLockedError(run_folder(path), holder, run_folder(path) / "run.lock")
            found = (str(path), None)
        except (FileNotFoundError, RunLockedError) as e:
            found = (None, str(e))
    path_name, error = broadcast_object(found, info)
    if error is not None:
        raise ResumeError(error)
    path = Path(path_name)
    if info.distributed and not path.is_file():
        raise FileNotFoundError(f"rank {info.rank}: --resume checkpoint {path} (chosen by rank 0) is not on this "
                                f"machine; every rank needs it at the same path (shared storage or a copy)")
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt.get("opt"), dict) or ckpt.get("optimizer") is None:
        raise ValueError(f"{path}: not a resumable checkpoint of this trainer (no options or optimizer state); "
                         f"to start a new run from its weights use --weights {path}")
    saved = ckpt["opt"]
    defaults = vars(build_parser().parse_args([]))
    resumed = argparse.Namespace(**{**defaults, **saved})
    for key in opt.explicit:
        if key in RESUME_MAY_CHANGE:
            setattr(resumed, key, getattr(opt, key))
        elif key not in ("resume", "weights", "name", "project", "epochs") and getattr(opt, key) != saved.get(key) \
                and info.is_main:
            print(f"WARNING: --resume continues with the checkpoint's {key}={saved.get(key)!r}; "
                  f"the command line's {getattr(opt, key)!r} is ignored")
    for key in RESUME_MAY_CHANGE:
        if key not in opt.explicit:
            setattr(resumed, key, defaults[key])
    resumed.resume, resumed.explicit = True, opt.explicit
    wanted = opt.epochs if "epochs" in opt.explicit else None
    resumed.epochs = resume_epochs(saved["epochs"], ckpt["epoch"] + 1, ckpt.get("batch", 0), wanted, path)
    if info.is_main and resumed.epochs != saved["epochs"]:
        print(f"--resume: training to {resumed.epochs} epochs instead of {saved['epochs']}; the schedule is "
              f"recomputed for {resumed.epochs} epochs from epoch {ckpt['epoch'] + 1} on")
    return resumed, ckpt, run_folder(path)


def evolve(opt: argparse.Namespace, hyp: dict[str, float], device: torch.device, info: DistInfo) -> int:
    """--evolve: generations of (choose a parent from evolve.txt, mutate, train, append a row). Restarting
    continues from the file; ``hyp_evolved.yaml`` holds the best hyperparameters so far."""
    evolve_dir = Path(opt.project) / (opt.name or "evolve")
    gen_dir = evolve_dir / "generation"  # scratch folder of the generation in progress; evolve.txt is the record
    if info.is_main:
        gen_dir.mkdir(parents=True, exist_ok=True)
    gains = {**HYP_GAINS, "xy": 1.0, "wh": 1.0} if opt.xywh else HYP_GAINS
    gen_opt = copy.copy(opt)
    gen_opt.notest, gen_opt.nosave = True, True  # the final epoch is still tested and saved
    with hold_run_dir(evolve_dir, created=False, enabled=info.is_main) as lock:
        return _evolve_generations(opt, gen_opt, hyp, gains, evolve_dir, gen_dir, lock, device, info)


def _evolve_generations(opt: argparse.Namespace, gen_opt: argparse.Namespace, hyp: dict[str, float],
                        gains: dict[str, float], evolve_dir: Path, gen_dir: Path, lock: Any, device: torch.device,
                        info: DistInfo) -> int:
    """The generations of ``evolve``, with the evolve folder's lock held; returns the exit code."""
    evolve_file = evolve_dir / "evolve.txt"
    result = None
    for _ in range(opt.evolve):
        if lock.held:
            remove_stale_tmp(gen_dir / "weights", lock)  # a killed generation's interrupted saves
        child = None
        if info.is_main:
            if opt.bucket:
                try:
                    gsutil_cp(bucket_url(opt.bucket, "evolve.txt"), evolve_file)
                except RuntimeError as e:
                    print(f"WARNING: no evolve.txt taken from the bucket ({e}); continuing with the local file")
            generation = len(read_evolve(evolve_file)[0]) if evolve_file.is_file() else 0
            rng = np.random.default_rng([opt.seed, generation])  # a restart continues the same sequence
            child = propose_hyp(evolve_file, hyp, fitness, rng, gains=gains)
        child = broadcast_object(child, info)
        result = train(gen_opt, child, gen_dir, device, info)
        if info.is_main:
            print_mutation(child, result.results, evolve_file)  # prints and appends the row
            write_hyp_yaml(best_hyp(evolve_file, fitness), evolve_dir / "hyp_evolved.yaml",
                           comment=f"best of {len(read_evolve(evolve_file)[0])} generations in {evolve_file}")
            plot_evolution_results(evolve_file, evolve_dir / "evolve.png")
            if opt.bucket:
                gsutil_cp(evolve_file, bucket_url(opt.bucket, "evolve.txt"))
        barrier(info)
        if result.stopped:
            break
    return 0 if result is None else result.exit_code


@record  # under torchrun a rank's uncaught exception goes into the launcher's failure report
def main(argv: list[str] | None = None) -> int:
    """The train.py command: returns the process exit code."""
    opt = parse_opt(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    tune_malloc()  # keep per-batch buffers in the heap: no page faults on every batch (utils.general)
    info = DistInfo()
    try:
        info, device = setup_distributed(opt.device)
        if not info.is_main:
            logging.getLogger().setLevel(logging.WARNING)
        ckpt = None
        if opt.resume:
            opt, ckpt, save_dir = prepare_resume(opt, info)
        elif opt.bucket and not gsutil_available():
            raise FileNotFoundError("--bucket needs gsutil (Google Cloud SDK) on PATH; install it or drop --bucket")
        if info.local_rank == 0:  # once per machine: machines without shared storage each make their own copy
            ensure_builtin_dataset(opt.data, verbose=info.is_main)
        barrier(info)
        if ckpt is not None:
            with hold_run_dir(save_dir, created=False, enabled=info.is_main):
                return train(opt, ckpt["hyp"], save_dir, device, info, ckpt=ckpt).exit_code
        hyp = load_hyp(opt.hyp) if opt.hyp else dict(DEFAULT_HYP)
        if opt.evolve is not None:
            return evolve(opt, hyp, device, info)
        save_dir = next_run_dir(opt.project, opt.name or "exp") if info.is_main else None
        save_dir = broadcast_object(save_dir, info)
        if info.is_main and opt.name is None and save_dir.name != "exp":
            print(f"This run writes to {save_dir} (earlier runs are kept)")
        # the folder is this process's until it exits; a start that fails before saving anything removes it
        with hold_run_dir(save_dir, created=True, enabled=info.is_main):
            result = train(opt, hyp, save_dir, device, info)
        if opt.bucket and info.is_main and not result.stopped:
            for f in ("results.txt", "weights/last.pt", "weights/best.pt"):
                if (save_dir / f).exists():
                    gsutil_cp(save_dir / f, bucket_url(opt.bucket, f"{save_dir.name}/{f}"))
        return result.exit_code
    except (NonFiniteLoss, ValueError, FileNotFoundError, RunLockedError) as e:
        LOGGER.debug("error details", exc_info=True)
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    except CheckpointSaveError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        if e.path.name == "last.pt" and e.path.is_file():
            print(f"Continue after fixing it with: {resume_command(e.path, info)}", file=sys.stderr)
        return 1
    finally:
        cleanup_distributed(info)


if __name__ == "__main__":
    sys.exit(main())

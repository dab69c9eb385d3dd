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
import copy
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.distributed.elastic.multiprocessing.errors import record
from tqdm import tqdm

import utils.evaluate as evaluation
from models import Darknet, smart_bias_init
from utils.checkpoint import CheckpointSaveError
from utils.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    broadcast_object,
    cleanup_distributed,
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
from utils.general import tune_malloc
from utils.hyp import DEFAULT_HYP, HYP_GAINS, derive_loss_hyp, load_hyp
from utils.loss import compute_loss, loss_counts
from utils.metrics import fitness
from utils.parse_config import net_values_used
from utils.plots import plot_evolution_results, plot_results
from utils.resume import prepare_resume, resume_command
from utils.runlock import RunLockedError
from utils.runs import hold_run_dir, next_run_dir, remove_stale_tmp
from utils.runstop import StopRequest
from utils.schedule import NOMINAL_BATCH, Recipe
from utils.shapes import ensure_builtin_dataset
from utils.torch_utils import (
    apply_batch_settings,
    de_parallel,
    init_seeds,
)
from utils.train_log import epoch_summary, log_scalars, memory_gb, results_row, tensorboard_writer
from utils.train_options import GS, REPO, image_sizes, opt_to_dict, parse_opt, smart_bias_for
from utils.train_parts import (
    CHANNELS_LAST,
    Data,
    EpochEnd,
    Net,
    NonFiniteLoss,
    Progress,
    RunFiles,
    Saver,
    build_data,
    build_net,
    build_recipe,
    nonfinite_grads,
    optimizer_step,
    prepare_batch,
    print_run,
    save_epoch,
    save_stopped,
    share_batch,
    show_batch,
    start_progress,
    stop_non_finite,
    wrap_model,
)
from utils.weights import load_weights_fitting

LOGGER = logging.getLogger("train")


@dataclass
class TrainResult:
    """What ``train`` hands back: the last test results (results order), how it ended, and where."""

    results: tuple[float, ...]
    stopped: bool
    save_dir: Path
    best_fitness: float
    exit_code: int = 0  # utils.runstop: 0 finished, 130 / 143 stopped by SIGINT / SIGTERM


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


def initial_weights_path(weights: str | None, transfer: bool, cfg: str, weights_dir: Path) -> Path | None:
    """The file the run starts from: ``--weights``; else for ``--transfer`` ``weights/yolov3-spp.pt``; else the
    Darknet backbone of the cfg in ``weights/`` when present (``default_weights``); None: train from scratch."""
    if weights:
        return Path(weights)
    if weights == "":
        return None
    if transfer:
        return weights_dir / "yolov3-spp.pt"
    return default_weights(cfg, weights_dir)


def load_initial_weights(model: nn.Module, opt: argparse.Namespace, weights_dir: Path, verbose: bool = True) -> None:
    """Initial weights as the options ask. Any .pt or .weights file, any class count: the tensors that fit load,
    the rest start fresh (``utils.weights.load_weights_fitting``). All layers train, except with ``--transfer`` /
    ``--freeze-layers``, which train only the output convolutions (the seed's transfer learning)."""
    say = print if verbose else lambda *args, **kwargs: None
    freeze = opt.transfer or opt.freeze_layers
    path = initial_weights_path(opt.weights, opt.transfer, opt.cfg, weights_dir)
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


# ---------------------------------------------------------------------------------------------- training parts


def build_model(opt: argparse.Namespace, hyp: dict[str, float], recipe: Recipe, data: Data, hi: int,
                device: torch.device, ckpt: dict[str, Any] | None, weights_dir: Path, main_rank: bool) -> nn.Module:
    """The Darknet of ``--cfg`` on ``device`` (channels-last) with its starting weights: the checkpoint's raw
    weights on resume, else ``--weights`` (or the backbone); every rank loads, since freezing must happen
    everywhere (DDP then broadcasts rank 0's weights)."""
    # channels-last: the convolution kernels are faster in NHWC on CPU (oneDNN) and on CUDA tensor cores
    net_used = net_values_used(data.batch_size, recipe.steps_accumulate, hi, hyp, recipe.n_burn, recipe.schedule)
    model = Darknet(opt.cfg, img_size=(hi, hi), nc=data.nc, warn_unused=main_rank, net_used=net_used)
    model = model.to(device, memory_format=CHANNELS_LAST)
    if smart_bias_for(opt.smart_bias, recipe.name):
        smart_bias_init(model)
    if ckpt is None:
        load_initial_weights(model, opt, weights_dir, verbose=main_rank)
    else:
        if opt.transfer or opt.freeze_layers:
            freeze_non_output(model)
        model.load_state_dict(ckpt["model_raw"] if "model_raw" in ckpt else ckpt["model"])
    return model


# ---------------------------------------------------------------------------------------------- one batch


def forward_loss(net: Net, imgs: torch.Tensor, targets: torch.Tensor, loss_hyp: dict[str, float], gr: float,
                 xywh: bool, info: DistInfo) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward under autocast, then the loss in float32; under DDP normalised by the global target counts."""
    with torch.autocast(imgs.device.type, dtype=net.amp_dtype, enabled=net.use_amp):
        pred = net.forward(imgs)
    pred = [p.float() for p in pred]  # the loss in float32 whatever the autocast dtype
    denominators = all_reduce_sum(loss_counts(pred, targets, net.raw_model, loss_hyp), info) \
        if info.distributed else None
    return compute_loss(pred, targets, net.raw_model, hyp=loss_hyp, gr=gr, xywh=xywh, denominators=denominators)


# ---------------------------------------------------------------------------------------------- one epoch


def train_one_epoch(net: Net, data: Data, recipe: Recipe, progress: Progress, saver: Saver, stop: StopRequest,
                    epoch: int, epochs: int, device: torch.device, info: DistInfo, sizes: tuple[int, int, bool],
                    seed: int, loss_hyp: dict[str, float], xywh: bool) -> EpochEnd:
    """One epoch of batches from ``progress``'s position; ``sizes`` is ``(lo, hi, multi_scale)``. A stop request
    saves last.pt after the current batch and ends it early (``EpochEnd.stopped``)."""
    lo, hi, multi_scale = sizes
    nb = recipe.nb
    net.model.train()  # frozen layers too: their BatchNorm statistics follow the new data, as the reference
    data.dataset.set_epoch(epoch)
    data.sampler.set_epoch(epoch)
    first = progress.start_batch if epoch == progress.start_epoch else 0
    data.sampler.set_start(first)
    if first == 0:
        progress.mloss, progress.mloss_n = torch.zeros(4), 0
    if info.is_main:
        print(("\n" + "%10s" * 8) % ("Epoch", "gpu_mem", "xy" if xywh else "GIoU", "obj", "cls", "total", "targets",
                                     "img_size"))
    pbar = tqdm(enumerate(data.loader, first), total=nb, initial=first, disable=not info.is_main,
                bar_format="{l_bar}{bar:10}{r_bar}")
    end = EpochEnd(False)
    for i, (imgs, targets, paths, _) in pbar:
        stop.count_batch()
        ni = i + nb * epoch  # integrated batch index
        settings = recipe.settings(ni)  # burn-in ramps and the epoch's lr, a pure function of ni
        apply_batch_settings(net.optimizer, settings.lr, settings.weight_decay, settings.momentum)
        size = recipe.multi_scale_size(ni, lo, hi, seed, GS) if multi_scale else None
        imgs, targets = prepare_batch(imgs, targets, device, size)
        stepping = recipe.steps_after(ni)
        torch._foreach_copy_(net.buffers_before, net.buffers)
        with net.no_sync(info.distributed, stepping):
            loss, loss_items = forward_loss(net, imgs, targets, loss_hyp, settings.gr, xywh, info)
            loss_items, n_targets, stop_any = share_batch(loss_items, len(targets), stop, info)
            if not torch.isfinite(loss_items).all():
                detail = f": box, obj, cls, total = {loss_items.tolist()}"
                raise stop_non_finite("loss", detail, net, progress, saver, epoch, i, paths, info)
            loss = loss * (data.batch_size / NOMINAL_BATCH) * info.world_size  # hyp evolved at bs 64; DDP averages
            net.scaler.scale(loss).backward()
        bad = nonfinite_grads(net, stepping)
        if bad:
            detail = f" ({', '.join(bad[:3])}{' and more' if len(bad) > 3 else ''}): the weights were not updated"
            raise stop_non_finite("gradients", detail, net, progress, saver, epoch, i, paths, info)
        if stepping:
            optimizer_step(net)
        progress.add(loss_items)
        end = EpochEnd(False, ni, settings.gr, n_targets, max(imgs.shape[2:]))
        if info.is_main:
            show_batch(pbar, epoch, epochs, device, progress, end, (imgs, targets, paths), data.names,
                       saver.files.save_dir)
        if stop_any and i + 1 < nb:
            save_stopped(net, progress, saver, epoch, i, info)
            return EpochEnd(True)
    return end


def evaluate_epoch(model: nn.Module, cfg: str, data_cfg: str, data: Data, test_size: int, single_cls: bool,
                   save_dir: Path, loss_hyp: dict[str, float], end: EpochEnd, plots: bool, n_burn: int,
                   stop: StopRequest, epoch: int) -> tuple[float, ...]:
    """Rank 0's test of the epoch's weights on the valid set (results order); single-label NMS during burn-in,
    as the reference, since an untrained net yields boxes everywhere."""
    with stop.during(f"the test of epoch {epoch}"):
        results, _maps = evaluation.test(
            cfg, data_cfg, batch_size=data.batch_size, img_size=test_size, model=model, dataloader=data.testloader,
            conf_thres=0.001, iou_thres=0.6, single_cls=single_cls, save_dir=save_dir, names=data.names,
            hyp=loss_hyp, gr=end.gr, plots=plots, multi_label=end.ni > n_burn,
        )  # fmt: skip
    return tuple(float(x) for x in results)


def log_epoch(files: RunFiles, progress: Progress, epoch: int, device: torch.device, end: EpochEnd,
              results: tuple[float, ...], tb: Any) -> bool:
    """Rank 0: the results.txt row, the best fitness, the summary line and TensorBoard; whether fitness improved."""
    with files.results.open("a") as f:
        f.write(results_row(epoch, memory_gb(device), progress.mloss, end.n_targets, end.img_size, results))
    fit = float(fitness(np.array(results)))
    improved = fit > progress.best_fitness or not files.best.exists()
    progress.best_fitness = max(progress.best_fitness, fit)
    print(epoch_summary(epoch, results, fit, improved))
    log_scalars(tb, epoch, progress.mloss, end.n_targets, end.img_size, results)
    return improved


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
    main_rank, files = info.is_main, RunFiles(Path(save_dir))
    if main_rank:
        files.wdir.mkdir(parents=True, exist_ok=True)
    init_seeds(opt.seed + info.rank, opt.deterministic)
    sizes = lo, hi, test_size, multi_scale = image_sizes(opt.img_size, opt.multi_scale, opt.recipe)
    stop = StopRequest(opt.stop_after_batches, announce_fd=2 if main_rank else None)
    data = build_data(opt.data, hyp, hi, test_size, opt.batch_size, device, info, rect=opt.rect,
                      single_cls=opt.single_cls, cache_images=opt.cache_images, cache_check=opt.cache_check,
                      ram_cache_mb=opt.ram_cache_mb, reduced_decode=opt.reduced_decode, seed=opt.seed,
                      num_workers=opt.num_workers)
    loss_hyp = derive_loss_hyp(hyp, data.nc)
    recipe = build_recipe(opt.recipe, opt.epochs, len(data.sampler), data.batch_size, opt.burn_in, opt.schedule,
                          opt.accumulate, hyp)
    model = build_model(opt, hyp, recipe, data, hi, device, ckpt, weights_dir, main_rank)
    saver = Saver(files, recipe, hyp, opt_to_dict(opt), Path(opt.cfg).read_text(), data.names)
    use_ema = opt.ema if opt.ema is not None else opt.recipe == "2020"
    net = build_net(model, hyp, opt.adam, use_ema, device, opt.no_amp, opt.bf16, main_rank)
    progress = start_progress(ckpt, net, info, device, saver, data.dataset)
    wrap_model(net, opt.sync_bn, opt.compile, info, device)
    if main_rank:
        print_run(hyp, net, sizes, info, data, recipe, opt.num_workers, files.save_dir)

    tb = tensorboard_writer(files.save_dir) if main_rank else None
    results: tuple[float, ...] = (0.0,) * 8
    t0 = time.time()
    stop.install()
    try:
        for epoch in range(progress.start_epoch, opt.epochs):
            end = train_one_epoch(net, data, recipe, progress, saver, stop, epoch, opt.epochs, device, info,
                                  (lo, hi, multi_scale), opt.seed, loss_hyp, opt.xywh)
            if end.stopped:
                return TrainResult(results, True, files.save_dir, progress.best_fitness, stop.exit_code(False))
            # End of epoch: test and log (rank 0), then save (rank 0, with every rank's RNG state).
            final, improved = epoch + 1 == opt.epochs, False
            if main_rank:
                if not opt.notest or final:
                    results = evaluate_epoch(net.scored(), opt.cfg, opt.data, data, test_size, opt.single_cls,
                                             files.save_dir, loss_hyp, end, epoch == progress.start_epoch or final,
                                             recipe.n_burn, stop, epoch)
                improved = log_epoch(files, progress, epoch, device, end, results, tb)
            # the other ranks wait here while rank 0 tests; a stop request on any rank stops all (and, even
            # with --nosave, saves last.pt so that the run can be resumed)
            stop_any = all_reduce_sum(torch.tensor([float(stop.requested)]), info).item() > 0
            if not opt.nosave or final or stop_any:
                save_epoch(net, progress, saver, epoch, info, improved, keep_all=not opt.nosave)
            barrier(info)
            if stop_any:
                if main_rank and not final:
                    print(f"\nStopped after epoch {epoch}; continue with: {resume_command(files.last, info)}")
                return TrainResult(results, not final, files.save_dir, progress.best_fitness, stop.exit_code(final))
    finally:
        stop.uninstall()
        if tb is not None:
            tb.close()
        # persistent loader workers end with their loader, and they ignore SIGTERM: drop it now, not at whatever
        # garbage collection frees this frame (a frame kept in a reference cycle hung the exit of a torchrun rank)
        del data

    if main_rank:
        plot_results(files.results, files.save_dir / "results.png")
        print(f"{opt.epochs - progress.start_epoch} epochs completed in {(time.time() - t0) / 3600:.3f} hours. "
              f"Results in {files.save_dir}")
    return TrainResult(results, False, files.save_dir, progress.best_fitness)


# ---------------------------------------------------------------------------------------------- evolve


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

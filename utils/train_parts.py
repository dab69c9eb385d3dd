"""The parts of a training run that train.py's loop calls: files, data, model parts, progress, batch stages.

How they are built or restored from a checkpoint, and the batch and epoch stages that need no model code of their own
(what does, forward and loss, the weights to start from, the test, stays in train.py)."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from tqdm import tqdm

from utils.checkpoint import NonFiniteCheckpointError, atomic_save, make_checkpoint, previous_checkpoint_note, rng_state
from utils.data_files import resolve_data_cfg
from utils.datasets import LoadImagesAndLabels, resize_batch, worker_init
from utils.distributed import DistInfo, GlobalBatchSampler, all_reduce_sum, barrier, convert_sync_bn
from utils.finite import model_nonfinite
from utils.hyp import format_hyp
from utils.plots import plot_images, plot_labels
from utils.resume import gather_rank_states, gradient_state, restore_rank_state, resume_command
from utils.runstop import StopRequest
from utils.schedule import SEED_ACCUMULATE, Recipe, auto_accumulate, burn_in_batches
from utils.torch_utils import ModelEMA, build_optimizer, compile_forward, de_parallel, model_info
from utils.train_log import memory_gb, results_header

CHANNELS_LAST = torch.channels_last  # memory format of the model and its input batches while training


class NonFiniteLoss(RuntimeError):
    """The loss or the gradients became inf or NaN; the message names the batch's images, the loss components
    and which checkpoint files hold the last finite state."""


@dataclass
class RunFiles:
    """The files a run writes in its folder (rank 0 only)."""

    save_dir: Path

    @property
    def wdir(self) -> Path:
        return self.save_dir / "weights"

    @property
    def last(self) -> Path:
        return self.wdir / "last.pt"

    @property
    def best(self) -> Path:
        return self.wdir / "best.pt"

    @property
    def results(self) -> Path:
        return self.save_dir / "results.txt"


@dataclass
class Data:
    """The training set and its batches on this rank, and the test loader (rank 0 only)."""

    dataset: LoadImagesAndLabels
    sampler: GlobalBatchSampler
    loader: torch.utils.data.DataLoader
    testloader: torch.utils.data.DataLoader | None
    batch_size: int  # the global batch, at most the training set's size
    nc: int
    names: list[str]


@dataclass
class Net:
    """The model and what steps it: every batch uses all of these."""

    model: nn.Module  # DDP-wrapped under torchrun: the gradient all-reduce (no_sync) is decided on it
    raw_model: nn.Module  # the unwrapped model, what is saved and scored
    forward: Callable[[torch.Tensor], list[torch.Tensor]]  # the model's forward, compiled with --compile
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler  # disabled (a pass-through) without fp16 AMP
    ema: ModelEMA | None
    amp_dtype: torch.dtype
    use_amp: bool
    # BatchNorm statistics as they were before the current batch's forward: a batch whose loss is not finite has
    # already updated them, and the emergency checkpoint must hold the last finite state
    buffers: list[torch.Tensor] = field(default_factory=list)
    buffers_before: list[torch.Tensor] = field(default_factory=list)

    def no_sync(self, distributed: bool, stepping: bool) -> contextlib.AbstractContextManager:
        """DDP: skip the gradient all-reduce on batches that only accumulate (forward must be inside too)."""
        return self.model.no_sync() if distributed and not stepping else contextlib.nullcontext()

    def scored(self) -> nn.Module:
        """The weights the test scores and the checkpoint stores as 'model': the EMA when the run keeps one."""
        return self.raw_model if self.ema is None else self.ema.ema


@dataclass
class Progress:
    """Where the run stands: the position it starts from, the best fitness and this epoch's running mean losses."""

    start_epoch: int = 0
    start_batch: int = 0
    best_fitness: float = 0.0
    mloss: torch.Tensor = field(default_factory=lambda: torch.zeros(4))  # running (box, obj, cls, total) means
    mloss_n: int = 0

    def add(self, loss_items: torch.Tensor) -> None:
        self.mloss = (self.mloss * self.mloss_n + loss_items.cpu()) / (self.mloss_n + 1)
        self.mloss_n += 1


@dataclass
class Saver:
    """What every checkpoint of the run holds besides the model and the progress."""

    files: RunFiles
    recipe: Recipe
    hyp: dict[str, float]
    opt: dict[str, Any]
    cfg_text: str
    names: list[str]

    def snapshot(self, net: Net, progress: Progress, epoch_done: int, batch: int,
                 rank_states: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The checkpoint at this position: ``epoch_done`` completed epochs, ``batch`` next in the next one."""
        results = self.files.results
        return make_checkpoint(
            epoch=epoch_done, best_fitness=progress.best_fitness,
            training_results=results.read_text() if results.exists() else "",
            model=net.scored(), model_raw=net.raw_model, optimizer=net.optimizer, scaler=net.scaler,
            scheduler=self.recipe.describe(epoch_done + 1), ema_updates=None if net.ema is None else net.ema.updates,
            hyp=self.hyp, opt=self.opt, cfg_text=self.cfg_text, names=self.names, batch=batch,
            ranks=rank_states, mloss=progress.mloss.clone(), mloss_n=progress.mloss_n,
        )  # fmt: skip


@dataclass
class EpochEnd:
    """How ``train_one_epoch`` ended: stopped mid-epoch (a checkpoint is saved), or the values its last batch left."""

    stopped: bool
    ni: int = 0
    gr: float = 1.0
    n_targets: int = 0
    img_size: int = 0


def _worker_init(worker_id: int) -> None:
    """Data-loader workers ignore Ctrl-C and SIGTERM sent to the whole process group: the main process stops
    cleanly after the current batch and shuts them down (a worker still exits if its parent dies)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    worker_init(worker_id)


def build_data(data_cfg: str, hyp: dict[str, float], hi: int, test_size: int, batch_size: int, device: torch.device,
               info: DistInfo, *, rect: bool, single_cls: bool, cache_images: bool, cache_check: str,
               ram_cache_mb: float, reduced_decode: bool, seed: int, num_workers: int) -> Data:
    """The data set (label problems surface here, before any training), the sampler and the loaders."""
    data = resolve_data_cfg(data_cfg)
    data_nc = int(data["classes"])  # labels are checked against the data set's classes, then merged by --single-cls
    nc = 1 if single_cls else data_nc
    names = ["item"] if single_cls and len(data["names"]) != 1 else list(data["names"])
    cache = {"cache_images": cache_images, "single_cls": single_cls, "nc": data_nc,
             "cache_check": cache_check, "ram_cache_mb": ram_cache_mb}  # fmt: skip
    # images load at the largest training size; multi-scale batches are resized down to the drawn size
    dataset = LoadImagesAndLabels(data["train"], hi, batch_size, augment=True, hyp=hyp, rect=rect, seed=seed,
                                  verbose=info.is_main, reduced_decode=reduced_decode, **cache)
    batch_size = min(batch_size, dataset.n)  # as the reference: a set smaller than a batch is one batch
    sampler = GlobalBatchSampler(dataset.n, batch_size, info.world_size, info.rank, shuffle=not rect,
                                 seed=seed, batches=dataset.batch_indices() if rect else None)
    loading = {"num_workers": num_workers, "collate_fn": LoadImagesAndLabels.collate_fn,
               "pin_memory": device.type == "cuda", "worker_init_fn": _worker_init,
               "persistent_workers": num_workers > 0}  # fmt: skip
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, **loading)
    testloader = None
    if info.is_main:
        testset = LoadImagesAndLabels(data["valid"], test_size, batch_size, hyp=hyp, rect=True, pad=0.5, **cache)
        testloader = torch.utils.data.DataLoader(testset, batch_size=batch_size, **loading)
    return Data(dataset, sampler, loader, testloader, batch_size, nc, names)


def build_recipe(recipe: str, epochs: int, nb: int, batch_size: int, burn_in: int | None, schedule: str | None,
                 accumulate: int | None, hyp: dict[str, float]) -> Recipe:
    """The recipe's burn-in, schedule and accumulation, with the command line's overrides."""
    return Recipe(
        name=recipe, epochs=epochs, nb=nb, n_burn=burn_in_batches(nb, recipe, burn_in),
        schedule=schedule or ("cos" if recipe == "2020" else "multistep"),
        accumulate=accumulate or (auto_accumulate(batch_size) if recipe == "2020" else SEED_ACCUMULATE),
        lr0=hyp["lr0"], momentum=hyp["momentum"], weight_decay=hyp["weight_decay"],
    )  # fmt: skip


def build_net(model: nn.Module, hyp: dict[str, float], adam: bool, use_ema: bool, device: torch.device,
              no_amp: bool, bf16: bool, main_rank: bool) -> Net:
    """Optimizer, EMA (rank 0 only: it alone tests and saves, DDP keeps the weights equal) and AMP for ``model``."""
    optimizer = build_optimizer(model, hyp, adam)
    ema = ModelEMA(model) if use_ema and main_rank else None
    use_amp = device.type == "cuda" and not no_amp or device.type == "cpu" and bf16
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp and device.type == "cuda")
    return Net(model, model, model, optimizer, scaler, ema, amp_dtype, use_amp)


def resume_progress(ckpt: dict[str, Any], net: Net, info: DistInfo, device: torch.device) -> Progress:
    """Restore the optimizer, scaler, EMA, running losses and this rank's RNG and pending gradients."""
    progress = Progress(ckpt["epoch"] + 1, ckpt.get("batch", 0), ckpt.get("best_fitness") or 0.0)
    net.optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scaler"):
        net.scaler.load_state_dict(ckpt["scaler"])
    if net.ema is not None and ckpt.get("ema_updates") is not None:
        net.ema.ema.load_state_dict(ckpt["model"])  # a checkpoint's 'model' is the EMA when the run keeps one
        net.ema.updates = ckpt["ema_updates"]
    if progress.start_batch:
        progress.mloss, progress.mloss_n = ckpt["mloss"].clone(), ckpt["mloss_n"]
    restore_rank_state(net.raw_model, ckpt, info, device)
    return progress


def write_start_files(files: RunFiles, hyp: dict[str, float], opt: dict[str, Any], dataset: LoadImagesAndLabels,
                      names: list[str]) -> None:
    """A new run's results.txt header, hyp.yaml, opt.yaml and labels.png."""
    files.results.write_text(results_header())
    (files.save_dir / "hyp.yaml").write_text(yaml.safe_dump(dict(hyp), sort_keys=False))
    (files.save_dir / "opt.yaml").write_text(yaml.safe_dump(opt, sort_keys=False))
    boxes = [lb for lb in dataset.labels if len(lb)]
    plot_labels(np.concatenate(boxes) if boxes else np.zeros((0, 5), np.float32), names, files.save_dir / "labels.png")


def start_progress(ckpt: dict[str, Any] | None, net: Net, info: DistInfo, device: torch.device, saver: Saver,
                   dataset: LoadImagesAndLabels) -> Progress:
    """Where the run starts: the checkpoint's position (results.txt as it was), or a new run's (its start files)."""
    files = saver.files
    if ckpt is None:
        if info.is_main:
            write_start_files(files, saver.hyp, saver.opt, dataset, saver.names)
        return Progress()
    progress = resume_progress(ckpt, net, info, device)
    if info.is_main:
        files.results.write_text(ckpt.get("training_results") or results_header())
        print(f"Resuming from epoch {progress.start_epoch}, batch {progress.start_batch} of {saver.recipe.nb} "
              f"({files.save_dir})")
    return progress


def wrap_model(net: Net, sync_bn: bool, compile_: bool, info: DistInfo, device: torch.device) -> None:
    """SyncBatchNorm and DDP under torchrun, torch.compile with --compile; the raw model stays what is saved."""
    model = convert_sync_bn(net.model, info) if sync_bn else net.model
    if info.distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    net.model, net.raw_model = model, de_parallel(model)
    net.forward = compile_forward(model) if compile_ else model  # the model itself stays what is saved and stepped
    net.buffers = [b for b in net.raw_model.buffers() if b.is_floating_point()]
    net.buffers_before = [b.detach().clone() for b in net.buffers]


def print_run(hyp: dict[str, float], net: Net, sizes: tuple[int, int, int, bool], info: DistInfo, data: Data,
              recipe: Recipe, num_workers: int, save_dir: Path) -> None:
    """Rank 0's summary before the first epoch: hyperparameters, the model, sizes, batches and the recipe."""
    lo, hi, test_size, multi_scale = sizes
    print(format_hyp(hyp))
    model_info(net.raw_model, img_size=hi)
    shown = f"{lo}-{hi} (multi-scale)" if multi_scale else f"{hi}"
    print(f"Image sizes {shown} train, {test_size} test; {info.world_size} rank(s), global batch {data.batch_size}, "
          f"accumulate {recipe.steps_accumulate}, {recipe.nb} batches per epoch; recipe {recipe.name}: burn-in "
          f"{recipe.n_burn} batches, {recipe.schedule} schedule, EMA {'on' if net.ema is not None else 'off'}; "
          f"{num_workers} data workers; results in {save_dir}\nStarting training for {recipe.epochs} epochs...")


def prepare_batch(imgs: torch.Tensor, targets: torch.Tensor, device: torch.device,
                  size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images to float in [0, 1] on ``device``, resized to ``size`` (multi-scale; None keeps it), NHWC."""
    imgs = imgs.to(device, non_blocking=True).float() / 255.0
    targets = targets.to(device)
    if size is not None:
        imgs = resize_batch(imgs, size)
    return imgs.contiguous(memory_format=CHANNELS_LAST), targets


def share_batch(loss_items: torch.Tensor, n_targets: int, stop: StopRequest,
                info: DistInfo) -> tuple[torch.Tensor, int, bool]:
    """One collective for the global loss items, target count and any rank's stop request."""
    shared = all_reduce_sum(torch.cat([loss_items, loss_items.new_tensor([n_targets, float(stop.requested)])]), info)
    return shared[:4], int(shared[4]), bool(shared[5] > 0)


def nonfinite_grads(net: Net, stepping: bool) -> list[str]:
    """The gradients that hold inf/NaN before a step. fp16 AMP's GradScaler skips such steps itself; otherwise they
    would poison the weights, so look before stepping (DDP: the gradients are all-reduced, every rank agrees)."""
    return model_nonfinite(net.raw_model, weights=False, grads=True) if stepping and not net.scaler.is_enabled() \
        else []


def optimizer_step(net: Net) -> None:
    """Step on the accumulated gradients (through the GradScaler), clear them and update the EMA."""
    net.scaler.step(net.optimizer)
    net.scaler.update()
    net.optimizer.zero_grad(set_to_none=True)
    if net.ema is not None:
        net.ema.update(net.raw_model)


def save_emergency(ckpt: dict[str, Any], path: Path) -> str:
    """Save the last finite state after a non-finite loss or gradient; says what was saved (never inf/NaN)."""
    try:
        atomic_save(ckpt, path, require_finite=True)
    except NonFiniteCheckpointError as e:
        return f"nothing was saved ({e})"
    return f"the state before this batch is saved to {path}"


def stop_non_finite(kind: str, detail: str, net: Net, progress: Progress, saver: Saver, epoch: int, i: int,
                    paths: list[str], info: DistInfo) -> NonFiniteLoss:
    """After an inf/NaN ``kind`` ("loss" or "gradients"): restore the BatchNorm statistics and save
    weights/emergency.pt (rank 0) at the position before this batch, with the pending gradients after a
    non-finite loss (non-finite gradients are not kept); returns the error to raise."""
    torch._foreach_copy_(net.buffers, net.buffers_before)
    grads = gradient_state(net.raw_model) if kind == "loss" else None
    states = gather_rank_states({"rng": rng_state(), "grads": grads}, info)
    saved = save_emergency(saver.snapshot(net, progress, epoch - 1, i, states), saver.files.wdir / "emergency.pt") \
        if info.is_main else ""
    note = "" if kind == "loss" else " (without the gradients accumulated since the last optimizer step)"
    return NonFiniteLoss(f"non-finite {kind} at epoch {epoch} batch {i}{detail}; images of this batch:\n  "
                         + "\n  ".join(paths) + f"\n{saved}{note}; {previous_checkpoint_note(saver.files.last)}")


def save_stopped(net: Net, progress: Progress, saver: Saver, epoch: int, i: int, info: DistInfo) -> None:
    """A stop request mid-epoch: save last.pt at the position after batch ``i`` (every rank's RNG state and pending
    gradients) and say how to continue."""
    states = gather_rank_states({"rng": rng_state(), "grads": gradient_state(net.raw_model)}, info)
    if info.is_main:
        last = saver.files.last
        atomic_save(saver.snapshot(net, progress, epoch - 1, i + 1, states), last, require_finite=True)
        print(f"\nStopped at epoch {epoch} batch {i + 1}/{saver.recipe.nb}; saved {last}. "
              f"Continue with: {resume_command(last, info)}")
    barrier(info)


def show_batch(pbar: tqdm, epoch: int, epochs: int, device: torch.device, progress: Progress, end: EpochEnd,
               batch: tuple[torch.Tensor, torch.Tensor, list[str]], names: list[str], save_dir: Path) -> None:
    """The progress bar's columns; the first batch of the run is drawn to train_batch0.jpg."""
    pbar.set_description(("%10s" * 2 + "%10.3g" * 6) % (
        f"{epoch}/{epochs - 1}", f"{memory_gb(device):.3g}G", *progress.mloss.tolist(), end.n_targets, end.img_size))
    if end.ni == 0:
        imgs, targets, paths = batch
        plot_images(imgs, targets, paths=paths, fname=save_dir / "train_batch0.jpg", names=names)


def save_epoch(net: Net, progress: Progress, saver: Saver, epoch: int, info: DistInfo, improved: bool,
               keep_all: bool) -> None:
    """last.pt (rank 0, with every rank's RNG state and pending gradients); with ``keep_all`` (no --nosave) also
    best.pt when fitness improved and backup{epoch}.pt every 10 epochs."""
    # taken after the test: iterating its DataLoader draws from rank 0's torch RNG; the 2020 recipe accumulates
    # across epoch ends, so gradients may be pending here too
    states = gather_rank_states({"rng": rng_state(), "grads": gradient_state(net.raw_model)}, info)
    if info.is_main:
        ckpt_now = saver.snapshot(net, progress, epoch, 0, states)
        atomic_save(ckpt_now, saver.files.last, require_finite=True)
        if improved and keep_all:
            atomic_save(ckpt_now, saver.files.best)
        if epoch > 0 and epoch % 10 == 0 and keep_all:
            atomic_save(ckpt_now, saver.files.wdir / f"backup{epoch}.pt")
        del ckpt_now

"""Training-step and epoch workloads: images/s, achieved GFLOP/s and where the step's time goes.

The step is what train.py does per batch (forward, compute_loss, loss * batch/64, backward, SGD step,
zero_grad), written here again because nothing imports train.py. Project modules are imported inside the
functions so that `--only ceiling` runs without them.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from bench.synthetic import random_batch
from bench.timing import measure, synchronize


def build_model(cfg: Path, img_size: int, nc: int, device: torch.device, channels_last: bool) -> nn.Module:
    """Darknet from `cfg` with `nc` classes on `device`, channels-last when asked."""
    from models import Darknet

    model = Darknet(str(cfg), img_size=(img_size, img_size), nc=nc).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def autocast_for(device: torch.device, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the autocast context for `precision` ('fp32', 'bf16' or 'amp' = CUDA float16)."""
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def loader_batch(
    images: str | list[str], img_size: int, batch_size: int, hyp: dict[str, float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `batch_size` mosaic-augmented items of the image set (epoch 0): uint8 images
    (batch, 3, img_size, img_size) and targets (n, 6). A mosaic batch holds what training sees (four
    images' boxes per item), which sets build_targets' and the loss's share of the step."""
    from utils.datasets import LoadImagesAndLabels

    dataset = LoadImagesAndLabels(images, img_size=img_size, batch_size=batch_size, augment=True, hyp=hyp, seed=0,
                                  verbose=False)
    dataset.set_epoch(0)
    items = [dataset[i % dataset.n] for i in range(batch_size)]
    imgs, targets, _, _ = LoadImagesAndLabels.collate_fn(items)
    return imgs, targets


@dataclass
class TrainStep:
    """One training step on a fixed batch, with the time of each phase of the last call."""

    model: nn.Module
    imgs: torch.Tensor
    targets: torch.Tensor
    loss_hyp: dict[str, float]
    precision: str
    device: torch.device

    def __post_init__(self) -> None:
        from utils.loss import compute_loss
        from utils.torch_utils import build_optimizer

        self.compute_loss = compute_loss
        self.autocast = autocast_for(self.device, self.precision)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "amp")
        self.optimizer = build_optimizer(self.model, self.loss_hyp)  # train.py's optimizer
        self.phases: dict[str, list[float]] = {"forward": [], "loss": [], "backward": [], "optimizer": []}

    def __call__(self) -> float:
        sync = self.device
        t0 = time.perf_counter()
        with self.autocast():
            pred = self.model(self.imgs)
            synchronize(sync)
            t1 = time.perf_counter()
            loss, _ = self.compute_loss(pred, self.targets, self.model, hyp=self.loss_hyp, gr=1.0)
        loss = loss * (len(self.imgs) / 64)
        synchronize(sync)
        t2 = time.perf_counter()
        self.scaler.scale(loss).backward()
        synchronize(sync)
        t3 = time.perf_counter()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        synchronize(sync)
        t4 = time.perf_counter()
        for name, dt in zip(self.phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            self.phases[name].append(dt)
        return float(loss.detach())

    def reset_phases(self) -> None:
        for v in self.phases.values():
            v.clear()


# Operator families of a training step, by the aten operators that do their work (self time: without the
# operators they call). Convolutions: oneDNN on CPU (mkldnn_convolution forward, convolution_backward: input
# and weight gradients; the _slow_conv2d ones are torch's own 1x1 path when single-threaded), cuDNN on CUDA.
OP_FAMILIES: dict[str, tuple[str, ...]] = {
    "conv": ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::_slow_conv2d_forward",
             "aten::_slow_conv2d_backward", "aten::cudnn_convolution", "aten::_convolution"),
    "batchnorm": ("aten::native_batch_norm", "aten::native_batch_norm_backward", "aten::_batch_norm_with_update",
                  "aten::batch_norm_backward", "aten::cudnn_batch_norm", "aten::cudnn_batch_norm_backward"),
    "activation": ("aten::leaky_relu_", "aten::leaky_relu", "aten::leaky_relu_backward"),
    "copy": ("aten::copy_", "aten::clone", "aten::contiguous", "aten::_to_copy"),
    "route/shortcut/upsample/pool": ("aten::cat", "aten::add", "aten::add_", "aten::upsample_nearest2d",
                                     "aten::upsample_nearest2d_backward", "aten::max_pool2d_with_indices",
                                     "aten::max_pool2d_with_indices_backward", "aten::constant_pad_nd"),
    "fill/zero": ("aten::fill_", "aten::zero_", "aten::zeros", "aten::empty", "aten::empty_strided"),
    "optimizer": ("aten::_fused_sgd_", "aten::_foreach_add_", "aten::_foreach_mul_", "aten::_fused_adam_"),
}  # fmt: skip
# On CUDA the kernels' time is read from the operators that launched them, children included, so each family
# names operators that do not call one another (cuDNN's convolution and batch norm, the leaf copies and fills).
CUDA_OP_FAMILIES: dict[str, tuple[str, ...]] = {
    "conv": ("aten::cudnn_convolution", "aten::convolution_backward"),
    "batchnorm": ("aten::cudnn_batch_norm", "aten::cudnn_batch_norm_backward", "aten::native_batch_norm",
                  "aten::native_batch_norm_backward"),
    "activation": ("aten::leaky_relu_", "aten::leaky_relu", "aten::leaky_relu_backward"),
    "copy": ("aten::copy_",),
    "route/shortcut/upsample/pool": ("aten::cat", "aten::add", "aten::add_", "aten::upsample_nearest2d",
                                     "aten::upsample_nearest2d_backward", "aten::max_pool2d_with_indices",
                                     "aten::max_pool2d_with_indices_backward"),
    "fill/zero": ("aten::fill_",),
    "optimizer": ("aten::_fused_sgd_", "aten::_fused_adam_"),
}  # fmt: skip


def profile_step(step: Callable[[], object], device: torch.device, step_flop: int) -> dict[str, object]:
    """Where one training step's time goes, from torch.profiler over one step.

    CPU: seconds and share of the profiled step's wall time per operator family (``OP_FAMILIES``, from the
    operators' self time on the calling thread: the thread pool's kernels run inside them), and the achieved
    GFLOP/s of the convolution kernels alone (the step's counted FLOPs / convolution seconds). CUDA: the
    share of the step during which GPU kernels ran (``kernel_share``: all kernels' time / the step's wall time;
    the rest is launch overhead, host work and synchronisation), and per family (``CUDA_OP_FAMILIES``) the
    time of the kernels its operators launched, as seconds and shares of the step's wall time.
    """
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        step()
        synchronize(device)
        wall = time.perf_counter() - t0
    events = prof.key_averages()

    def seconds(e, attr: str) -> float:
        if not hasattr(e, attr):  # torch before 2.4 named the device times after CUDA
            attr = attr.replace("device", "cuda")
        return getattr(e, attr, 0.0) / 1e6  # profiler times are microseconds

    # the self times add up to the whole once: on CPU each operator's own work, on CUDA each kernel's duration
    self_attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    total = sum(seconds(e, self_attr) for e in events)
    table, family_attr = (CUDA_OP_FAMILIES, "device_time_total") if cuda else (OP_FAMILIES, self_attr)
    families = dict.fromkeys(table, 0.0)
    for e in events:
        for family, names in table.items():
            if e.key in names:
                families[family] += seconds(e, family_attr)
    families["other"] = max(total - sum(families.values()), 0.0)
    out: dict[str, object] = {
        "profiled_step_s": wall,
        "family_s": families,
        "family_share": {k: v / wall for k, v in families.items()},
    }
    if cuda:
        out["kernel_s"] = total
        out["kernel_share"] = total / wall
    if families["conv"] > 0:
        out["conv_gflops"] = step_flop / families["conv"] / 1e9
    return out


def time_build_targets(model: nn.Module, imgs: torch.Tensor, targets: torch.Tensor, loss_hyp: dict[str, float],
                       device: torch.device, autocast: Callable[[], contextlib.AbstractContextManager]) -> float:
    """Median ms of ``utils.loss.build_targets`` (matching targets to anchors and cells) on the step's batch."""
    from utils.loss import build_targets

    with torch.no_grad(), autocast():
        pred = [p.float() for p in model(imgs)]
    timing = measure(lambda: build_targets(pred, targets, model, loss_hyp), reps=7, warmup=2, device=device)
    return 1e3 * timing.median


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs (2 per multiply-add) of the matmuls and convolutions that one call of `fn` dispatches."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def step_batch(
    images: str | list[str] | None, img_size: int, batch_size: int, nc: int, hyp: dict[str, float],
    device: torch.device, channels_last: bool,
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The fixed batch a training-step benchmark repeats, on `device`: float images (batch, 3, img_size, img_size)
    in 0..1, targets (n, 6), and where they come from ('mosaic': the image set's first items, loader_batch;
    'random': random_batch with COCO-like targets when `images` is None)."""
    if images is None:
        imgs, targets = random_batch(batch_size, img_size, nc)
        source = "random"
    else:
        imgs_u8, targets = loader_batch(images, img_size, batch_size, hyp)
        imgs = imgs_u8.float() / 255
        source = "mosaic"
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return imgs.to(device).contiguous(memory_format=fmt), targets.to(device), source


def bench_train_step(
    cfg: Path,
    img_size: int,
    batch_size: int,
    precision: str,
    device: torch.device,
    channels_last: bool,
    hyp: dict[str, float],
    images: str | list[str] | None,
    reps: int,
    budget_s: float,
    nc: int = 80,
    profiling: bool = True,
) -> dict[str, object]:
    """Images/s of the training step for one model, size, batch and precision, plus per-phase medians,
    the step's GFLOP per image (counted), the achieved GFLOP/s, the EMA update time train.py's --ema
    would add, the time of ``build_targets`` and, with ``profiling``, where the step's time goes
    (``profile_step``: one more step under torch.profiler).

    `images` None means a random batch with COCO-like targets (no image set at hand).
    """
    from utils.hyp import derive_loss_hyp

    loss_hyp = derive_loss_hyp(hyp, nc)
    model = build_model(cfg, img_size, nc, device, channels_last)
    model.train()
    imgs, targets, source = step_batch(images, img_size, batch_size, nc, hyp, device, channels_last)
    step = TrainStep(model, imgs, targets, loss_hyp, precision, device)

    # The two counted calls are also the warm-up (the counter's overhead is not timed).
    with torch.no_grad(), step.autocast():
        fwd_flop = count_flops(lambda: model(imgs))
    step_flop = count_flops(step)
    step.reset_phases()
    timing = measure(step, reps=reps, warmup=0, budget_s=budget_s, device=device)

    phases = {name: float(np.median(v)) for name, v in step.phases.items()}
    profile = None
    if profiling:
        try:
            profile = profile_step(step, device, step_flop)
        except RuntimeError as e:  # a profiler that cannot start here (e.g. no CUPTI) costs the figure, not the row
            profile = {"error": f"{type(e).__name__}: {e}"}
    total = sum(phases.values())
    gflop_img = step_flop / batch_size / 1e9
    result: dict[str, object] = {
        "model": cfg.stem,
        "img_size": img_size,
        "batch_size": batch_size,
        "precision": precision,
        "channels_last": channels_last,
        "data": source,
        "targets_per_img": round(len(targets) / batch_size, 1),
        "img_s": timing.rate(batch_size),
        "step_s": {"median": timing.median, "min": timing.min, "max": timing.max},
        "phase_s": phases,
        "phase_share": {k: v / total for k, v in phases.items()},
        "forward_gflop_per_img": fwd_flop / batch_size / 1e9,
        "train_gflop_per_img": gflop_img,
        "achieved_gflops": gflop_img * batch_size / timing.median,
    }
    result["ema_update_ms"] = _ema_update_ms(model, device)
    result["build_targets_ms"] = time_build_targets(model, imgs, targets, loss_hyp, device, step.autocast)
    if profile is not None:
        result["profile"] = profile
    return result


def _ema_update_ms(model: nn.Module, device: torch.device) -> float | None:
    """Median ms of one ModelEMA.update (train.py --ema adds it to every optimizer step)."""
    try:
        from utils.torch_utils import ModelEMA
    except ImportError:
        return None
    ema = ModelEMA(copy.deepcopy(model))
    timing = measure(lambda: ema.update(model), reps=5, warmup=1, device=device)
    return 1e3 * timing.median


def bench_epoch(
    cfg: Path,
    img_size: int,
    batch_size: int,
    workers: int,
    device: torch.device,
    channels_last: bool,
    precision: str,
    hyp: dict[str, float],
    images: str | list[str],
    reps: int,
    nc: int = 80,
) -> dict[str, object]:
    """Seconds per epoch through the real dataset and DataLoader (mosaic on, no test): `reps` epochs (0, 1,
    ...), each timed from creating the loader's iterator (workers start) to the last optimizer step.

    One untimed step on the first batch comes first, so one-time kernel setup is not counted. Reports the
    share of the epoch spent waiting for data (time blocked in the loader's __next__). The first epoch is
    also reported alone: with the data module's RAM image cache it is the only one that decodes from disk.
    """
    from utils.datasets import LoadImagesAndLabels
    from utils.hyp import derive_loss_hyp

    loss_hyp = derive_loss_hyp(hyp, nc)
    dataset = LoadImagesAndLabels(images, img_size=img_size, batch_size=batch_size, augment=True, hyp=hyp, seed=0,
                                  verbose=False)
    model = build_model(cfg, img_size, nc, device, channels_last)
    model.train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    loader = shuffled_loader(dataset, batch_size, workers, pin_memory=device.type == "cuda")
    first = next(iter(loader))
    step_fn = TrainStep(model, first[0].to(device).float().div_(255).contiguous(memory_format=fmt),
                        first[1].to(device), loss_hyp, precision, device)
    step_fn()
    seconds, waits, n_imgs = [], [], 0
    for epoch in range(reps):
        dataset.set_epoch(epoch)
        epoch_s, wait, n_imgs = _timed_epoch(loader, step_fn, device, fmt)
        seconds.append(epoch_s)
        waits.append(wait)
    median = float(np.median(seconds))
    return {
        "model": cfg.stem,
        "img_size": img_size,
        "batch_size": batch_size,
        "workers": workers,
        "precision": precision,
        "channels_last": channels_last,
        "images": n_imgs,
        "epochs": reps,
        "seconds_each": seconds,
        "seconds": median,
        "seconds_min": min(seconds),
        "seconds_max": max(seconds),
        "img_s": n_imgs / median,
        "first_epoch_s": seconds[0],
        "later_epochs_s": float(np.median(seconds[1:])) if len(seconds) > 1 else None,
        "data_wait_share": float(np.median([w / s for w, s in zip(waits, seconds)])),
        "data_wait_share_each": [w / s for w, s in zip(waits, seconds)],
    }


def _timed_epoch(
    loader: torch.utils.data.DataLoader, step_fn: TrainStep, device: torch.device, fmt: torch.memory_format
) -> tuple[float, float, int]:
    """One pass of `step_fn` over `loader`: seconds from creating the iterator (workers start) to the last
    step, seconds blocked waiting for the next batch, and images trained on."""
    wait = 0.0
    n_imgs = 0
    t0 = time.perf_counter()
    it = iter(loader)
    while True:
        tw = time.perf_counter()
        batch = next(it, None)
        wait += time.perf_counter() - tw
        if batch is None:
            break
        step_fn.imgs = batch[0].to(device, non_blocking=True).float().div_(255).contiguous(memory_format=fmt)
        step_fn.targets = batch[1].to(device)
        step_fn()
        n_imgs += len(batch[0])
    synchronize(device)
    return time.perf_counter() - t0, wait, n_imgs


def shuffled_loader(dataset, batch_size: int, workers: int, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """The benchmark's DataLoader: shuffled with a fixed generator, the data module's collate and worker setup, and
    workers that persist across epochs (as train.py's: they start once, in the first pass)."""
    from utils.datasets import LoadImagesAndLabels, worker_init

    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        collate_fn=LoadImagesAndLabels.collate_fn,
        worker_init_fn=worker_init,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
    )

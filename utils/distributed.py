"""Distributed training on PyTorch's own engine (torchrun, DDP), equal to one process.

Process group setup from torchrun's environment, a sampler whose global batches do not depend on the number
of ranks, SyncBatchNorm that also works on CPU (gloo), and small collective helpers that are no-ops in a single
process.

Terms: a *rank* is one training process; ``world_size`` is the number of ranks over all machines;
``local_rank`` numbers the ranks of one machine (it picks the GPU). The *global batch* (``--batch-size``)
is what one optimizer step would see in a single process; under DDP every global batch is split into
``world_size`` contiguous local slices, one per rank.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

LOGGER = logging.getLogger(__name__)

TIMEOUT_ENV = "YOLO_DIST_TIMEOUT"  # seconds; collectives, barriers and init give up after this long
DEFAULT_TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job. The defaults describe a plain single-process run.

    ``is_main`` is rank 0, the only rank that writes files, prints the progress bar and evaluates;
    it is derived from ``rank`` when left as None.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    is_main: bool | None = None
    backend: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world_size {self.world_size}")
        if self.is_main is None:
            object.__setattr__(self, "is_main", self.rank == 0)
        elif self.is_main != (self.rank == 0):
            raise ValueError(f"is_main={self.is_main} contradicts rank {self.rank} (main is rank 0)")

    @property
    def distributed(self) -> bool:
        """True when a process group with more than one rank is in use."""
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if value == "":
        return default
    try:
        return int(value)
    except ValueError as e:
        raise ValueError(f"environment variable {name}={value!r} is not an integer; it is set by torchrun") from e


def dist_timeout() -> timedelta:
    """The timeout for init, collectives and barriers: $YOLO_DIST_TIMEOUT seconds, else 30 minutes."""
    value = os.environ.get(TIMEOUT_ENV, "")
    if value == "":
        return DEFAULT_TIMEOUT
    try:
        seconds = float(value)
    except ValueError as e:
        raise ValueError(f"{TIMEOUT_ENV}={value!r}: expected a number of seconds, e.g. {TIMEOUT_ENV}=3600") from e
    if seconds <= 0:
        raise ValueError(f"{TIMEOUT_ENV}={value!r}: the timeout must be a positive number of seconds")
    return timedelta(seconds=seconds)


def _cuda_ids(device_arg: str) -> list[int] | None:
    """GPU ids named by --device: None for CPU, [] for 'any visible GPU', else the listed ids."""
    arg = device_arg.strip().lower().replace("cuda:", "")
    if arg == "cpu":
        return None
    if arg == "":
        return [] if torch.cuda.is_available() else None
    try:
        ids = [int(x) for x in arg.split(",") if x.strip() != ""]
    except ValueError as e:
        raise ValueError(f"--device {device_arg!r}: expected '', 'cpu', or GPU ids such as '0' or '0,1'") from e
    if not ids or min(ids) < 0:
        raise ValueError(f"--device {device_arg!r}: expected '', 'cpu', or GPU ids such as '0' or '0,1'")
    return ids


def _pick_device(device_arg: str, local_rank: int, local_world_size: int) -> torch.device:
    """The device of this rank: CPU, or the GPU that ``local_rank`` picks from --device (or from all GPUs)."""
    ids = _cuda_ids(device_arg)
    if ids is None:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {device_arg!r} asks for CUDA, but no GPU is visible; use --device cpu")
    n_visible = torch.cuda.device_count()
    ids = ids or list(range(n_visible))
    if max(ids) >= n_visible:
        raise ValueError(f"--device {device_arg!r}: GPU {max(ids)} does not exist, {n_visible} GPU(s) are visible")
    if local_world_size > len(ids):
        raise ValueError(
            f"{local_world_size} processes per machine but only {len(ids)} GPU(s) available to them "
            f"(--device {device_arg!r}, {n_visible} visible): use torchrun --nproc_per_node {len(ids)} "
            f"or list more GPUs"
        )
    return torch.device("cuda", ids[local_rank])


def setup_distributed(device_arg: str = "") -> tuple[DistInfo, torch.device]:
    """Join the process group that torchrun describes in the environment and pick this rank's device.

    Reads RANK, LOCAL_RANK, WORLD_SIZE and LOCAL_WORLD_SIZE (set by torchrun). With WORLD_SIZE 1 (or unset)
    no process group is created. Otherwise the backend is NCCL when the device is a GPU (each rank takes the
    GPU that its local rank picks from --device, e.g. '0,1', or from all visible GPUs for ''), gloo on CPU.
    Timeout: $YOLO_DIST_TIMEOUT seconds, default 30 minutes.

    Returns:
        (DistInfo, torch.device) for this process.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    local_world_size = _env_int("LOCAL_WORLD_SIZE", world_size)
    if world_size < 1 or not 0 <= rank < world_size or not 0 <= local_rank < local_world_size:
        raise ValueError(
            f"inconsistent distributed environment RANK={rank} LOCAL_RANK={local_rank} WORLD_SIZE={world_size} "
            f"LOCAL_WORLD_SIZE={local_world_size}; launch with torchrun instead of setting these by hand"
        )
    device = _pick_device(device_arg, local_rank, local_world_size)
    if world_size == 1:
        return DistInfo(rank=0, local_rank=0, world_size=1, backend=None), device

    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise ValueError(f"WORLD_SIZE={world_size} but {', '.join(missing)} unset; launch with torchrun")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=dist_timeout(), rank=rank, world_size=world_size)
    LOGGER.info("rank %d/%d (local rank %d) on %s, backend %s", rank, world_size, local_rank, device, backend)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, backend=backend), device


def cleanup_distributed(info: DistInfo) -> None:
    """Leave the process group (no-op in a single process)."""
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


class GlobalBatchSampler(torch.utils.data.Sampler):
    """Yields this rank's share of every global batch; the global batches do not depend on world_size.

    Each epoch the item order is ``np.random.default_rng([seed, epoch]).permutation(n_items)`` (or
    0..n-1 without shuffle), cut into global batches of ``global_batch`` items (the last one smaller,
    never dropped). With ``batches`` (precomputed rectangular batches, lists of item indices) those are the
    global batches, kept in the given order, so every rank takes part of the same aspect-ratio batch.
    Each global batch is split into ``world_size`` contiguous slices whose sizes differ by at most one
    (earlier ranks get the extra item); this rank's slice is yielded. A single process (world_size 1)
    therefore sees exactly the global batches of a DDP run of the same seed.

    Every global batch must hold at least ``world_size`` items, else some rank would get nothing to train
    on: the constructor checks this and says which batch sizes work.
    """

    def __init__(
        self,
        n_items: int,
        global_batch: int,
        world_size: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        batches: Sequence[Sequence[int]] | None = None,
    ) -> None:
        if n_items < 1:
            raise ValueError(f"the dataset is empty (n_items={n_items}); check the image paths in the .data file")
        if global_batch < 1:
            raise ValueError(f"--batch-size {global_batch}: must be at least 1")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if batches is not None:
            batches = [[int(i) for i in b] for b in batches]
            flat = [i for b in batches for i in b]
            if not flat or min(flat) < 0 or max(flat) >= n_items or any(len(b) == 0 for b in batches):
                raise ValueError(f"rect batches must be non-empty lists of indices in 0..{n_items - 1}")
        self.n_items = n_items
        self.global_batch = global_batch
        self.world_size = world_size
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.batches = batches
        self.epoch = 0
        self.start = 0

        sizes = [len(b) for b in batches] if batches is not None else [global_batch] * (n_items // global_batch)
        if batches is None and n_items % global_batch:
            sizes.append(n_items % global_batch)
        if min(sizes) < world_size:
            raise ValueError(
                f"{n_items} images in global batches of {global_batch} give a batch of {min(sizes)} image(s), "
                f"fewer than the {world_size} ranks, so a rank would get no images: choose --batch-size so that "
                f"both it and {n_items} % batch-size (unless 0) are >= {world_size}, or use fewer ranks"
            )

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's permutation (call before iterating, on every rank)."""
        self.epoch = int(epoch)

    def set_start(self, batch_index: int) -> None:
        """Skip the first ``batch_index`` global batches of the next iteration only (resume mid-epoch)."""
        if not 0 <= batch_index <= len(self):
            raise ValueError(f"start batch {batch_index} is outside 0..{len(self)} batches per epoch")
        self.start = int(batch_index)

    def global_batches(self, epoch: int) -> list[list[int]]:
        """The epoch's global batches (item indices), identical on every rank and for every world_size."""
        if self.batches is not None:
            return [list(b) for b in self.batches]
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.n_items)
        else:
            order = np.arange(self.n_items)
        return [order[i : i + self.global_batch].tolist() for i in range(0, self.n_items, self.global_batch)]

    def local_slice(self, batch: Sequence[int]) -> list[int]:
        """This rank's contiguous part of one global batch (sizes over ranks differ by at most one)."""
        q, r = divmod(len(batch), self.world_size)
        begin = self.rank * q + min(self.rank, r)
        return list(batch[begin : begin + q + (self.rank < r)])

    def __iter__(self) -> Iterator[list[int]]:
        start, self.start = self.start, 0
        for batch in self.global_batches(self.epoch)[start:]:
            yield self.local_slice(batch)

    def __len__(self) -> int:
        """Global batches per epoch (nb), whatever set_start skips."""
        if self.batches is not None:
            return len(self.batches)
        return math.ceil(self.n_items / self.global_batch)


class _SyncBatchNormFunction(torch.autograd.Function):
    """Batch normalisation over the union of all ranks' batches (training mode, NCHW or channels_last).

    Forward all-reduces per-channel [sum, sum of squares, count] in float64; backward all-reduces [sum dy,
    sum dy*xhat]. Weight and bias gradients stay local: DDP averages them like any other parameter gradient.

    The sum of squares is not summed from float32 squares ``x * x``: where a channel's mean is large next to its
    spread (mean / std ~ 1000 happens after a few layers), their rounding errors swamp ``E[x^2] - mean^2`` (the
    variance came out 0.2% to 7% off, and 2 ranks no longer trained like one process). Each rank first centres
    its values on its own mean, sums the small squared deviations (accurate in float32), and sends
    ``deviations + n_r * mean_r^2`` in float64, where the global subtraction loses nothing that matters.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps, group):
        dims = [0] + list(range(2, x.dim()))
        channels = x.shape[1]
        shape = [1, channels] + [1] * (x.dim() - 2)
        n_local = x.numel() // max(channels, 1)
        local_sum = x.sum(dims, dtype=torch.float64)
        d = x - (local_sum / max(n_local, 1)).to(x.dtype).view(shape)  # centred on this rank's mean
        d_sum = d.sum(dims, dtype=torch.float64)
        m2_local = (d * d).sum(dims, dtype=torch.float64) - d_sum * d_sum / max(n_local, 1)
        count = torch.full((1,), n_local, dtype=torch.float64, device=x.device)
        sum_sq = m2_local + local_sum * local_sum / max(n_local, 1)  # this rank's sum of x^2, in float64
        stats = torch.cat([local_sum, sum_sq, count])
        dist.all_reduce(stats, group=group)
        n = stats[-1]
        if n.item() <= 1:
            raise ValueError(f"SyncBatchNorm needs more than 1 value per channel in training, got {int(n.item())}")
        mean64 = stats[:channels] / n
        var64 = (stats[channels : 2 * channels] / n - mean64 * mean64).clamp_(min=0)
        invstd64 = (var64 + eps).rsqrt()
        mean, invstd = mean64.to(x.dtype), invstd64.to(x.dtype)
        xhat = (x - mean.view(shape)) * invstd.view(shape)
        y = xhat * weight.view(shape) + bias.view(shape) if weight is not None else xhat
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.group, ctx.n = group, n
        var_unbiased64 = var64 * (n / (n - 1))
        ctx.mark_non_differentiable(mean64, var_unbiased64)
        return y.to(x.dtype), mean64, var_unbiased64

    @staticmethod
    def backward(ctx, dy, _grad_mean, _grad_var):
        x, weight, mean, invstd = ctx.saved_tensors
        dims = [0] + list(range(2, x.dim()))
        channels = x.shape[1]
        shape = [1, channels] + [1] * (x.dim() - 2)
        xhat = (x - mean.view(shape)) * invstd.view(shape)
        sum_dy_local = dy.sum(dims, dtype=torch.float64)
        sum_dy_xhat_local = (dy * xhat).sum(dims, dtype=torch.float64)
        grad_weight = sum_dy_xhat_local.to(x.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        grad_bias = sum_dy_local.to(x.dtype) if weight is not None and ctx.needs_input_grad[2] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            sums = torch.cat([sum_dy_local, sum_dy_xhat_local])
            dist.all_reduce(sums, group=ctx.group)
            mean_dy = (sums[:channels] / ctx.n).to(x.dtype).view(shape)
            mean_dy_xhat = (sums[channels:] / ctx.n).to(x.dtype).view(shape)
            scale = invstd if weight is None else invstd * weight
            grad_x = (dy - mean_dy - xhat * mean_dy_xhat) * scale.view(shape)
        return grad_x, grad_weight, grad_bias, None, None


class CPUSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span all ranks of the process group; works with gloo on CPU.

    Same parameters, buffers and state_dict names as nn.BatchNorm2d, so checkpoints are interchangeable.
    In eval mode, or without a multi-rank process group, it is plain BatchNorm2d. Running statistics are
    updated with the module's momentum from the global mean and the unbiased global variance.
    """

    def __init__(self, *args: Any, process_group: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.process_group = process_group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (bs, C, h, w) -> (bs, C, h, w)."""
        world = dist.get_world_size(self.process_group) if dist.is_available() and dist.is_initialized() else 1
        if not self.training or world == 1:
            return super().forward(x)
        self._check_input_dim(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        y, mean, var_unbiased = _SyncBatchNormFunction.apply(x, self.weight, self.bias, self.eps, self.process_group)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1 - factor).add_(var_unbiased.to(self.running_var.dtype), alpha=factor)
        return y

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d, process_group: Any = None) -> CPUSyncBatchNorm:
        """A CPUSyncBatchNorm that takes over ``bn``'s parameter and buffer objects (as torch's
        convert_sync_batchnorm does), so an optimizer built before the conversion, and gradients already
        accumulated on those parameters, stay attached to the model."""
        new = cls(
            bn.num_features,
            eps=bn.eps,
            momentum=bn.momentum,
            affine=bn.affine,
            track_running_stats=bn.track_running_stats,
            process_group=process_group,
            device="meta",
        )
        if bn.affine:
            new.weight, new.bias = bn.weight, bn.bias
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            setattr(new, name, getattr(bn, name))
        new.train(bn.training)
        return new


def _replace_batchnorm(module: nn.Module, process_group: Any) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, CPUSyncBatchNorm):
        return CPUSyncBatchNorm.from_batchnorm(module, process_group)
    for name, child in module.named_children():
        new = _replace_batchnorm(child, process_group)
        if new is not child:
            setattr(module, name, new)
    return module


def convert_sync_bn(model: nn.Module, info: DistInfo, process_group: Any = None) -> nn.Module:
    """Make every BatchNorm2d synchronise its statistics across ranks (--sync-bn); returns the model.

    NCCL (GPU): torch.nn.SyncBatchNorm. gloo (CPU): CPUSyncBatchNorm. A single process: unchanged, since
    statistics over one rank's batch already are the global ones. State_dict names do not change.
    """
    if not info.distributed:
        return model
    if info.backend == "nccl":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group)
    return _replace_batchnorm(model, process_group)


def _flat_numbers(obj: Any) -> list[float]:
    if isinstance(obj, (list, tuple)):
        return [v for item in obj for v in _flat_numbers(item)]
    return [obj]


def _refill(obj: Any, values: Iterator[Any]) -> Any:
    if isinstance(obj, (list, tuple)):
        return type(obj)(_refill(item, values) for item in obj)
    return next(values)


def _collective_device(info: DistInfo) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if info.backend == "nccl" else torch.device("cpu")


def all_reduce_sum(x: Any, info: DistInfo) -> Any:
    """Sum over ranks (no-op in a single process).

    Accepts a tensor (summed in place and returned), a list/tuple of tensors (summed in place with one
    collective, returned), or nested lists/tuples of Python numbers, e.g. the per-layer
    ``(n_box, n_cls, n_obj)`` counts of ``loss_counts`` (a new structure of the same shape is returned).
    """
    if not info.distributed:
        return x
    if isinstance(x, torch.Tensor):
        dist.all_reduce(x)
        return x
    if isinstance(x, (list, tuple)) and x and all(isinstance(t, torch.Tensor) for t in x):
        dtype = torch.float64 if any(t.is_floating_point() for t in x) else torch.int64
        flat = torch.cat([t.detach().reshape(-1).to(dtype) for t in x])
        dist.all_reduce(flat)
        offset = 0
        for t in x:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()
        return x
    numbers = _flat_numbers(x)
    if not all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in numbers):
        raise TypeError(f"all_reduce_sum takes a tensor, tensors or nested numbers, got {type(x).__name__}")
    is_int = all(isinstance(v, (int, np.integer)) for v in numbers)
    flat = torch.tensor(numbers, dtype=torch.int64 if is_int else torch.float64, device=_collective_device(info))
    dist.all_reduce(flat)
    return _refill(x, iter(flat.tolist()))


def barrier(info: DistInfo, timeout: timedelta | None = None) -> None:
    """Wait until every rank arrives (no-op in a single process).

    On gloo this is ``monitored_barrier``: after ``timeout`` (default $YOLO_DIST_TIMEOUT or 30 minutes) it
    raises on rank 0 naming the ranks that never arrived, instead of hanging. On NCCL the process group's
    timeout applies.
    """
    if not info.distributed:
        return
    if info.backend == "gloo" and hasattr(dist, "monitored_barrier"):
        dist.monitored_barrier(timeout=timeout or dist_timeout(), wait_all_ranks=True)
    elif info.backend == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` (any picklable object) on every rank; returns ``obj`` in a single process."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_collective_device(info))
    return box[0]

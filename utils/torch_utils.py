"""PyTorch plumbing shared by the programs: device, seeds, optimizer, weights EMA, conv+BN folding, model summary.

Also torch.compile of the forward pass and a synchronised timer.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable
from copy import deepcopy
from typing import Any

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)


def select_device(device: str = "", batch_size: int | None = None) -> torch.device:
    """Turn a ``--device`` string into a torch.device; sets nothing process-wide.

    Args:
        device: ``''`` (cuda:0 when available, else cpu), ``'cpu'``, ``'0'``, ``'0,1'`` (first listed GPU is
            returned; multi-GPU runs use one process per GPU) or ``'cuda:N'``.
        batch_size: when several GPUs are listed, must be a multiple of their number.

    Raises:
        ValueError: a GPU was requested but CUDA is unavailable, an index does not exist, or batch_size does not
            split across the listed GPUs.
    """
    text = str(device).strip().lower().replace("cuda:", "")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError("--device mps requested but MPS is not available: use --device cpu")
        return torch.device("mps")
    if not text:
        dev = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
        logger.info("using %s", _describe(dev))
        return dev
    try:
        ids = [int(s) for s in text.split(",") if s.strip()]
    except ValueError as e:
        raise ValueError(f"--device {device!r}: expected '', 'cpu' or GPU indices like '0' or '0,1'") from e
    if not torch.cuda.is_available():
        raise ValueError(f"--device {device!r} requested but CUDA is not available: use --device cpu")
    n = torch.cuda.device_count()
    bad = [i for i in ids if not 0 <= i < n]
    if bad or not ids:
        raise ValueError(f"--device {device!r}: GPU index {bad} does not exist, this machine has {n} (0..{n - 1})")
    if batch_size is not None and len(ids) > 1 and batch_size % len(ids):
        raise ValueError(f"--batch-size {batch_size} is not a multiple of the {len(ids)} GPUs in --device {device!r}")
    dev = torch.device(f"cuda:{ids[0]}")
    logger.info("using %s", _describe(dev))
    return dev


def _describe(dev: torch.device) -> str:
    if dev.type != "cuda":
        return str(dev)
    p = torch.cuda.get_device_properties(dev)
    return f"{dev} ({p.name}, {p.total_memory / 2**20:.0f} MiB)"


def init_seeds(seed: int = 0, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices); ``deterministic`` also asks torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs this workspace setting for deterministic matmuls; it must be set before CUDA starts.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def is_parallel(model: nn.Module) -> bool:
    return isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel))


def de_parallel(model: nn.Module) -> nn.Module:
    """The wrapped model of a DataParallel/DistributedDataParallel wrapper, else the model itself."""
    return model.module if is_parallel(model) else model


def fold_bn_into_conv_(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Fold an eval-mode BatchNorm into the convolution before it, in place; returns ``conv`` (now with a bias).

    Same arithmetic as the reference trainer: ``w' = w * g / sqrt(eps + var)`` and
    ``b' = b * g / sqrt(eps + var) + beta - g * mean / sqrt(var + eps)``. The weight is rescaled in its own
    storage (no new module, no random initialisation of one, no copy: fusing yolov3-spp took ~2 s that way);
    its parameters stop requiring gradients.
    """
    with torch.no_grad():
        scale = bn.weight.div(torch.sqrt(bn.eps + bn.running_var))
        b_conv = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        b_bn = bn.bias - bn.weight.mul(bn.running_mean).div(torch.sqrt(bn.running_var + bn.eps))
        bias = scale * b_conv + b_bn
        conv.weight.mul_(scale.view(-1, 1, 1, 1))
        conv.bias = nn.Parameter(bias.to(conv.weight.dtype))
    return conv.requires_grad_(False)


def fuse_conv_and_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new convolution equal to ``conv`` followed by the eval-mode ``bn`` (see ``fold_bn_into_conv_``);
    ``conv`` and ``bn`` are left unchanged."""
    return fold_bn_into_conv_(deepcopy(conv), bn)


def model_info(model: nn.Module, verbose: bool = False, img_size: int | tuple[int, int] = 416) -> tuple:
    """Print and return ``(n_layers, n_params, n_grads, gflops)``.

    ``n_layers`` counts parameter tensors (the reference's "layers"); ``gflops`` is the forward cost of one
    ``img_size`` image (2 FLOPs per multiply-add of convolutions and matmuls), or None when the model cannot run a
    3-channel image. A fully convolutional Darknet's cost grows exactly with the pixel count, so it is measured on
    an image of the largest YOLO stride (one cell) and scaled.
    """
    model = de_parallel(model)
    params = list(model.parameters())
    n_p = sum(p.numel() for p in params)
    n_g = sum(p.numel() for p in params if p.requires_grad)
    if verbose:
        print(f"{'layer':>5} {'name':>40} {'gradient':>9} {'parameters':>12} {'shape':>20} {'mu':>10} {'sigma':>10}")
        for i, (name, p) in enumerate(model.named_parameters()):
            sd = p.std().item() if p.numel() > 1 else 0.0
            print(f"{i:5g} {name:>40} {str(p.requires_grad):>9} {p.numel():12g} {str(list(p.shape)):>20} "
                  f"{p.mean().item():10.3g} {sd:10.3g}")  # fmt: skip
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    gflops = _gflops(model, h, w, params)
    fs = f", {gflops:.1f} GFLOPs at {h}x{w}" if gflops is not None else ""
    print(f"Model Summary: {len(params)} layers, {n_p:,} parameters, {n_g:,} gradients{fs}")
    return len(params), n_p, n_g, gflops


def _gflops(model: nn.Module, h: int, w: int, params: list[nn.Parameter]) -> float | None:
    strides = [getattr(model.module_list[i], "stride", 0) for i in getattr(model, "yolo_layers", [])]
    s = max(strides) if strides else 0
    ph, pw = (s, s) if s and h % s == 0 and w % s == 0 else (h, w)
    ref = params[0] if params else torch.empty(0)
    x = torch.zeros(1, 3, ph, pw, device=ref.device, dtype=ref.dtype)
    # imported here: torch.utils.flop_counter costs ~0.15 s of start-up, and only summaries need it
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    except RuntimeError as e:
        logger.info("GFLOPs not measured: %s", e)
        return None
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 1e9 * (h * w) / (ph * pw)


class ModelEMA:
    """Exponential moving average of a model's floating-point state (weights and BN statistics).

    ``ema = d * ema + (1 - d) * model`` after every ``update``, with ``d = decay * (1 - exp(-updates / 2000))`` so
    early updates follow the model closely. Keep ``.ema.state_dict()`` and ``.updates`` to resume.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, updates: int = 0):
        self.ema = deepcopy(de_parallel(model)).eval()
        self.updates = updates
        self.decay_base = decay
        for p in self.ema.parameters():
            p.requires_grad_(False)

    def decay(self, updates: int) -> float:
        return self.decay_base * (1 - math.exp(-updates / 2000))

    def update(self, model: nn.Module) -> None:
        with torch.no_grad():
            self.updates += 1
            d = self.decay(self.updates)
            msd = [v.detach() for v in de_parallel(model).state_dict().values() if v.dtype.is_floating_point]
            # state_dict() tensors share storage with the EMA model, so updating them in place updates it.
            ema = [v for v in self.ema.state_dict().values() if v.dtype.is_floating_point]
            if len(msd) != len(ema):
                raise ValueError("ModelEMA.update: the model's state differs from the EMA copy's")
            torch._foreach_mul_(ema, d)
            torch._foreach_add_(ema, torch._foreach_mul(msd, 1.0 - d))

    def update_attr(self, model: nn.Module, include: tuple[str, ...] = ()) -> None:
        """Copy plain attributes (e.g. ``hyp``, ``gr``, ``nc``) from the model to the EMA copy."""
        src = de_parallel(model)
        for k in include:
            if hasattr(src, k):
                setattr(self.ema, k, getattr(src, k))


def compile_forward(model: nn.Module, mode: str | None = None) -> Callable[[torch.Tensor], Any]:
    """``model``'s forward through ``torch.compile`` (opt-in: train.py ``--compile``), or its plain forward when
    compiling fails. Call the returned function instead of ``model(x)``; keep ``model`` itself for
    ``state_dict``, the optimizer, the EMA and checkpoints (the compiled module's state_dict names carry an
    ``_orig_mod.`` prefix). For a DDP run pass the DDP-wrapped model.

    Compilation happens on the first call (minutes for yolov3-spp on 2 CPU cores) and again for each new input
    shape until torch switches to dynamic shapes (multi-scale training). When the compiler fails (no C++
    compiler, an unsupported operator), one warning is logged and every later call runs eagerly; errors from
    the model itself (a bad input shape) are raised as without compiling. Results are not bit-identical to
    eager ones (the compiler fuses BatchNorm, activations and their backward), so ``--resume`` and DDP
    equalities hold only between runs that both compile.
    """
    try:
        compiled = torch.compile(model, mode=mode)
    except (RuntimeError, ImportError) as e:  # this Python or build has no torch.compile
        logger.warning("torch.compile unavailable (%s): training without it", e)
        return model
    from torch._dynamo.exc import TorchDynamoException

    compile_errors: tuple[type[BaseException], ...] = (TorchDynamoException,)
    try:
        from torch._inductor.exc import InductorError

        compile_errors += (InductorError,)
    except ImportError:
        pass
    use = [compiled]

    def forward(x: torch.Tensor) -> Any:
        if use[0] is compiled:
            try:
                return compiled(x)
            except compile_errors as e:
                logger.warning("torch.compile failed, training continues without it: %s", str(e).splitlines()[0])
                use[0] = model
        return model(x)

    return forward


def time_synchronized() -> float:
    """A wall-clock time in seconds, taken after pending CUDA work has finished."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


def build_optimizer(model: nn.Module, hyp: dict[str, float], adam: bool = False) -> torch.optim.Optimizer:
    """SGD (Nesterov) or Adam over three parameter groups, as the reference: ``other`` (BatchNorm and the rest,
    no decay), ``conv`` (convolution weights, ``weight_decay``), ``bias`` (no decay). Each group carries its
    ``name`` (the keys of ``utils.schedule.BatchSettings``); frozen tensors are left out and empty groups dropped.
    Adam uses PyTorch's default betas, as the reference (``hyp['momentum']`` is SGD's only)."""
    groups: dict[str, list[nn.Parameter]] = {"other": [], "conv": [], "bias": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.endswith(".bias"):
            groups["bias"].append(p)
        elif name.endswith("Conv2d.weight"):
            groups["conv"].append(p)
        else:
            groups["other"].append(p)
    decay = {"other": 0.0, "conv": hyp["weight_decay"], "bias": 0.0}
    param_groups = [{"params": ps, "weight_decay": decay[k], "name": k} for k, ps in groups.items() if ps]
    if adam:
        return torch.optim.Adam(param_groups, lr=hyp["lr0"])
    # fused: one kernel for all tensors (the step was 4.5x faster on CPU in bench/) with bit-identical results
    return torch.optim.SGD(param_groups, lr=hyp["lr0"], momentum=hyp["momentum"], nesterov=True, fused=True)


def apply_batch_settings(optimizer: torch.optim.Optimizer, lr: dict[str, float], weight_decay: dict[str, float],
                         momentum: float) -> None:
    """Set each named parameter group's lr and weight decay, and the momentum (SGD only; Adam has betas)."""
    for group in optimizer.param_groups:
        name = group.get("name", "other")
        group["lr"] = lr[name]
        group["weight_decay"] = weight_decay[name]
        if "momentum" in group:
            group["momentum"] = momentum

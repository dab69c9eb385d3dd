"""Finding inf and NaN tensors in a model, its gradients or a checkpoint, fast enough for every optimizer step."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

__all__ = ["checkpoint_nonfinite", "model_nonfinite", "nonfinite_tensors"]


def nonfinite_tensors(named: Iterable[tuple[str, torch.Tensor | None]]) -> list[str]:
    """Names of the floating-point tensors that hold inf or NaN; [] when all are finite. Others are skipped.

    Fast enough for every optimizer step: one fused reduction over all tensors (the 2-norm of all of them,
    ``torch.nn.utils.get_total_norm``) is finite exactly when every element is, unless finite values are so
    large that the norm overflows; only when the norm is not finite is each tensor checked to name them.
    One device synchronisation per call.
    """
    items = [(n, t) for n, t in named if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex())]
    tensors = [t.detach() for _, t in items if t.numel()]
    if not tensors or bool(torch.isfinite(torch.nn.utils.get_total_norm(tensors, 2.0))):
        return []
    return [n for n, t in items if t.numel() and not bool(torch.isfinite(t.detach()).all())]


def model_nonfinite(model: torch.nn.Module, weights: bool = True, grads: bool = False) -> list[str]:
    """Names of a model's non-finite parameters and floating buffers (``weights``) and gradients (``grads``,
    named ``<param>.grad``); [] when all are finite. See ``nonfinite_tensors`` for the cost."""
    named: list[tuple[str, torch.Tensor | None]] = []
    if weights:
        named += list(model.named_parameters()) + list(model.named_buffers())
    if grads:
        named += [(f"{n}.grad", p.grad) for n, p in model.named_parameters()]
    return nonfinite_tensors(named)


def _walk_tensors(obj: Any, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _walk_tensors(v, f"{prefix}/{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _walk_tensors(v, f"{prefix}/{i}")


def checkpoint_nonfinite(ckpt: Any) -> list[str]:
    """Paths of the non-finite tensors anywhere in a checkpoint (model, ema, optimizer state, pending
    gradients, ...), e.g. ``model/module_list.0.Conv2d.weight`` or ``optimizer/state/3/momentum_buffer``."""
    return nonfinite_tensors(_walk_tensors(ckpt, ""))

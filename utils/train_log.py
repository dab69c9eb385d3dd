"""What the trainer reports per epoch: results.txt rows, the epoch summary line, memory in use, TensorBoard."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch

from utils.plots import RESULTS_COLUMNS


def results_header() -> str:
    return "".join(f"{c:>13s}" for c in RESULTS_COLUMNS) + "\n"


def results_row(epoch: int, mem: float, mloss: torch.Tensor, n_targets: int, img_size: int, results) -> str:
    values = [epoch, mem, *mloss.tolist(), n_targets, img_size, *results]
    return "".join(f"{v:>13.5g}" for v in values) + "\n"


def epoch_summary(epoch: int, results: tuple[float, ...], fit: float, improved: bool) -> str:
    """One line per epoch: the test metrics and validation losses (results order) and the fitness."""
    p, r, map50, map5095, f1, vbox, vobj, vcls = results
    return (f"Epoch {epoch}: P {p:.3f}  R {r:.3f}  mAP@0.5 {map50:.3f}  mAP@0.5:0.95 {map5095:.3f}  F1 {f1:.3f}  "
            f"val box {vbox:.4g} obj {vobj:.4g} cls {vcls:.4g}  fitness {fit:.4f}{' (best)' if improved else ''}")


def memory_gb(device: torch.device) -> float:
    """Memory in use, GB: CUDA memory reserved by torch, or this process's resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.memory_reserved(device) / 1e9
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9
    except (OSError, ValueError, AttributeError):
        return 0.0


def tensorboard_writer(save_dir: Path) -> Any:
    """A TensorBoard SummaryWriter logging into ``save_dir`` when the tensorboard package is installed, else None."""
    if importlib.util.find_spec("tensorboard") is None:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(save_dir))


def log_scalars(tb: Any, epoch: int, mloss: torch.Tensor, n_targets: int, img_size: int,
                results: tuple[float, ...]) -> None:
    """The epoch's results.txt values (after epoch and gpu_mem) to TensorBoard; nothing without a writer."""
    if tb is None:
        return
    for k, v in zip(RESULTS_COLUMNS[2:], [*mloss.tolist(), n_targets, img_size, *results]):
        tb.add_scalar(k, v, epoch)

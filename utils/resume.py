"""--resume: the checkpoint, options and epochs a run continues with, and each rank's RNG and pending gradients."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from utils.checkpoint import load_checkpoint, set_rng_state
from utils.distributed import DistInfo, broadcast_object
from utils.runlock import RunLockedError, lock_holder
from utils.runs import latest_resumable_run
from utils.train_options import build_parser

LOGGER = logging.getLogger("train")  # these messages are the trainer's
# taken from the command line on --resume (they do not change what is trained)
RESUME_MAY_CHANGE = ("device", "num_workers", "stop_after_batches", "ram_cache_mb")


class ResumeError(ValueError):
    """--resume cannot continue: no run to resume, or the chosen run folder is held by a live trainer."""


def run_folder(path: Path) -> Path:
    """The run folder of a checkpoint: ``runs/NAME`` for ``runs/NAME/weights/last.pt``."""
    return path.parent.parent if path.parent.name == "weights" else path.parent


def find_resume_checkpoint(weights: str | None, name: str | None, project: str, epochs: int | None) -> Path:
    """--resume: --weights PATH if given, else <project>/<name>/weights/last.pt with --name, else the last.pt of the
    most recently saved run in <project> that is stopped, never a live one (with ``epochs``, an explicit
    ``--epochs N``, also a finished run of fewer epochs, which then extends). Under torchrun only rank 0 calls
    this (see prepare_resume)."""
    if weights:
        return Path(weights)
    if name:
        return Path(project) / name / "weights" / "last.pt"
    chosen, skipped = latest_resumable_run(project, epochs)
    for s in skipped:
        print(f"--resume: skipped {s.run_dir} ({s.describe()})")
    print(f"--resume: continuing {chosen.run_dir} ({chosen.describe()}), the latest stopped run in {project}")
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
    wanted = opt.epochs if "epochs" in opt.explicit else None  # --resume --epochs N
    found: tuple[str | None, str | None] = (None, None)  # (path, error): rank 0's answer for every rank
    if info.is_main:
        try:
            path = find_resume_checkpoint(opt.weights, opt.name, opt.project, wanted)
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
    resumed.epochs = resume_epochs(saved["epochs"], ckpt["epoch"] + 1, ckpt.get("batch", 0), wanted, path)
    if info.is_main and resumed.epochs != saved["epochs"]:
        print(f"--resume: training to {resumed.epochs} epochs instead of {saved['epochs']}; the schedule is "
              f"recomputed for {resumed.epochs} epochs from epoch {ckpt['epoch'] + 1} on")
    return resumed, ckpt, run_folder(path)


def resume_command(last: Path, info: DistInfo) -> str:
    """How to continue a stopped run from ``last``: the same launcher, with --resume (torchrun restarts every
    rank; the other flags may stay, the checkpoint's options win)."""
    if info.distributed:
        return (f"the same torchrun command with --resume --weights {last} added (every rank needs {last} "
                f"at that path)")
    return f"python train.py --resume --weights {last}"


def gradient_state(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """Gradients accumulated but not yet stepped (mid-accumulation), by parameter name; None if none."""
    grads = {n: p.grad.detach().cpu().clone() for n, p in model.named_parameters() if p.grad is not None}
    return grads or None


def gather_rank_states(state: dict[str, Any], info: DistInfo) -> list[dict[str, Any]]:
    """Every rank's ``state`` (RNG, pending gradients), in rank order, on every rank."""
    if not info.distributed:
        return [state]
    return [broadcast_object(state if info.rank == r else None, info, src=r) for r in range(info.world_size)]


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

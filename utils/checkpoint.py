"""Self-describing training checkpoints, atomic saving, RNG state capture and run folders.

A checkpoint is a plain dict written with ``torch.save``. Its first five keys are those of ultralytics/yolov3
checkpoints, so readers of those files (``torch.load(f)['model']``) keep working; the rest is what an exact
``--resume`` needs.

=================== ==================================================================================
key                 content
=================== ==================================================================================
epoch               int, the last completed epoch (-1 before the first one ends)
best_fitness        float, best fitness so far (``utils.metrics.fitness``)
training_results    str, the text of results.txt so far
model               state_dict of the weights that were tested and scored: the EMA when the run keeps one
                    (the default, as the reference stores it), else the raw weights; DDP-unwrapped
optimizer           optimizer state_dict (None when the run saves weights only)
model_raw           state_dict of the raw (trained, not averaged) weights, for exact resume
scheduler           a description of the schedule (``utils.schedule.Recipe.describe``) or None
scaler              AMP GradScaler state_dict or None
ema_updates         int, ``ModelEMA.updates`` (its decay ramp depends on it), or None without EMA
hyp                 dict, the hyperparameters as given (not the derived loss values)
opt                 dict, the command-line options (``vars(args)``)
cfg_text            str, the model .cfg file text
names               list[str], class names
rng                 dict from ``rng_state()``: python, numpy, torch and cuda generator states
batch               int, the next batch index within ``epoch + 1`` (0 at an epoch boundary)
versions            dict: torch, numpy, python and this project's version
format_version      int, ``FORMAT_VERSION`` (bumped when the meaning of a key changes)
=================== ==================================================================================

Extra keyword fields given to ``make_checkpoint`` (for example the current multi-scale image size) are stored
under their own names.

Loading needs ``torch.load(..., weights_only=False)`` because the dict holds numpy RNG states and plain
Python objects that the weights-only unpickler refuses; only load checkpoints you trust.
"""

from __future__ import annotations

import logging
import os
import pickle
import platform
import random
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "FORMAT_VERSION",
    "atomic_save",
    "load_checkpoint",
    "make_checkpoint",
    "rng_state",
    "set_rng_state",
    "next_run_dir",
]

LOGGER = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: 'model' is the EMA (when kept) and 'model_raw' the raw weights; 1 had 'model' raw + 'ema'

_RESERVED = (
    "epoch",
    "best_fitness",
    "training_results",
    "model",
    "optimizer",
    "model_raw",
    "scheduler",
    "scaler",
    "ema_updates",
    "hyp",
    "opt",
    "cfg_text",
    "names",
    "rng",
    "batch",
    "versions",
    "format_version",
)


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` so that a kill at any moment leaves either the old or the new file.

    The data goes to a temporary file in the same folder (same filesystem, so the rename is atomic), is
    flushed and fsynced, then ``os.replace`` swaps it in. If saving raises, the temporary file is removed and
    the old ``path`` is untouched. A SIGKILL mid-write can leave a ``.<name>.*.tmp`` file beside it, never a
    truncated ``path``. The file gets the mode a plain ``open()`` would give (0o666 less the umask, usually
    0o644), not the owner-only 0o600 of ``mkstemp``, so others sharing the run folder can read it.

    Returns:
        ``path`` as a Path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600; give the mode open() would have given
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _umask() -> int:
    """The process umask. Read from /proc on Linux; elsewhere ``os.umask`` must set it to read it, so it is
    set straight back (a file another thread creates in between could get mode 0o666 & ~0o022)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable on POSIX; directories cannot be opened this way on Windows."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", require: Iterable[str] = ()
) -> dict[str, Any]:
    """Load a checkpoint dict written by ``atomic_save`` (or any ``torch.save``-d dict, e.g. ultralytics').

    Args:
        path: the .pt file.
        map_location: where tensors go (default CPU; the trainer moves state to its device when loading).
        require: keys that must be present (e.g. ``('model', 'optimizer', 'epoch')`` for ``--resume``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a readable torch file, not a dict, or a required key is missing; the message names
            the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found (resolved: {path.resolve()})")
    try:
        # weights_only=False: our dicts hold numpy RNG states and plain Python objects (see module doc).
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except (pickle.UnpicklingError, OSError, RuntimeError, EOFError, ValueError, AttributeError, ImportError) as e:
        # truncated zip: OSError/RuntimeError; foreign bytes: UnpicklingError; unknown classes: Attribute/ImportError
        raise ValueError(
            f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e}); "
            f"fix: pass a .pt file written by torch.save (a Darknet .weights file goes to --weights)"
        ) from e
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: expected a checkpoint dict, got {type(ckpt).__name__}")
    missing = [k for k in require if k not in ckpt]
    if missing:
        raise ValueError(f"{path}: checkpoint lacks {', '.join(missing)}; keys present: {', '.join(map(str, ckpt))}")
    version = ckpt.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        LOGGER.warning("%s: checkpoint format %d is newer than this code's %d", path, version, FORMAT_VERSION)
    return ckpt


def _state(obj: Any) -> Any:
    """``obj.state_dict()`` for modules/optimizers/schedulers/scalers; dicts and None pass through."""
    if obj is None or isinstance(obj, dict):
        return obj
    if isinstance(obj, torch.nn.Module):
        obj = getattr(obj, "module", obj)  # DataParallel / DistributedDataParallel
    if hasattr(obj, "state_dict"):
        return obj.state_dict()
    raise TypeError(f"cannot take a state_dict of {type(obj).__name__}")


def _project_version() -> str:
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    try:
        match = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(), re.MULTILINE)
    except OSError:
        return "unknown"
    return match.group(1) if match else "unknown"


def make_checkpoint(
    *,
    epoch: int,
    best_fitness: float,
    training_results: str,
    model: torch.nn.Module | dict[str, torch.Tensor],
    model_raw: torch.nn.Module | dict[str, torch.Tensor] | None = None,
    optimizer: Any = None,
    scheduler: Any = None,
    scaler: Any = None,
    ema_updates: int | None = None,
    hyp: dict[str, float] | None = None,
    opt: Any = None,
    cfg_text: str | None = None,
    names: list[str] | None = None,
    rng: dict[str, Any] | None = None,
    batch: int = 0,
    **extra: Any,
) -> dict[str, Any]:
    """Assemble the checkpoint dict described in the module docstring.

    ``model`` (the scored weights: the EMA model when there is one), ``model_raw`` (the trained weights; defaults
    to ``model``), ``optimizer``, ``scheduler`` and ``scaler`` may be objects (their ``state_dict()`` is taken; a
    DDP/DP wrapper is unwrapped) or state dicts. ``opt`` may be an ``argparse.Namespace`` or a dict. ``rng``
    defaults to ``rng_state()`` taken now. Extra keyword fields are stored as given.

    The tensors are referenced, not copied: save the dict before training continues.
    """
    if not isinstance(batch, int) or batch < 0:
        raise ValueError(f"batch must be a non-negative int (next batch index in the epoch), got {batch!r}")
    if opt is not None and not isinstance(opt, dict):
        opt = dict(vars(opt))
    ckpt: dict[str, Any] = {
        "epoch": int(epoch),
        "best_fitness": float(best_fitness),
        "training_results": training_results,
        "model": _state(model),
        "optimizer": _state(optimizer),
        "model_raw": _state(model if model_raw is None else model_raw),
        "scheduler": _state(scheduler),
        "scaler": _state(scaler),
        "ema_updates": None if ema_updates is None else int(ema_updates),
        "hyp": dict(hyp) if hyp is not None else None,
        "opt": opt,
        "cfg_text": cfg_text,
        "names": list(names) if names is not None else None,
        "rng": rng if rng is not None else rng_state(),
        "batch": batch,
        "versions": {
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "yolov3-trainer": _project_version(),
        },
        "format_version": FORMAT_VERSION,
    }
    ckpt.update(extra)
    return ckpt


def rng_state() -> dict[str, Any]:
    """The states of Python's ``random``, numpy's global generator, torch's CPU and all CUDA generators.

    ``cuda`` is a list of per-device ByteTensors, or None when CUDA is not available.
    """
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore generator states captured by ``rng_state()`` (e.g. from a loaded checkpoint).

    Tensors are moved to the CPU first, so a checkpoint loaded with ``map_location='cuda'`` works. A missing
    or None ``cuda`` entry leaves CUDA generators alone; a different device count restores the common ones
    and logs a warning.
    """
    missing = [k for k in ("python", "numpy", "torch") if k not in state]
    if missing:
        raise ValueError(f"RNG state lacks {', '.join(missing)}; keys present: {', '.join(state)}")
    random.setstate(_as_tuple(state["python"]))
    np.random.set_state(state["numpy"])
    torch.set_rng_state(torch.as_tensor(state["torch"]).cpu())
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        n = torch.cuda.device_count()
        if len(cuda) != n:
            LOGGER.warning("RNG state has %d CUDA generators, this machine %d: restoring the first ones", len(cuda), n)
        for i, s in enumerate(cuda[:n]):
            torch.cuda.set_rng_state(torch.as_tensor(s).cpu(), device=i)
    elif cuda:
        LOGGER.warning("RNG state has CUDA generators but CUDA is not available: they are not restored")


def _as_tuple(x: Any) -> Any:
    """``random.setstate`` needs tuples; serialisers other than pickle may hand back lists."""
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def next_run_dir(root: str | Path = "runs", name: str = "exp", exist_ok: bool = False) -> Path:
    """Create and return the folder for a new run, never reusing one that holds an earlier run's files.

    ``root/name`` is used when it does not exist or is empty. Otherwise the first free ``root/name2``,
    ``root/name3``, ... is created and a warning says so (the user chose a name that is taken; their old
    results.txt and checkpoints stay where they are). ``exist_ok=True`` returns ``root/name`` as is, for
    ``--resume`` into an existing run. The folder is created here, so two runs started together do not pick
    the same one.

    Raises:
        ValueError: ``name`` is empty, absolute or contains a path separator or '..'.
    """
    if not name or name in (".", "..") or "/" in name or "\\" in name or Path(name).is_absolute():
        raise ValueError(f"run name {name!r} must be a plain folder name (no '/', not '.' or '..'); fix: --name NAME")
    root = Path(root)
    wanted = root / name
    if exist_ok:
        wanted.mkdir(parents=True, exist_ok=True)
        return wanted
    root.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        candidate = wanted if n == 1 else root / f"{name}{n}"
        try:
            candidate.mkdir()
        except FileExistsError:
            if candidate.is_dir() and not any(candidate.iterdir()):
                break
            n += 1
            continue
        break
    if candidate != wanted:
        LOGGER.warning("%s already holds a run; this run writes to %s (use --name to choose)", wanted, candidate)
    return candidate

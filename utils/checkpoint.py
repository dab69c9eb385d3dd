"""Self-describing training checkpoints: atomic saving, reading any .pt with one clear error, and RNG state.

Run folders are utils/runs.py, inf/NaN checks utils/finite.py.

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

Errors, each one line that names the file: ``read_torch_file`` / ``load_checkpoint`` raise ValueError for a file
torch cannot read (empty, truncated, damaged, a Darknet file, not a checkpoint at all); ``atomic_save`` raises
``CheckpointSaveError`` for a full disk or a read-only folder, saying that the previous file is intact, and
``NonFiniteCheckpointError`` (with ``require_finite=True``) instead of writing inf/NaN tensors.
"""

from __future__ import annotations

import errno
import logging
import os
import pickle
import platform
import random
import re
import struct
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.files import fsync_dir
from utils.finite import checkpoint_nonfinite

__all__ = [
    "FORMAT_VERSION",
    "CheckpointSaveError",
    "NonFiniteCheckpointError",
    "atomic_save",
    "is_save_tmp",
    "load_checkpoint",
    "make_checkpoint",
    "previous_checkpoint_note",
    "read_torch_file",
    "rng_state",
    "set_rng_state",
]

LOGGER = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: 'model' is the EMA (when kept) and 'model_raw' the raw weights; 1 had 'model' raw + 'ema'


class CheckpointSaveError(OSError):
    """Saving a checkpoint failed in the filesystem (full disk, quota, read-only or unwritable folder).

    ``errno`` is the system error number, ``path`` the file that was to be written. The message is one line:
    the file, the system's error text, whether the previous file at that path is intact, and the fix.
    """

    def __init__(self, message: str, errno_: int | None, path: Path) -> None:
        super().__init__(message)
        self.errno = errno_
        self.path = path


class NonFiniteCheckpointError(ValueError):
    """A checkpoint was not saved because tensors in it hold inf or NaN; ``names`` lists them."""

    def __init__(self, message: str, names: list[str]) -> None:
        super().__init__(message)
        self.names = names


# atomic_save's temporary files: ".<name>." + mkstemp's 8 random characters + ".tmp"
_TMP_PREFIX, _TMP_SUFFIX = ".{}.", ".tmp"
_TMP_RE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def is_save_tmp(path: Path) -> bool:
    """Whether ``path`` is a temporary file an ``atomic_save`` left (a name it makes, and a plain file)."""
    return bool(_TMP_RE.match(path.name)) and path.is_file()

_SAVE_FIX = {
    errno.ENOSPC: "free space on that filesystem or write to another one (--project)",
    errno.EDQUOT: "free space within your disk quota or write to another filesystem (--project)",
    errno.EROFS: "the filesystem is mounted read-only: remount it read-write or write elsewhere (--project)",
    errno.EACCES: "make the folder writable for this user or write elsewhere (--project)",
    errno.EPERM: "make the folder writable for this user or write elsewhere (--project)",
}


def previous_checkpoint_note(path: str | Path) -> str:
    """'the previous checkpoint P is intact' when ``path`` exists, else 'there was no previous checkpoint at P'.

    For messages after a failed or refused save (``atomic_save`` never touches an existing file until the
    new one is complete), and for a stop message that must not claim a last.pt that was never written.
    """
    path = Path(path)
    if path.is_file():
        return f"the previous checkpoint {path} is intact"
    return f"there was no previous checkpoint at {path}"


def _os_error_in(exc: BaseException) -> OSError | None:
    """The OSError (with an errno) that caused ``exc``: torch.save turns a failed write into a RuntimeError
    ("unexpected pos ...") whose context holds the real error."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError) and e.errno is not None:
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _save_error(path: Path, err: OSError) -> CheckpointSaveError:
    code = err.errno
    name = errno.errorcode.get(code, str(code))
    fix = _SAVE_FIX.get(code, "check the disk and the folder")
    return CheckpointSaveError(
        f"cannot save {path}: {os.strerror(code)} ({name}); {previous_checkpoint_note(path)}; fix: {fix}", code, path
    )


def atomic_save(obj: Any, path: str | Path, require_finite: bool = False) -> Path:
    """``torch.save(obj)`` to ``path`` so that a kill at any moment leaves either the old or the new file.

    The data goes to a temporary file in the same folder (same filesystem, so the rename is atomic), is
    flushed and fsynced, then ``os.replace`` swaps it in. If saving raises, the temporary file is removed and
    the old ``path`` is untouched. A SIGKILL mid-write can leave a ``.<name>.*.tmp`` file beside it, never a
    truncated ``path`` (``utils.runs.remove_stale_tmp`` removes those at the next start). The file gets the mode a plain
    ``open()`` would give (0o666 less the umask, usually 0o644), not the owner-only 0o600 of ``mkstemp``, so
    others sharing the run folder can read it.

    Args:
        require_finite: refuse (before writing anything) to save a checkpoint whose tensors hold inf or NaN.

    Returns:
        ``path`` as a Path.

    Raises:
        CheckpointSaveError: the filesystem refused (full disk, quota, read-only, no permission); one line
            naming the file, the error and whether the previous file is intact.
        NonFiniteCheckpointError: ``require_finite`` and a tensor is not finite.
    """
    path = Path(path)
    if require_finite:
        bad = checkpoint_nonfinite(obj)
        if bad:
            shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            raise NonFiniteCheckpointError(
                f"{path} not saved: {len(bad)} tensor(s) hold inf or NaN ({shown}); {previous_checkpoint_note(path)}",
                bad,
            )
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX.format(path.name), suffix=_TMP_SUFFIX, dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600; give the mode open() would have given
        os.replace(tmp_name, path)
    except BaseException as e:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)
        err = _os_error_in(e) if isinstance(e, (OSError, RuntimeError)) else None
        if err is not None:
            raise _save_error(path, err) from e
        raise
    fsync_dir(path.parent)
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



# what torch.load raises for bytes it cannot read (KeyError and IndexError come from the weights-only unpickler,
# OSError EINVAL from the zip reader on some truncations)
_LOAD_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError, IndexError, TypeError,
                AttributeError, ImportError, struct.error, zipfile.BadZipFile, OSError)  # fmt: skip
_ZIP_MAGIC, _ZIP_END = b"PK\x03\x04", b"PK\x05\x06"
_ZIP_END_SEARCH = 22 + 65535  # the end record is at most this far from the end (after a maximal comment)


def _looks_darknet(head: bytes, size: int) -> bool:
    """A Darknet .weights header: int32 major, minor, revision (0.1.x or 0.2.x), then seen and float32 values."""
    if len(head) < 12:
        return False
    major, minor, revision = struct.unpack("<3i", head[:12])
    seen_bytes = 8 if major * 10 + minor >= 2 else 4
    return major == 0 and 0 < minor < 10 and 0 <= revision < 1000 and (size - 12 - seen_bytes) % 4 == 0


def describe_unreadable(path: Path) -> str:
    """What is wrong with a file that torch cannot load, and what to do, for a one-line error message."""
    again = "copy or download it again, or use another checkpoint of that run (best.pt, backup*.pt)"
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(64)
            f.seek(max(0, size - _ZIP_END_SEARCH))
            tail = f.read()
    except OSError as e:
        return f"cannot be read: {os.strerror(e.errno) if e.errno else e}; check the file's permissions and the disk"
    if size == 0:
        return f"empty file (0 bytes); {again}"
    if head.startswith(_ZIP_MAGIC):
        if _ZIP_END not in tail:
            return (
                f"truncated: a PyTorch zip archive of {size:,} bytes without its end record, cut short while it "
                f"was written or copied; {again}"
            )
        try:
            with zipfile.ZipFile(path) as z:
                torch_archive = any(n.endswith("/data.pkl") or n == "data.pkl" for n in z.namelist())
        except (zipfile.BadZipFile, OSError, ValueError):
            torch_archive = True  # a zip whose directory is broken too: most likely a damaged checkpoint
        if not torch_archive:
            return "a zip archive but not a PyTorch checkpoint (no data.pkl inside); pass a .pt written by torch.save"
        return f"damaged: a PyTorch zip archive ({size:,} bytes) whose contents cannot be read; {again}"
    if head[:1] == b"\x80":  # a pickle stream: PyTorch's legacy format (or a plain pickle)
        return f"truncated or damaged: a pickle ({size:,} bytes, PyTorch's legacy format) that cannot be read; {again}"
    if _looks_darknet(head, size):
        return (
            "a Darknet .weights file, not a PyTorch checkpoint; give it the .weights suffix "
            "(the format is chosen by the suffix)"
        )
    return (
        f"not a PyTorch checkpoint (it starts with {head[:12]!r}); pass a .pt written by torch.save "
        f"(train.py's last.pt or best.pt, an ultralytics .pt) or a Darknet .weights file"
    )


def read_torch_file(
    path: str | Path, map_location: str | torch.device = "cpu", safe_first: bool = True, mmap: bool = False
) -> Any:
    """``torch.load`` a .pt/.pth file with one clear error for every way it can be unreadable.

    Every reader of .pt files in this project goes through here (weights for train/test/detect, --resume,
    --transfer).

    Args:
        map_location: where tensors go.
        safe_first: try ``weights_only=True`` first and fall back to full unpickling only for files the safe
            loader refuses (our checkpoints hold numpy RNG states); False unpickles fully at once. Full
            unpickling can run code: only load files you trust.
        mmap: map the tensors from the file instead of reading them (fast when only a few fields are needed);
            ignored for the legacy (non-zip) format.

    Raises:
        FileNotFoundError: no such file.
        ValueError: ``"<file>: <what is wrong>; <what to do>"`` on one line: empty, truncated, damaged, a
            Darknet file under a .pt name, or not a PyTorch file at all.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (resolved: {path.resolve()}); put the file there or fix the path")
    if mmap:  # only torch.save's zip format can be mapped
        with open(path, "rb") as f:
            mmap = f.read(4) == _ZIP_MAGIC
    try:
        if safe_first:
            try:
                return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
            except pickle.UnpicklingError:
                LOGGER.info("%s: not loadable with weights_only=True, loading it as a full pickle", path)
        return torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
    except _LOAD_ERRORS as e:
        raise ValueError(f"{path}: {describe_unreadable(path)}") from e


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", require: Iterable[str] = (), mmap: bool = False
) -> dict[str, Any]:
    """Load a checkpoint dict written by ``atomic_save`` (or any ``torch.save``-d dict, e.g. ultralytics').

    Args:
        path: the .pt file.
        map_location: where tensors go (default CPU; the trainer moves state to its device when loading).
        require: keys that must be present (e.g. ``('model', 'optimizer', 'epoch')`` for ``--resume``).
        mmap: map tensors from the file (reading a few fields of a large checkpoint in milliseconds).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a readable torch file (see ``read_torch_file``), not a dict, or a required key is
            missing; the message names the file.
    """
    path = Path(path)
    # safe_first=False: our dicts hold numpy RNG states and plain Python objects (see module doc)
    ckpt = read_torch_file(path, map_location, safe_first=False, mmap=mmap)
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: expected a checkpoint dict, got {type(ckpt).__name__}; pass a checkpoint .pt")
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

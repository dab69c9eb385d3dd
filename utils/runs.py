"""Run folders: claiming, holding while training, their state (live, stopped, finished) and clean-up.

A new run claims its own folder; a failed start or a killed save leaves nothing behind that the next start trips on.

A run folder (``runs/exp``, ``runs/exp2``, ...) has one writer, the trainer holding its lock
(``utils.runlock.RunLock``); ``weights/last.pt`` in it is what ``--resume`` continues.
"""

from __future__ import annotations

import contextlib
import enum
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from utils.checkpoint import is_save_tmp, load_checkpoint
from utils.runlock import LOCK_NAME, LockHolder, RunLock, lock_holder

__all__ = [
    "START_FILES",
    "RunState",
    "RunStatus",
    "hold_run_dir",
    "latest_resumable_run",
    "next_run_dir",
    "remove_failed_start",
    "remove_stale_tmp",
    "run_status",
]

# the name these messages always carried (they were logged from utils/checkpoint.py): log output stays the same
LOGGER = logging.getLogger("utils.checkpoint")


def next_run_dir(root: str | Path = "runs", name: str = "exp", exist_ok: bool = False) -> Path:
    """Create and return the folder of a new run: ``root/name``, else the first free ``root/name2``, ``name3``...

    The folder is claimed by creating it (``mkdir`` fails when it exists), so of several runs started at once
    each gets its own folder, and an existing folder is never reused, not even an empty one (another start
    may have just made it). A start that fails before writing anything worth keeping removes its folder
    (``remove_failed_start``), so a retry with the same ``--name`` gets the same folder back. When the name is
    taken a warning names the folder used instead. ``exist_ok=True`` returns ``root/name`` as is (created if
    missing), for ``--resume`` into an existing run; lock it (``RunLock``) before writing.

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
            n += 1
            continue
        break
    if candidate != wanted:
        LOGGER.warning("%s already exists; this run writes to %s (use --name to choose)", wanted, candidate)
    return candidate


# What a start writes into its run folder before its first checkpoint (train.py, TensorBoard).
START_FILES = (
    "results.txt", "hyp.yaml", "opt.yaml", "labels.png", "train_batch0.jpg", "test_batch0_*.jpg",
    "events.out.tfevents.*", LOCK_NAME,
)  # fmt: skip


def remove_failed_start(run_dir: str | Path, start_files: Iterable[str] = START_FILES) -> bool:
    """Remove the folder of a run whose start failed before it saved anything worth keeping; True if removed.

    Call it only for a folder this process created (``next_run_dir`` without ``exist_ok``), after releasing
    its lock, when training raised. The folder is removed only when everything in it is what a start writes:
    ``start_files`` (glob patterns) at the top, and a ``weights/`` folder with nothing but ``atomic_save``
    temporary files; a ``results.txt`` with epoch rows, any checkpoint (``emergency.pt`` too), a file of the
    user's or a lock held by a live trainer keeps it, and an INFO log line says why.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return False
    patterns = tuple(start_files)
    reasons = []
    for p in sorted(run_dir.iterdir()):
        if p.name == "weights" and p.is_dir():
            other = [q.name for q in p.iterdir() if not is_save_tmp(q)]
            if other:
                reasons.append(f"weights/ holds {', '.join(sorted(other)[:3])}")
        elif not (p.is_file() and any(fnmatch(p.name, pat) for pat in patterns)):
            reasons.append(f"it holds {p.name}, which a start does not write")
    results = run_dir / "results.txt"
    if results.is_file() and len(results.read_text().splitlines()) > 1:
        reasons.append("results.txt has epoch rows")
    holder = lock_holder(run_dir)
    if holder is not None:
        reasons.append(f"it is locked by {holder.describe()}")
    if reasons:
        LOGGER.info("kept %s: %s", run_dir, "; ".join(reasons))
        return False
    for p in sorted(run_dir.rglob("*"), key=lambda q: len(q.parts), reverse=True):
        if p.is_dir():
            p.rmdir()
        else:
            p.unlink(missing_ok=True)
    run_dir.rmdir()
    LOGGER.info("removed %s: the start failed before saving anything", run_dir)
    return True


@contextlib.contextmanager
def hold_run_dir(run_dir: str | Path, created: bool, enabled: bool = True) -> Iterator[RunLock]:
    """Hold a run folder while training into it: ``with hold_run_dir(save_dir, created=...) as lock: train(...)``.

    Takes its lock (``RunLock``; fails at once with ``RunLockedError`` when a live trainer holds it), removes
    the temporary files that killed saves left in ``weights/`` (``remove_stale_tmp``), and releases the lock
    at exit. When the block raises (anything, Ctrl-C included) and this start ``created`` the folder
    (``next_run_dir`` without ``exist_ok``), the folder is removed if it holds nothing worth keeping
    (``remove_failed_start``), so that the retry gets the same name. ``enabled=False`` (torchrun ranks other
    than 0) makes it a no-op: those ranks never write into the folder.
    """
    run_dir = Path(run_dir)
    lock = RunLock(run_dir, enabled=enabled).acquire()
    try:
        if lock.held:
            remove_stale_tmp(run_dir / "weights", lock)
        yield lock
    except BaseException:
        lock.release()
        if created and enabled:
            remove_failed_start(run_dir)
        raise
    finally:
        lock.release()


class RunState(str, enum.Enum):
    """What a run folder holds, as ``run_status`` sees it."""

    LIVE = "live"  # a trainer holds its lock
    STOPPED = "stopped"  # weights/last.pt ends before the run's epochs: --resume continues it
    FINISHED = "finished"  # weights/last.pt at the end of its epochs: --resume --epochs N (N larger) extends it
    NO_CHECKPOINT = "no checkpoint"  # no weights/last.pt yet (or a failed start)
    UNUSABLE = "unusable"  # weights/last.pt is unreadable or not a resumable checkpoint of this trainer


@dataclass(frozen=True)
class RunStatus:
    """A run folder's state. ``epochs_done`` (completed epochs), ``epochs`` (the run's --epochs) and ``batch``
    (the next batch within epoch ``epochs_done``, 0 at an epoch boundary) come from weights/last.pt; None
    where it was not read (live, no checkpoint, unusable). ``holder`` is the live trainer, ``problem`` why
    last.pt is unusable."""

    run_dir: Path
    state: RunState
    last: Path
    epochs_done: int | None = None
    epochs: int | None = None
    batch: int = 0
    holder: LockHolder | None = None
    problem: str = ""

    def resumable(self, epochs: int | None = None) -> bool:
        """Whether ``--resume`` can continue it: stopped, or finished with fewer than ``epochs`` (the command
        line's --epochs when given explicitly) completed epochs."""
        if self.state is RunState.STOPPED:
            return True
        return self.state is RunState.FINISHED and epochs is not None and epochs > (self.epochs_done or 0)

    def describe(self) -> str:
        """'stopped at epoch 3 of 10, batch 5', 'finished 10 of 10 epochs', 'live: pid ...', ..."""
        if self.state is RunState.LIVE:
            return f"live: {self.holder.describe() if self.holder else 'a running trainer'}"
        if self.state is RunState.STOPPED:
            where = f", batch {self.batch}" if self.batch else ""
            return f"stopped at epoch {self.epochs_done} of {self.epochs}{where}"
        if self.state is RunState.FINISHED:
            return f"finished {self.epochs_done} of {self.epochs} epochs"
        if self.state is RunState.NO_CHECKPOINT:
            return f"no checkpoint ({self.last} does not exist)"
        return f"unusable: {self.problem}"


def run_status(run_dir: str | Path) -> RunStatus:
    """Tell a live run from a stopped, a finished or an unusable one, from its lock and weights/last.pt.

    A locked folder is LIVE whatever its checkpoint says (last.pt is not read). Otherwise last.pt is read
    memory-mapped (milliseconds, even for a large checkpoint): FINISHED when its ``epoch + 1`` reaches the
    ``epochs`` it was trained with at an epoch boundary (``batch`` 0), else STOPPED.
    """
    run_dir = Path(run_dir)
    last = run_dir / "weights" / "last.pt"
    holder = lock_holder(run_dir)
    if holder is not None:
        return RunStatus(run_dir, RunState.LIVE, last, holder=holder)
    if not last.is_file():
        return RunStatus(run_dir, RunState.NO_CHECKPOINT, last)
    try:
        ckpt = load_checkpoint(last, mmap=True)
    except (ValueError, OSError) as e:
        return RunStatus(run_dir, RunState.UNUSABLE, last, problem=str(e))
    opt, epoch, batch = ckpt.get("opt"), ckpt.get("epoch"), ckpt.get("batch") or 0
    if (
        not isinstance(opt, dict)
        or not isinstance(opt.get("epochs"), int)
        or not isinstance(epoch, int)
        or ckpt.get("optimizer") is None
    ):
        return RunStatus(
            run_dir,
            RunState.UNUSABLE,
            last,
            problem=f"{last} is not a resumable checkpoint of this trainer (no options or optimizer)",
        )
    done, epochs = epoch + 1, opt["epochs"]
    state = RunState.FINISHED if done >= epochs and not batch else RunState.STOPPED
    return RunStatus(run_dir, state, last, epochs_done=done, epochs=epochs, batch=int(batch))


def latest_resumable_run(project: str | Path, epochs: int | None = None) -> tuple[RunStatus, list[RunStatus]]:
    """The run a bare ``--resume`` continues: the most recently saved ``<project>/*/weights/last.pt`` of a run
    that is stopped (or finished, when ``epochs`` extends it; see ``RunStatus.resumable``), never a live one.

    Returns:
        ``(chosen, skipped)``: the chosen run's status and those of the more recent runs passed over.

    Raises:
        FileNotFoundError: no run to resume; the message says what each candidate is (up to 5) and the fix.
    """
    project = Path(project)
    candidates = sorted(project.glob("*/weights/last.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
    if not candidates:
        raise FileNotFoundError(f"--resume: no {project}/*/weights/last.pt found; pass --weights PATH")
    skipped = []
    for last in candidates:
        status = run_status(last.parent.parent)
        if status.resumable(epochs):
            return status, skipped
        skipped.append(status)
    shown = "; ".join(f"{s.run_dir.name} {s.describe()}" for s in skipped[:5])
    more = f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""
    raise FileNotFoundError(
        f"--resume: no stopped run in {project} ({shown}{more}); to extend a finished run pass --resume "
        f"--name NAME --epochs N with N above its epochs, to train anew leave out --resume"
    )


def remove_stale_tmp(folder: str | Path, lock: RunLock) -> list[tuple[Path, int]]:
    """Remove the temporary files that killed ``atomic_save`` calls left in ``folder`` (``.last.pt.*.tmp``).

    Only the holder of the run's lock may do this: a run folder has one writer, its lock holder, so a
    temporary file there that this process is not writing belongs to a writer that has ended. ``folder`` must
    be the locked run folder or inside it (usually ``<run>/weights``); only names ``atomic_save`` makes are
    touched.

    Returns:
        ``[(path, size in bytes)]`` of the removed files.

    Raises:
        RuntimeError: ``lock`` is not held, or ``folder`` is outside its run folder (a caller's mistake).
    """
    folder = Path(folder)
    if not lock.held:
        raise RuntimeError(
            f"remove_stale_tmp({folder}): take the run's lock first; without it a live writer's "
            f"temporary file could be removed"
        )
    if not folder.resolve().is_relative_to(lock.run_dir.resolve()):
        raise RuntimeError(f"remove_stale_tmp: {folder} is outside the locked run folder {lock.run_dir}")
    removed = []
    for p in sorted(folder.glob(".*.tmp")) if folder.is_dir() else []:
        if is_save_tmp(p):
            size = p.stat().st_size
            p.unlink(missing_ok=True)
            removed.append((p, size))
    if removed:
        LOGGER.info(
            "%s: removed %d temporary file(s), %.1f MB, left by interrupted checkpoint writes",
            folder,
            len(removed),
            sum(s for _, s in removed) / 1e6,
        )
    return removed

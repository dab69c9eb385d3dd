"""One live trainer per run folder: an advisory lock file, ``<run>/run.lock``.

A trainer takes the lock of its run folder at start (a new run, ``--resume`` into it, or an explicit
``--name``) and drops it at exit; a second trainer that wants the same folder fails at once with an error that
names the holder. Under torchrun only rank 0 takes it (``RunLock(..., enabled=info.is_main)``): the other
ranks never write into the folder.

How it works. The lock is ``fcntl.flock(LOCK_EX)`` on ``run.lock``. The kernel drops a flock when the process
that holds it ends in any way, SIGKILL and OOM kill included, so a crash leaves at most a stale *file*, never
a stale *lock*: the next trainer takes the lock and logs whose it was. The file holds the holder's pid, host,
start time and command line (JSON) only so that the error message can name them. On release the file is
removed while still locked; a taker checks that the file it locked is still the one at that path, so a
release and a new take cannot both win. Processes forked by the holder (DataLoader workers) close their copy
of the lock at fork, so a killed trainer's lingering workers do not keep its folder locked.

Network filesystems: flock works over NFS on Linux (as a POSIX lock through the NFS lock manager), so a run
locked on another host is seen as locked. Where flock is not supported (some Lustre or FUSE mounts, Windows)
the lock falls back to creating the file exclusively; a stale file is then recognised only when it names this
host and a pid that no longer runs. A file naming another host is treated as held, because whether that
process still runs cannot be checked from here; the error says to delete the file if no run uses the folder.

Probing (``lock_holder``) takes a shared lock for an instant. A taker that meets it retries for up to
``RunLock.wait`` seconds (1 s) before giving up, unless the file names a live process of this host, in which
case it gives up at once.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import socket
import sys
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

try:
    import fcntl
except ImportError:  # Windows: exclusive file creation only
    fcntl = None

__all__ = ["LOCK_NAME", "LockHolder", "RunLock", "RunLockedError", "lock_holder", "pid_alive"]

LOGGER = logging.getLogger(__name__)

LOCK_NAME = "run.lock"
# flock errors that mean "this filesystem cannot flock", not "someone holds it"
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or held) a run folder's lock, as written in its lock file; pid None when not written yet."""

    pid: int | None
    host: str
    since: float  # time.time() when the lock was taken, 0.0 when unknown
    command: str

    def describe(self) -> str:
        """'pid 123 on host gpu1 (since 2024-05-01 12:00:00, python train.py ...)'."""
        if self.pid is None:
            return "a process that has not written its pid yet"
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since)) if self.since else "unknown time"
        cmd = f", {self.command}" if self.command else ""
        return f"pid {self.pid} on host {self.host} (since {when}{cmd})"


_UNKNOWN = LockHolder(None, "", 0.0, "")


class RunLockedError(RuntimeError):
    """A run folder is locked by another live trainer. ``holder`` says who; the message is one line."""

    def __init__(self, run_dir: Path, holder: LockHolder, lock_file: Path, checkable: bool = True) -> None:
        self.run_dir, self.holder, self.lock_file = run_dir, holder, lock_file
        stop = (
            f"stop it (kill -INT {holder.pid} on {holder.host} saves a checkpoint and stops)"
            if holder.pid is not None
            else "stop it"
        )
        message = (
            f"{run_dir} is in use by {holder.describe()}: a run is still training into it and two trainers must "
            f"not share a run folder. Wait for it to end, {stop}, or train elsewhere (--name NEW, or a bare "
            f"--resume for the latest stopped run)"
        )
        if not checkable:
            message += (
                f"; this filesystem has no flock, so whether that process still runs cannot be checked: "
                f"if no run uses {run_dir}, delete {lock_file}"
            )
        super().__init__(message)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (True where that cannot be checked)."""
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _read_holder(path: Path) -> LockHolder | None:
    """The holder recorded in a lock file; None when the file is absent, empty or unreadable."""
    try:
        data = json.loads(path.read_text())
        return LockHolder(int(data["pid"]), str(data["host"]), float(data["since"]), str(data.get("command", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _is_stale(holder: LockHolder | None, host: str) -> bool:
    """For the no-flock fallback: a holder that names this host and a pid that no longer runs."""
    return holder is not None and holder.pid is not None and holder.host == host and not pid_alive(holder.pid)


def lock_holder(run_dir: str | Path) -> LockHolder | None:
    """Who holds ``run_dir``'s lock now, or None when nobody does (no lock file, or one a crash left behind).

    A lock held by this very process (another ``RunLock`` on the folder) is reported too.
    """
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _read_holder(path) or _UNKNOWN
            except OSError as e:
                if e.errno not in _NO_FLOCK:
                    raise
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
                return None  # the file of a holder that ended without removing it
        holder = _read_holder(path)
        return None if _is_stale(holder, socket.gethostname()) else holder or _UNKNOWN
    finally:
        os.close(fd)


def _close_in_child(ref: weakref.ref) -> None:
    """At fork, in the child: drop the inherited descriptor without unlocking (that would unlock the parent)."""
    lock = ref()
    if lock is not None and lock._fd is not None:
        os.close(lock._fd)
        lock._fd = None
        lock._mode = None


class RunLock:
    """The lock of one run folder, as a context manager: ``with RunLock(save_dir, enabled=info.is_main): ...``.

    Args:
        run_dir: the run folder (it must exist); the lock file is ``run_dir/run.lock``.
        enabled: False makes this a no-op (torchrun ranks other than 0).
        wait: seconds to retry while the lock is held by no live process of this host (a probe, a taker that
            has not written its pid yet, or a holder on another host) before giving up.

    Attributes:
        stale: after ``acquire``, the holder of a lock that a crash left behind and this lock took over, else None.

    Raises (from ``acquire`` / ``__enter__``):
        RunLockedError: another live trainer holds the folder.
        FileNotFoundError: ``run_dir`` does not exist.
    """

    def __init__(self, run_dir: str | Path, enabled: bool = True, wait: float = 1.0) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.enabled = enabled
        self.wait = wait
        self.stale: LockHolder | None = None
        self._fd: int | None = None
        self._mode: str | None = None  # "flock" or "file" while held

    @property
    def held(self) -> bool:
        """True while this object holds the lock (always False when disabled)."""
        return self._mode is not None

    def _record(self) -> bytes:
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                  "command": " ".join([Path(sys.executable).name, *sys.argv])[:500]}  # fmt: skip
        return (json.dumps(holder) + "\n").encode()

    def acquire(self) -> RunLock:
        """Take the lock (a no-op when disabled or already held by this object); see the class doc."""
        if not self.enabled or self.held:
            return self
        if not self.run_dir.is_dir():
            raise FileNotFoundError(f"run folder {self.run_dir} does not exist; create it before locking it")
        if fcntl is None or not self._acquire_flock():
            self._acquire_file()
        if self.stale is not None:
            LOGGER.info("%s: took over the lock left by %s, which has ended", self.path, self.stale.describe())
        return self

    def _acquire_flock(self) -> bool:
        """Take the lock with flock; False when this filesystem does not support flock."""
        deadline = time.monotonic() + self.wait
        host = socket.gethostname()
        while True:
            flags = os.O_RDWR | getattr(os, "O_CLOEXEC", 0)
            try:
                fd, created = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o666), True
            except FileExistsError:
                try:
                    fd, created = os.open(self.path, flags), False
                except FileNotFoundError:  # removed in between by a releasing holder
                    continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = _read_holder(self.path)
                live_here = holder is not None and holder.host == host and pid_alive(holder.pid)
                if live_here or time.monotonic() > deadline:
                    raise RunLockedError(self.run_dir, holder or _UNKNOWN, self.path) from None
                time.sleep(0.02)
                continue
            except OSError as e:
                os.close(fd)
                if created:  # the fallback creates the file itself, exclusively
                    self.path.unlink(missing_ok=True)
                if e.errno in _NO_FLOCK:
                    LOGGER.info(
                        "%s: flock not supported here (%s); locking by exclusive file creation",
                        self.path,
                        os.strerror(e.errno),
                    )
                    return False
                raise
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:  # a releasing holder removed it after we opened it
                same = False
            if not same:
                os.close(fd)
                continue
            self.stale = _read_holder(self.path)  # what is still in the file was written by a holder that ended
            os.ftruncate(fd, 0)
            os.pwrite(fd, self._record(), 0)
            self._fd, self._mode = fd, "flock"
            if hasattr(os, "register_at_fork"):  # one small hook per lock taken; a dead lock's hook does nothing
                os.register_at_fork(after_in_child=functools.partial(_close_in_child, weakref.ref(self)))
            return True

    def _acquire_file(self) -> None:
        """Fallback without flock: the lock is the exclusively created file; stale only if this host's pid died."""
        host = socket.gethostname()
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                holder = _read_holder(self.path)
                if _is_stale(holder, host):
                    self.stale = holder
                    self.path.unlink(missing_ok=True)
                    continue
                if holder is None and time.monotonic() < deadline:  # a taker between create and write
                    time.sleep(0.02)
                    continue
                raise RunLockedError(self.run_dir, holder or _UNKNOWN, self.path, checkable=False) from None
            try:
                os.write(fd, self._record())
            finally:
                os.close(fd)
            self._mode = "file"
            return

    def release(self) -> None:
        """Drop the lock and remove the lock file (a no-op when not held, e.g. in a forked child)."""
        if self._mode == "flock":
            fd, self._fd, self._mode = self._fd, None, None
            try:
                if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                    os.unlink(self.path)  # still locked: a taker that opened it sees it is gone and retries
            except FileNotFoundError:
                pass
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
        elif self._mode == "file":
            self._mode = None
            holder = _read_holder(self.path)
            if holder is not None and holder.pid == os.getpid() and holder.host == socket.gethostname():
                self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

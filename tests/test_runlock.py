"""utils/runlock.py: one live trainer per run folder, stale locks after a crash, the no-flock fallback."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from utils import runlock
from utils.runlock import LOCK_NAME, RunLock, RunLockedError, lock_holder, pid_alive

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX processes and signals")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_second_taker_fails_fast_naming_pid_host_and_fix(tmp_path):
    with RunLock(tmp_path) as first:
        assert first.held and (tmp_path / LOCK_NAME).is_file()
        record = json.loads((tmp_path / LOCK_NAME).read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        t = time.monotonic()
        with pytest.raises(RunLockedError) as e:
            RunLock(tmp_path).acquire()
        assert time.monotonic() - t < 0.5  # a live holder on this host: no waiting
        msg = str(e.value)
        assert msg.startswith(f"{tmp_path} is in use by pid {os.getpid()} on host {socket.gethostname()} (since ")
        assert f"kill -INT {os.getpid()} on {socket.gethostname()}" in msg and "--name NEW" in msg
        assert "\n" not in msg and e.value.holder.pid == os.getpid()
        assert lock_holder(tmp_path).pid == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists() and lock_holder(tmp_path) is None
    with RunLock(tmp_path) as again:  # released: free for the next run
        assert again.held and again.stale is None
    assert not again.held


def test_disabled_lock_is_a_no_op(tmp_path):
    with RunLock(tmp_path, enabled=False) as lock:  # torchrun ranks other than 0
        assert not lock.held and not (tmp_path / LOCK_NAME).exists()
        with RunLock(tmp_path):
            pass


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        RunLock(tmp_path / "nope").acquire()


def _hold(run_dir, ready, done):
    lock = RunLock(run_dir).acquire()
    ready.set()
    done.wait(30)
    lock.release()


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_lock_of_another_process_and_its_stale_file_after_sigkill(tmp_path, caplog):
    ctx = multiprocessing.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(tmp_path, ready, done))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(RunLockedError, match=f"in use by pid {holder.pid} on host "):
            RunLock(tmp_path).acquire()
        assert lock_holder(tmp_path).pid == holder.pid
        os.kill(holder.pid, signal.SIGKILL)  # a crash: no release, the file stays
        holder.join(10)
    finally:
        if holder.is_alive():
            holder.kill()
    assert (tmp_path / LOCK_NAME).is_file() and lock_holder(tmp_path) is None  # the kernel dropped the flock
    with caplog.at_level("INFO"), RunLock(tmp_path) as lock:
        assert lock.stale.pid == holder.pid
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert f"took over the lock left by pid {holder.pid}" in caplog.text


def test_children_forked_by_the_holder_do_not_keep_its_lock(tmp_path, repo_root):
    child_pid = tmp_path / "child.pid"
    script = textwrap.dedent(
        f"""
        import os, sys, time
        sys.path.insert(0, {str(repo_root)!r})
        from utils.runlock import RunLock
        lock = RunLock({str(tmp_path)!r}).acquire()
        pid = os.fork()  # like a DataLoader worker
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        open({str(child_pid)!r}, "w").write(str(pid))
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    grandchild = None
    try:
        deadline = time.monotonic() + 30
        while not child_pid.exists() or not child_pid.read_text():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        grandchild = int(child_pid.read_text())
        assert lock_holder(tmp_path).pid == proc.pid
        proc.kill()
        proc.wait(10)
        assert pid_alive(grandchild)  # the forked child still runs ...
        with RunLock(tmp_path, wait=0) as lock:  # ... and does not hold the folder
            assert lock.stale.pid == proc.pid
    finally:
        proc.kill()
        if grandchild is not None:
            os.kill(grandchild, signal.SIGKILL)


def _shared_lock(path):
    """Hold what lock_holder holds for an instant: a shared flock on the lock file."""
    fd = os.open(path, os.O_RDONLY)
    runlock.fcntl.flock(fd, runlock.fcntl.LOCK_SH | runlock.fcntl.LOCK_NB)
    return fd


def test_a_probe_does_not_make_a_taker_fail(tmp_path):
    (tmp_path / LOCK_NAME).write_text("")  # no holder recorded, as a crash between create and write leaves
    fd = _shared_lock(tmp_path / LOCK_NAME)
    threading.Timer(0.2, os.close, (fd,)).start()
    with RunLock(tmp_path, wait=5) as lock:  # retries while the probe holds it
        assert lock.held


def test_a_lock_held_without_a_recorded_holder_gives_up_after_wait(tmp_path):
    (tmp_path / LOCK_NAME).write_text("")
    fd = _shared_lock(tmp_path / LOCK_NAME)
    try:
        with pytest.raises(RunLockedError, match="in use by a process that has not written its pid yet"):
            RunLock(tmp_path, wait=0.1).acquire()
    finally:
        os.close(fd)


def test_garbage_in_a_stale_file_is_overwritten(tmp_path):
    (tmp_path / LOCK_NAME).write_text("{not json")
    with RunLock(tmp_path) as lock:
        assert lock.stale is None and json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_pid_alive():
    assert pid_alive(os.getpid()) and not pid_alive(_dead_pid())


@pytest.fixture
def no_flock(monkeypatch):
    """A filesystem without flock (some Lustre/FUSE mounts): the lock is the exclusively created file."""

    def flock(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(runlock.fcntl, "flock", flock)


def _write_holder(run_dir, pid, host):
    record = {"pid": pid, "host": host, "since": time.time(), "command": "python train.py"}
    (run_dir / LOCK_NAME).write_text(json.dumps(record))


def test_without_flock_a_live_lock_holds_and_a_dead_one_of_this_host_is_stale(tmp_path, no_flock, caplog):
    with RunLock(tmp_path) as lock:
        assert lock.held and lock_holder(tmp_path).pid == os.getpid()
        with pytest.raises(RunLockedError, match=f"in use by pid {os.getpid()}.*delete {tmp_path / LOCK_NAME}"):
            RunLock(tmp_path).acquire()
    assert not (tmp_path / LOCK_NAME).exists()
    dead = _dead_pid()
    _write_holder(tmp_path, dead, socket.gethostname())
    assert lock_holder(tmp_path) is None
    with caplog.at_level("INFO"), RunLock(tmp_path) as lock:
        assert lock.stale.pid == dead
    assert f"took over the lock left by pid {dead}" in caplog.text


def test_without_flock_a_lock_of_another_host_is_respected(tmp_path, no_flock):
    _write_holder(tmp_path, _dead_pid(), "some-other-host")
    assert lock_holder(tmp_path).host == "some-other-host"
    with pytest.raises(RunLockedError) as e:
        RunLock(tmp_path, wait=0).acquire()
    msg = str(e.value)
    assert "on host some-other-host" in msg and "cannot be checked" in msg
    assert f"if no run uses {tmp_path}, delete {tmp_path / LOCK_NAME}" in msg
    assert (tmp_path / LOCK_NAME).is_file()  # left alone

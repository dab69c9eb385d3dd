"""Run folders (utils/runs.py): claiming a new one, failed starts, stale temporary files, live / stopped / finished."""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from pathlib import Path

import pytest
import torch

from utils.runlock import RunLock, RunLockedError, lock_holder
from utils.runs import (
    RunState,
    hold_run_dir,
    latest_resumable_run,
    next_run_dir,
    remove_failed_start,
    remove_stale_tmp,
    run_status,
)


def test_next_run_dir_never_reuses_a_folder(tmp_path, caplog):
    root = tmp_path / "runs"
    first = next_run_dir(root, "exp")
    assert first == root / "exp" and first.is_dir()
    (first / "results.txt").write_text("x")
    with caplog.at_level("WARNING"):
        second = next_run_dir(root, "exp")
    assert second == root / "exp2" and second.is_dir()
    assert "exp2" in caplog.text
    # an empty folder is not free: another start may have just made it (the race of issue 15)
    assert next_run_dir(root, "exp") == root / "exp3"
    assert next_run_dir(root, "exp", exist_ok=True) == first
    assert (first / "results.txt").read_text() == "x"


@pytest.mark.parametrize("name", ["", "..", "a/b", "/abs"])
def test_next_run_dir_rejects_bad_names(tmp_path, name):
    with pytest.raises(ValueError, match="--name"):
        next_run_dir(tmp_path, name)


def _claim_rounds(root, rounds, barrier, out):
    claimed = []
    for r in range(rounds):
        barrier.wait()  # both processes claim at the same moment
        claimed.append(str(next_run_dir(root / str(r), "exp")))
    out.put(claimed)


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_two_processes_claiming_at_once_never_share_a_folder(tmp_path):
    ctx = multiprocessing.get_context("fork")
    rounds = 150
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_claim_rounds, args=(tmp_path, rounds, barrier, out)) for _ in range(2)]
    for p in procs:
        p.start()
    try:
        first, second = (out.get(timeout=60) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    shared = [r for r in range(rounds) if first[r] == second[r]]
    assert not shared, f"both processes got the same folder in rounds {shared[:10]}"
    for r in range(rounds):
        assert {Path(first[r]).name, Path(second[r]).name} == {"exp", "exp2"}


def _failed_start(run_dir):
    """What train.py writes into a new run folder before its first checkpoint."""
    (run_dir / "weights").mkdir()
    (run_dir / "results.txt").write_text("      epoch   gpu_mem\n")
    (run_dir / "hyp.yaml").write_text("lr0: 0.01\n")
    (run_dir / "opt.yaml").write_text("epochs: 3\n")
    (run_dir / "labels.png").write_bytes(b"png")
    (run_dir / "events.out.tfevents.1.host.1.0").write_bytes(b"tb")
    (run_dir / "weights" / ".last.pt.abcd_123.tmp").write_bytes(b"PK")


def test_failed_start_removes_its_folder_and_the_retry_gets_the_same_name(tmp_path, caplog):
    run = next_run_dir(tmp_path, "exp")
    _failed_start(run)
    with caplog.at_level("INFO"):
        assert remove_failed_start(run) is True
    assert not run.exists() and "start failed before saving anything" in caplog.text
    assert next_run_dir(tmp_path, "exp") == tmp_path / "exp"  # not exp2


@pytest.mark.parametrize(
    "extra, reason",
    [
        ("weights/emergency.pt", "weights/ holds emergency.pt"),
        ("weights/last.pt", "weights/ holds last.pt"),
        ("notes.txt", "it holds notes.txt, which a start does not write"),
        ("results_rows", "results.txt has epoch rows"),
        ("live_lock", "it is locked by pid"),
    ],
)
def test_failed_start_keeps_anything_worth_keeping(tmp_path, caplog, extra, reason):
    run = next_run_dir(tmp_path, "exp")
    _failed_start(run)
    lock = RunLock(run)
    if extra == "results_rows":
        (run / "results.txt").write_text("header\n  0/2  0.1\n")
    elif extra == "live_lock":
        lock.acquire()
    else:
        (run / extra).write_bytes(b"keep me")
    try:
        with caplog.at_level("INFO"):
            assert remove_failed_start(run) is False
    finally:
        lock.release()
    assert (run / "hyp.yaml").is_file() and reason in caplog.text
    if extra not in ("results_rows", "live_lock"):
        assert (run / extra).read_bytes() == b"keep me"


def test_stale_tmp_removed_only_by_the_lock_holder(tmp_path, caplog):
    wdir = tmp_path / "weights"
    wdir.mkdir()
    stale = wdir / ".last.pt.k2j_x9q1.tmp"
    stale.write_bytes(b"x" * 1000)
    mine = [wdir / ".notes.tmp", wdir / "last.pt", wdir / "a.tmp"]  # not names atomic_save makes
    for p in mine:
        p.write_bytes(b"keep")
    lock = RunLock(tmp_path)
    with pytest.raises(RuntimeError, match="take the run's lock first"):
        remove_stale_tmp(wdir, lock)
    with lock:
        with pytest.raises(RuntimeError, match="outside the locked run folder"):
            remove_stale_tmp(tmp_path.parent, lock)
        with caplog.at_level("INFO"):
            assert remove_stale_tmp(wdir, lock) == [(stale, 1000)]
    assert not stale.exists() and all(p.read_bytes() == b"keep" for p in mine)
    assert "removed 1 temporary file(s)" in caplog.text


def test_hold_run_dir_locks_cleans_tmp_and_removes_a_failed_start(tmp_path):
    run = next_run_dir(tmp_path, "exp")
    (run / "weights").mkdir()
    stale = run / "weights" / ".last.pt.abcdefgh.tmp"
    stale.write_bytes(b"PK")
    with hold_run_dir(run, created=True) as lock:
        assert lock.held and lock_holder(run).pid == os.getpid() and not stale.exists()
        with pytest.raises(RunLockedError), hold_run_dir(run, created=False):
            pass
        (run / "results.txt").write_text("header\n  0/2 rows\n")
    assert lock_holder(run) is None and (run / "results.txt").is_file()  # a finished block keeps everything

    fresh = next_run_dir(tmp_path, "new")
    with pytest.raises(FileNotFoundError, match="--transfer"), hold_run_dir(fresh, created=True):
        _failed_start(fresh)
        raise FileNotFoundError("weights/yolov3-spp.pt not found (--transfer)")
    assert not fresh.exists() and next_run_dir(tmp_path, "new") == fresh  # the retry gets the same name

    resumed = tmp_path / "exp"
    with pytest.raises(KeyboardInterrupt), hold_run_dir(resumed, created=False):
        raise KeyboardInterrupt  # a folder this start did not create is never removed
    assert (resumed / "results.txt").is_file() and lock_holder(resumed) is None
    with hold_run_dir(tmp_path / "exp2", created=True, enabled=False) as lock:  # torchrun rank > 0
        assert not lock.held


def _resumable(path, epoch, epochs, batch=0, mtime=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": epoch, "opt": {"epochs": epochs}, "optimizer": {"state": {}}, "batch": batch}, path)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def test_run_status_tells_stopped_finished_live_and_unusable_apart(tmp_path):
    stopped = _resumable(tmp_path / "a" / "weights" / "last.pt", epoch=2, epochs=10, batch=5)
    boundary = _resumable(tmp_path / "b" / "weights" / "last.pt", epoch=4, epochs=10)
    finished = _resumable(tmp_path / "c" / "weights" / "last.pt", epoch=9, epochs=10)
    last_batch = _resumable(tmp_path / "d" / "weights" / "last.pt", epoch=9, epochs=10, batch=3)
    s = run_status(stopped.parent.parent)
    assert (s.state, s.epochs_done, s.epochs, s.batch) == (RunState.STOPPED, 3, 10, 5)
    assert s.describe() == "stopped at epoch 3 of 10, batch 5" and s.resumable()
    assert run_status(boundary.parent.parent).describe() == "stopped at epoch 5 of 10"
    f = run_status(finished.parent.parent)
    assert f.state is RunState.FINISHED and f.describe() == "finished 10 of 10 epochs"
    assert not f.resumable() and not f.resumable(epochs=10) and f.resumable(epochs=15)
    assert run_status(last_batch.parent.parent).state is RunState.STOPPED  # stopped inside the last epoch
    (tmp_path / "e").mkdir()
    assert run_status(tmp_path / "e").state is RunState.NO_CHECKPOINT
    foreign = tmp_path / "f" / "weights" / "last.pt"
    foreign.parent.mkdir(parents=True)
    torch.save({"model": {}}, foreign)  # an ultralytics-style or weights-only file
    assert run_status(tmp_path / "f").state is RunState.UNUSABLE
    foreign.write_bytes(foreign.read_bytes()[:40])
    u = run_status(tmp_path / "f")
    assert u.state is RunState.UNUSABLE and "truncated" in u.problem
    with RunLock(tmp_path / "a"):
        live = run_status(tmp_path / "a")
        assert live.state is RunState.LIVE and f"pid {os.getpid()}" in live.describe()
        assert not live.resumable(epochs=100)
    assert run_status(tmp_path / "a").state is RunState.STOPPED  # released


def test_latest_resumable_run_skips_live_and_finished_runs(tmp_path):
    now = time.time()
    _resumable(tmp_path / "old" / "weights" / "last.pt", epoch=1, epochs=5, mtime=now - 300)
    _resumable(tmp_path / "stopped" / "weights" / "last.pt", epoch=1, epochs=5, batch=2, mtime=now - 200)
    _resumable(tmp_path / "done" / "weights" / "last.pt", epoch=4, epochs=5, mtime=now - 100)
    _resumable(tmp_path / "live" / "weights" / "last.pt", epoch=0, epochs=5, mtime=now)
    with RunLock(tmp_path / "live"):
        chosen, skipped = latest_resumable_run(tmp_path)
        assert chosen.run_dir == tmp_path / "stopped" and chosen.last == tmp_path / "stopped" / "weights" / "last.pt"
        assert [s.run_dir.name for s in skipped] == ["live", "done"]
        assert [s.state for s in skipped] == [RunState.LIVE, RunState.FINISHED]
        extended, _ = latest_resumable_run(tmp_path, epochs=8)  # --resume --epochs 8 may extend a finished run
        assert extended.run_dir == tmp_path / "done"
    assert latest_resumable_run(tmp_path)[0].run_dir == tmp_path / "live"  # stopped once its lock is gone


def test_latest_resumable_run_says_why_nothing_fits(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no .*/\*/weights/last.pt found; pass --weights PATH"):
        latest_resumable_run(tmp_path)
    _resumable(tmp_path / "done" / "weights" / "last.pt", epoch=4, epochs=5)
    with pytest.raises(FileNotFoundError, match=r"no stopped run in .*done finished 5 of 5 epochs.*--epochs N"):
        latest_resumable_run(tmp_path)

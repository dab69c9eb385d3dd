"""Checkpoint dicts, atomic saving, RNG state and run folders (utils/checkpoint.py)."""

from __future__ import annotations

import argparse
import errno
import hashlib
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from utils import checkpoint as ck
from utils.checkpoint import (
    FORMAT_VERSION,
    CheckpointSaveError,
    NonFiniteCheckpointError,
    RunState,
    atomic_save,
    checkpoint_nonfinite,
    hold_run_dir,
    latest_resumable_run,
    load_checkpoint,
    make_checkpoint,
    model_nonfinite,
    next_run_dir,
    nonfinite_tensors,
    previous_checkpoint_note,
    read_torch_file,
    remove_failed_start,
    remove_stale_tmp,
    rng_state,
    run_status,
    set_rng_state,
)
from utils.runlock import RunLock, RunLockedError, lock_holder


def _trained_parts():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[2], gamma=0.1)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    sched.step()
    return model, opt, sched


def _assert_state_equal(a, b):
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_round_trip_keeps_every_field(tmp_path):
    model, opt, sched = _trained_parts()
    ema = SimpleNamespace(ema=nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), updates=7)
    args = argparse.Namespace(epochs=3, name="exp")
    ckpt = make_checkpoint(
        epoch=4,
        best_fitness=0.25,
        training_results="epoch ...\n",
        model=ema.ema,
        model_raw=model,
        optimizer=opt,
        scheduler=sched,
        ema_updates=ema.updates,
        hyp={"lr0": 0.01},
        opt=args,
        cfg_text="[net]\n",
        names=["a", "b"],
        batch=3,
        img_size=320,
    )
    assert list(ckpt)[:5] == ["epoch", "best_fitness", "training_results", "model", "optimizer"]
    path = atomic_save(ckpt, tmp_path / "weights" / "last.pt")
    assert path == tmp_path / "weights" / "last.pt"
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left behind

    back = load_checkpoint(path, require=("model", "optimizer", "epoch"))
    assert back["epoch"] == 4 and back["best_fitness"] == 0.25 and back["batch"] == 3
    assert back["training_results"] == "epoch ...\n" and back["cfg_text"] == "[net]\n"
    assert back["names"] == ["a", "b"] and back["hyp"] == {"lr0": 0.01}
    assert back["opt"] == {"epochs": 3, "name": "exp"} and back["img_size"] == 320
    assert back["ema_updates"] == 7 and back["scaler"] is None
    assert back["format_version"] == FORMAT_VERSION
    assert set(back["versions"]) == {"torch", "numpy", "python", "yolov3-trainer"}
    _assert_state_equal(back["model"], ema.ema.state_dict())  # the scored (EMA) weights
    _assert_state_equal(back["model_raw"], model.state_dict())
    assert back["scheduler"] == sched.state_dict()

    model2, opt2, sched2 = _trained_parts()
    opt2.load_state_dict(back["optimizer"])
    sched2.load_state_dict(back["scheduler"])
    for p2, p1 in zip(model2.parameters(), model.parameters()):
        assert torch.equal(opt2.state[p2]["momentum_buffer"], opt.state[p1]["momentum_buffer"])
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    set_rng_state(back["rng"])  # the stored state is restorable


def test_ddp_style_wrapper_is_unwrapped():
    inner = nn.Linear(2, 2)
    wrapped = nn.Module()
    wrapped.module = inner
    ckpt = make_checkpoint(epoch=0, best_fitness=0.0, training_results="", model=wrapped)
    assert list(ckpt["model"]) == list(ckpt["model_raw"]) == ["weight", "bias"]
    assert ckpt["ema_updates"] is None


def test_bad_batch_value():
    with pytest.raises(ValueError, match="batch"):
        make_checkpoint(epoch=0, best_fitness=0.0, training_results="", model={}, batch=-1)


def test_failed_save_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"epoch": 1, "model": {"w": torch.ones(3)}}, path)
    real_save = torch.save

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip")  # partial bytes reach the temporary file ...
        raise KeyboardInterrupt  # ... then the process is interrupted mid-write

    monkeypatch.setattr(ck.torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"epoch": 2, "model": {"w": torch.zeros(3)}}, path)
    monkeypatch.setattr(ck.torch, "save", real_save)
    back = load_checkpoint(path)
    assert back["epoch"] == 1 and torch.equal(back["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_saved_file_gets_the_umask_mode_not_mkstemps_0600(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = atomic_save({"epoch": 0}, tmp_path / "last.pt")
        assert ck._umask() == umask
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_during_save_keeps_old_file(tmp_path, repo_root):
    path = tmp_path / "last.pt"
    atomic_save({"epoch": 1}, path)
    marker = tmp_path / "writing"
    script = textwrap.dedent(
        f"""
        import sys, time, torch
        sys.path.insert(0, {str(repo_root)!r})
        from utils import checkpoint as ck

        def slow_save(obj, f, *a, **k):
            f.write(b"PK\\x03\\x04 partial")
            f.flush()
            open({str(marker)!r}, "w").close()
            time.sleep(60)

        ck.torch.save = slow_save
        ck.atomic_save({{"epoch": 2}}, {str(path)!r})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, "child exited before writing"
            assert time.monotonic() < deadline, "child never started writing"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert load_checkpoint(path)["epoch"] == 1
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".last.pt.")]
    assert len(left) == 1 and left[0].name.endswith(".tmp")  # what a killed save leaves behind
    with RunLock(tmp_path) as lock:
        assert remove_stale_tmp(tmp_path, lock) == [(left[0], len(b"PK\x03\x04 partial"))]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "writing"]


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match=r"bad\.pt: not a PyTorch checkpoint \(it starts with b'not a checkp"):
        load_checkpoint(bad)
    listed = tmp_path / "list.pt"
    torch.save([1, 2], listed)
    with pytest.raises(ValueError, match=r"list\.pt: expected a checkpoint dict"):
        load_checkpoint(listed)
    partial = tmp_path / "partial.pt"
    torch.save({"model": {}}, partial)
    with pytest.raises(ValueError, match=r"partial\.pt: checkpoint lacks optimizer"):
        load_checkpoint(partial, require=("model", "optimizer"))


def _draws():
    return random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()


def test_rng_state_restore_reproduces_draws(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    _draws()
    state = rng_state()
    first = _draws()
    _draws()
    set_rng_state(state)
    assert _draws() == first
    atomic_save({"rng": state}, tmp_path / "r.pt")
    _draws()
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    assert _draws() == first


def test_set_rng_state_rejects_incomplete_state():
    with pytest.raises(ValueError, match="numpy"):
        set_rng_state({"python": random.getstate(), "torch": torch.get_rng_state()})


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


# ---------------------------------------------------------------------------------------------- run folders


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


# ---------------------------------------------------------------------------------------------- save errors


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MB tmpfs (needs root and mount; skipped where it cannot be mounted)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if sys.platform != "linux" or shutil.which("mount") is None:
        pytest.skip("needs Linux mount")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_full_disk_is_one_line_and_keeps_the_previous_checkpoint(small_fs):
    path = small_fs / "weights" / "last.pt"
    big = {"w": torch.zeros(400_000)}  # 1.6 MB, more than the 1 MB filesystem
    with pytest.raises(CheckpointSaveError) as e:
        atomic_save(big, path)
    assert str(e.value) == (
        f"cannot save {path}: No space left on device (ENOSPC); there was no previous checkpoint at {path}; "
        f"fix: free space on that filesystem or write to another one (--project)"
    )
    assert e.value.errno == errno.ENOSPC and e.value.path == path and isinstance(e.value, OSError)
    atomic_save({"epoch": 1, "w": torch.ones(10)}, path)
    digest = _md5(path)
    with pytest.raises(CheckpointSaveError, match=rf"ENOSPC\); the previous checkpoint {path} is intact; fix"):
        atomic_save(big, path)
    assert _md5(path) == digest and os.listdir(path.parent) == ["last.pt"]  # no temporary file left


def test_read_only_filesystem_is_one_line_and_keeps_the_previous_checkpoint(small_fs):
    path = small_fs / "last.pt"
    atomic_save({"epoch": 1}, path)
    digest = _md5(path)
    r = subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot remount read-only: {r.stderr.strip()}")
    with pytest.raises(CheckpointSaveError) as e:
        atomic_save({"epoch": 2}, path)
    assert str(e.value).startswith(
        f"cannot save {path}: Read-only file system (EROFS); the previous checkpoint {path} is intact; fix: "
    )
    assert "\n" not in str(e.value) and _md5(path) == digest


def _enospc_like_torch(obj, f, *args, **kwargs):
    """What torch.save does on a full disk: the write's OSError becomes the context of a RuntimeError."""
    f.write(b"PK\x03\x04 partial")
    try:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None


def test_save_errors_without_a_real_full_disk(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"epoch": 1}, path)
    digest = _md5(path)
    real_save = torch.save
    monkeypatch.setattr(ck.torch, "save", _enospc_like_torch)
    with pytest.raises(CheckpointSaveError, match=r"No space left on device \(ENOSPC\); the previous checkpoint"):
        atomic_save({"epoch": 2}, path)
    monkeypatch.setattr(ck.torch, "save", real_save)

    def no_permission(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(ck.tempfile, "mkstemp", no_permission)
    with pytest.raises(CheckpointSaveError, match=r"Permission denied \(EACCES\).*fix: make the folder writable"):
        atomic_save({"epoch": 2}, path)
    monkeypatch.undo()

    def over_quota(fd):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    monkeypatch.setattr(ck.os, "fsync", over_quota)
    with pytest.raises(CheckpointSaveError, match=r"\(EDQUOT\); the previous checkpoint .* is intact"):
        atomic_save({"epoch": 2}, tmp_path / "last.pt")
    monkeypatch.undo()
    assert _md5(path) == digest and os.listdir(tmp_path) == ["last.pt"]

    def torch_bug(obj, f, *args, **kwargs):
        raise RuntimeError("some torch error")

    monkeypatch.setattr(ck.torch, "save", torch_bug)
    with pytest.raises(RuntimeError, match="some torch error") as e:  # not a filesystem error: passed on
        atomic_save({"epoch": 2}, path)
    assert not isinstance(e.value, CheckpointSaveError)


def test_previous_checkpoint_note(tmp_path):
    assert previous_checkpoint_note(tmp_path / "last.pt") == f"there was no previous checkpoint at {tmp_path}/last.pt"
    (tmp_path / "last.pt").write_bytes(b"x")
    assert previous_checkpoint_note(tmp_path / "last.pt") == f"the previous checkpoint {tmp_path}/last.pt is intact"


# ---------------------------------------------------------------------------------------------- unreadable files


def _real_checkpoint(path, legacy=False):
    model, opt, sched = _trained_parts()
    ckpt = make_checkpoint(epoch=0, best_fitness=0.0, training_results="", model=model, optimizer=opt)
    torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)
    return path


def _half(src, dst):
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def test_every_unreadable_file_is_one_line_naming_what_is_wrong(tmp_path):
    full = _real_checkpoint(tmp_path / "full.pt")
    legacy = _real_checkpoint(tmp_path / "legacy.pt", legacy=True)
    damaged = tmp_path / "damaged.pt"
    data = bytearray(full.read_bytes())
    data[100:400] = b"\0" * 300  # the first record's bytes: the end record stays, the contents break
    damaged.write_bytes(bytes(data))
    darknet = tmp_path / "darknet.pt"
    with open(darknet, "wb") as f:
        np.array([0, 2, 0], np.int32).tofile(f)
        np.array([0], np.int64).tofile(f)
        np.zeros(100, np.float32).tofile(f)
    other_zip = tmp_path / "other_zip.pt"
    with zipfile.ZipFile(other_zip, "w") as z:
        z.writestr("readme.txt", "a data set, not a model")
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "text.pt").write_bytes(b"hello, this is not a model\n")
    expected = {
        _half(full, tmp_path / "half.pt"): "truncated: a PyTorch zip archive of ",
        _half(legacy, tmp_path / "half_legacy.pt"): "truncated or damaged: a pickle (",
        damaged: "damaged: a PyTorch zip archive (",
        darknet: "a Darknet .weights file, not a PyTorch checkpoint; give it the .weights suffix",
        other_zip: "a zip archive but not a PyTorch checkpoint (no data.pkl inside)",
        tmp_path / "empty.pt": "empty file (0 bytes)",
        tmp_path / "text.pt": "not a PyTorch checkpoint (it starts with b'hello, this ')",
    }
    for path, what in expected.items():
        for read in (read_torch_file, load_checkpoint, lambda p: read_torch_file(p, safe_first=False)):
            with pytest.raises(ValueError) as e:
                read(path)
            assert str(e.value).startswith(f"{path}: {what}"), str(e.value)
            assert "\n" not in str(e.value)
    assert load_checkpoint(full)["epoch"] == 0 and load_checkpoint(legacy)["epoch"] == 0
    with pytest.raises(FileNotFoundError, match="nope.pt not found"):
        read_torch_file(tmp_path / "nope.pt")


def test_mmap_reads_a_field_of_either_format(tmp_path):
    assert load_checkpoint(_real_checkpoint(tmp_path / "c.pt"), mmap=True)["epoch"] == 0
    assert load_checkpoint(_real_checkpoint(tmp_path / "l.pt", legacy=True), mmap=True)["epoch"] == 0


# ---------------------------------------------------------------------------------------------- non-finite


def test_nonfinite_tensors_names_exactly_the_bad_ones():
    good = torch.randn(100)
    huge = torch.full((1000,), 3e30)  # finite, but the squared norm overflows: the exact check clears it
    nan, inf = good.clone(), good.clone()
    nan[7], inf[3] = float("nan"), -float("inf")
    ints = torch.tensor([2**62])
    assert nonfinite_tensors([("a", good), ("huge", huge), ("i", ints), ("none", None), ("e", torch.zeros(0))]) == []
    assert nonfinite_tensors([("a", good), ("n", nan), ("h", huge), ("f", inf)]) == ["n", "f"]
    assert nonfinite_tensors([("half", torch.tensor([1.0, float("inf")], dtype=torch.float16)), ("a", good)]) == [
        "half"
    ]


def test_model_nonfinite_covers_parameters_buffers_and_gradients():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    assert model_nonfinite(model, grads=True) == []  # no gradients yet: nothing to check
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    assert model_nonfinite(model, grads=True) == []
    model[0].bias.grad[1] = float("nan")
    assert model_nonfinite(model) == [] and model_nonfinite(model, weights=False, grads=True) == ["0.bias.grad"]
    model[1].running_var[0] = float("inf")
    assert model_nonfinite(model) == ["1.running_var"]


def test_non_finite_checkpoint_is_never_saved(tmp_path):
    model, opt, sched = _trained_parts()
    path = tmp_path / "emergency.pt"
    ckpt = make_checkpoint(epoch=0, best_fitness=0.0, training_results="", model=model, optimizer=opt)
    assert checkpoint_nonfinite(ckpt) == []
    atomic_save(ckpt, path, require_finite=True)
    digest = _md5(path)
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = float("nan")
    next(iter(opt.state.values()))["momentum_buffer"].fill_(float("inf"))
    ckpt = make_checkpoint(epoch=1, best_fitness=0.0, training_results="", model=model, optimizer=opt)
    bad = checkpoint_nonfinite(ckpt)
    assert bad == ["model/0.weight", "optimizer/state/0/momentum_buffer", "model_raw/0.weight"]
    with pytest.raises(NonFiniteCheckpointError) as e:
        atomic_save(ckpt, path, require_finite=True)
    assert str(e.value) == (
        f"{path} not saved: 3 tensor(s) hold inf or NaN (model/0.weight, optimizer/state/0/momentum_buffer, "
        f"model_raw/0.weight); "
        f"the previous checkpoint {path} is intact"
    )
    assert e.value.names == bad and _md5(path) == digest
    other = tmp_path / "new.pt"
    with pytest.raises(NonFiniteCheckpointError, match=f"there was no previous checkpoint at {other}"):
        atomic_save(ckpt, other, require_finite=True)
    assert not other.exists()

"""utils/checkpoint.py: checkpoint dicts, atomic saving, reading errors, RNG state; utils/finite.py: inf/NaN checks."""

from __future__ import annotations

import argparse
import errno
import hashlib
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
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
    atomic_save,
    load_checkpoint,
    make_checkpoint,
    previous_checkpoint_note,
    read_torch_file,
    rng_state,
    set_rng_state,
)
from utils.finite import checkpoint_nonfinite, model_nonfinite, nonfinite_tensors
from utils.runlock import RunLock
from utils.runs import remove_stale_tmp


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


# ---------------------------------------------------------------------------------------------- save errors


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def small_fs(mount_tmpfs):
    """A 1 MB tmpfs (needs root and mount; skipped where it cannot be mounted)."""
    return mount_tmpfs("1m")


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

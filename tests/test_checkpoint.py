"""Checkpoint dicts, atomic saving, RNG state and run folders (utils/checkpoint.py)."""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from utils import checkpoint as ck
from utils.checkpoint import (
    FORMAT_VERSION,
    atomic_save,
    load_checkpoint,
    make_checkpoint,
    next_run_dir,
    rng_state,
    set_rng_state,
)


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


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match=r"bad\.pt: not a readable PyTorch checkpoint"):
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


def test_next_run_dir_never_reuses_a_run(tmp_path, caplog):
    root = tmp_path / "runs"
    first = next_run_dir(root, "exp")
    assert first == root / "exp" and first.is_dir()
    assert next_run_dir(root, "exp") == first  # still empty: reused
    (first / "results.txt").write_text("x")
    with caplog.at_level("WARNING"):
        second = next_run_dir(root, "exp")
    assert second == root / "exp2" and second.is_dir()
    assert "exp2" in caplog.text
    (second / "results.txt").write_text("y")
    assert next_run_dir(root, "exp") == root / "exp3"
    assert next_run_dir(root, "exp", exist_ok=True) == first
    assert (first / "results.txt").read_text() == "x"


@pytest.mark.parametrize("name", ["", "..", "a/b", "/abs"])
def test_next_run_dir_rejects_bad_names(tmp_path, name):
    with pytest.raises(ValueError, match="--name"):
        next_run_dir(tmp_path, name)

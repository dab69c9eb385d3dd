"""train.py under faults (issue 15).

Live and stopped runs, failed starts, stale temporary files, a full disk, non-finite gradients, exit codes, a
signal during the test, and extending a finished run."""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path

import pytest
import torch

import train
from utils.checkpoint import load_checkpoint
from utils.finite import checkpoint_nonfinite
from utils.runlock import RunLock
from utils.train_options import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory, shapes_data_cfg) -> Path:
    return shapes_data_cfg(tmp_path_factory.mktemp("faults"), seed=3)


def args(data: Path, project: Path, name: str, *extra: str) -> list[str]:
    """yolov3-tiny at 64 px, 2 batches of 8 per epoch, 1 epoch unless extra says otherwise."""
    return [
        "--cfg", str(REPO / "cfg" / "yolov3-tiny.cfg"), "--data", str(data), "--img-size", "64",
        "--epochs", "1", "--batch-size", "8", "--weights", "", "--device", "cpu", "--num-workers", "0",
        "--notest", "--project", str(project), "--name", name, *extra,
    ]  # fmt: skip


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_exit_codes_of_a_finished_and_a_stopped_run(data, tmp_path, capsys):
    assert train.main(args(data, tmp_path, "done")) == 0
    assert train.main(args(data, tmp_path, "cut", "--epochs", "2", "--stop-after-batches", "1")) == 143  # SIGTERM
    assert "Continue with: python train.py --resume" in capsys.readouterr().out
    assert train.main(["--resume", "--project", str(tmp_path), "--name", "cut"]) == 0


def test_resume_refuses_a_run_that_is_still_training(data, tmp_path, capsys):
    """A live trainer's folder (its lock held) is never joined: --resume --name fails fast naming the pid, and a
    bare --resume continues the latest *stopped* run instead, saying which."""
    assert train.main(args(data, tmp_path, "stopped", "--epochs", "2", "--stop-after-batches", "1")) == 143
    assert train.main(args(data, tmp_path, "live", "--epochs", "2", "--stop-after-batches", "1")) == 143
    capsys.readouterr()
    with RunLock(tmp_path / "live"):  # this process plays the live trainer of runs/live
        assert train.main(["--resume", "--project", str(tmp_path), "--name", "live"]) == 1
        err = capsys.readouterr().err
        assert f"{tmp_path / 'live'} is in use by pid {os.getpid()}" in err and "Traceback" not in err
        assert train.main(["--resume", "--project", str(tmp_path), "--epochs", "2"]) == 0
        out = capsys.readouterr().out
        assert f"--resume: skipped {tmp_path / 'live'} (" in out
        assert f"--resume: continuing {tmp_path / 'stopped'}" in out
    assert len((tmp_path / "live" / "results.txt").read_text().splitlines()) == 1  # untouched: epoch 0 unfinished
    assert len((tmp_path / "stopped" / "results.txt").read_text().splitlines()) == 3


def test_failed_start_leaves_nothing_and_the_retry_gets_the_same_name(data, tmp_path, capsys):
    missing = tmp_path / "absent.pt"
    assert train.main(args(data, tmp_path, "ft", "--transfer", "--weights", str(missing))) == 1
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "ft").exists()
    assert train.main(args(data, tmp_path, "ft")) == 0
    assert (tmp_path / "ft" / "weights" / "last.pt").is_file() and not (tmp_path / "ft2").exists()


def test_stale_tmp_files_of_killed_saves_are_removed_at_start(data, tmp_path):
    assert train.main(args(data, tmp_path, "run", "--epochs", "2", "--stop-after-batches", "1")) == 143
    stale = tmp_path / "run" / "weights" / ".last.pt.a1b2c3d4.tmp"
    stale.write_bytes(b"\0" * 1000)  # what a SIGKILL in the middle of atomic_save leaves
    assert train.main(["--resume", "--project", str(tmp_path), "--name", "run"]) == 0
    assert sorted(p.name for p in (tmp_path / "run" / "weights").iterdir()) == ["best.pt", "last.pt"]


def test_extending_a_finished_run(data, tmp_path, capsys):
    assert train.main(args(data, tmp_path, "run", "--epochs", "2")) == 0
    capsys.readouterr()
    assert train.main(["--resume", "--project", str(tmp_path), "--name", "run", "--epochs", "2"]) == 1
    assert "not more than the 2 epochs" in capsys.readouterr().err
    assert train.main(["--resume", "--project", str(tmp_path), "--name", "run", "--epochs", "3"]) == 0
    out = capsys.readouterr().out
    assert "training to 3 epochs instead of 2" in out and "Resuming from epoch 2" in out
    ckpt = load_checkpoint(tmp_path / "run" / "weights" / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["opt"]["epochs"] == 3 and ckpt["scheduler"]["epochs"] == 3
    assert len(ckpt["training_results"].splitlines()) == 4  # header + 3 epochs


def test_finished_run_says_how_to_extend_it(data, tmp_path, capsys):
    assert train.main(args(data, tmp_path, "run")) == 0
    capsys.readouterr()
    assert train.main(["--resume", "--project", str(tmp_path), "--name", "run"]) == 1
    err = capsys.readouterr().err
    assert "already finished its 1 epochs" in err and "--resume --epochs N with N > 1" in err


def test_non_finite_gradients_stop_the_run_and_nothing_non_finite_is_saved(data, tmp_path, capsys, monkeypatch):
    """A finite loss with NaN gradients (sqrt at 0) in epoch 1: the old loop stepped and saved NaN weights; now
    the run stops before the step, emergency.pt holds the last finite state and last.pt is untouched."""
    real = train.compute_loss
    calls = []

    def poisoned(pred, *a, **kw):
        loss, items = real(pred, *a, **kw)
        calls.append(1)
        if len(calls) == 3:  # epoch 1, batch 0: value unchanged (sqrt(0) = 0), gradient NaN
            loss = loss + torch.sqrt(pred[0].sum() * 0)
        return loss, items

    monkeypatch.setattr(train, "compute_loss", poisoned)
    assert train.main(args(data, tmp_path, "nan", "--epochs", "2", "--accumulate", "1")) == 1
    err = capsys.readouterr().err
    assert "non-finite gradients at epoch 1 batch 0" in err and "the weights were not updated" in err
    weights = tmp_path / "nan" / "weights"
    assert f"saved to {weights / 'emergency.pt'}" in err and f"the previous checkpoint {weights / 'last.pt'} is " \
        f"intact" in err
    for name in ("emergency.pt", "last.pt"):
        assert checkpoint_nonfinite(load_checkpoint(weights / name)) == [], name
    assert load_checkpoint(weights / "last.pt")["epoch"] == 0


def test_signal_during_the_test_is_announced_at_once(data, tmp_path, capfd, monkeypatch):
    real = train.evaluation.test

    def interrupted(*a, **kw):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the epoch's test runs
        return real(*a, **kw)

    monkeypatch.setattr(train.evaluation, "test", interrupted)
    argv = args(data, tmp_path, "sig", "--epochs", "2")
    argv.remove("--notest")
    assert train.main(argv) == 143
    err = capfd.readouterr().err
    assert "SIGTERM received: the run will stop after the test of epoch 0 and save a checkpoint" in err
    assert load_checkpoint(tmp_path / "sig" / "weights" / "last.pt")["epoch"] == 0


@pytest.fixture
def small_fs(mount_tmpfs):
    """A tmpfs that holds one checkpoint of this run but not two (needs root and mount; skipped elsewhere)."""
    return mount_tmpfs("160m")


def test_full_disk_is_one_error_line_and_last_pt_stays_intact(data, small_fs, capsys):
    """last.pt of epoch 0 (~105 MB: EMA, raw weights, optimizer) fits; epoch 1's temporary copy does not."""
    assert train.main(args(data, small_fs, "run", "--epochs", "2", "--nosave", "--stop-after-batches", "2")) == 143
    last = small_fs / "run" / "weights" / "last.pt"
    digest = md5(last)
    capsys.readouterr()
    assert train.main(["--resume", "--project", str(small_fs), "--name", "run"]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("ERROR")]  # the rest is the progress bar
    assert lines == [(f"ERROR: cannot save {last}: No space left on device (ENOSPC); the previous checkpoint "
                        f"{last} is intact; fix: free space on that filesystem or write to another one (--project)")]
    assert "Traceback" not in err and md5(last) == digest
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.pt"]  # no temporary file left

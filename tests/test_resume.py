"""--resume is exact: an interrupted and resumed run ends where an uninterrupted one does.

On CPU with --deterministic, a run interrupted once and resumed ends with the same weights, optimizer state and
EMA as an uninterrupted run, bit for bit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train
from utils.checkpoint import load_checkpoint
from utils.train_options import REPO


@pytest.fixture(scope="module")
def data16(tmp_path_factory, shapes_data_cfg) -> Path:
    return shapes_data_cfg(tmp_path_factory.mktemp("resume"), seed=2)


def args(data: Path, project: Path, name: str, batch: int = 4, *extra: str) -> list[str]:
    """2 epochs of 16 images with the 2020 recipe; a burn-in of 6 batches ramps accumulate 1 -> 3 (so the optimizer
    steps after ni = 0, 1, 2, 4, 6 at batch 4: stops fall inside an accumulation, and epoch 0 ends with ni = 3
    pending) together with lr, momentum, weight decay and gr; multi-scale and EMA on so their state is part of
    what must be restored."""
    return [
        "--cfg", str(REPO / "cfg" / "yolov3-tiny.cfg"), "--data", str(data), "--img-size", "64",
        "--epochs", "2", "--batch-size", str(batch), "--accumulate", "3", "--burn-in", "6", "--multi-scale", "--ema",
        "--weights", "", "--device", "cpu", "--num-workers", "0", "--deterministic", "--notest",
        "--project", str(project), "--name", name, *extra,
    ]  # fmt: skip


def assert_same_run(a: Path, b: Path) -> None:
    x, y = load_checkpoint(a), load_checkpoint(b)
    assert (x["epoch"], x["batch"]) == (y["epoch"], y["batch"]) == (1, 0)
    for key in ("model", "model_raw"):
        assert x[key].keys() == y[key].keys()
        diff = [k for k in x[key] if not torch.equal(x[key][k], y[key][k])]
        assert not diff, f"{key}: {len(diff)} tensors differ, e.g. {diff[:3]}"
    assert x["ema_updates"] == y["ema_updates"]
    sx, sy = x["optimizer"]["state"], y["optimizer"]["state"]
    assert sx.keys() == sy.keys()
    assert all(torch.equal(sx[k]["momentum_buffer"], sy[k]["momentum_buffer"]) for k in sx)

    def rows(text: str) -> list[list[str]]:  # all but the memory column, which is a measurement
        return [r.split()[:1] + r.split()[2:] for r in text.splitlines()]

    assert rows(x["training_results"]) == rows(y["training_results"])


@pytest.fixture(scope="module")
def uninterrupted(data16, tmp_path_factory) -> Path:
    project = tmp_path_factory.mktemp("runs")
    assert train.main(args(data16, project, "full")) == 0
    return project / "full" / "weights" / "last.pt"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stop_after", "where"),
    [(4, "between epochs, mid-accumulation"), (2, "mid-epoch, right after a step"),
     (6, "second epoch, mid-accumulation")],
)
def test_resume_is_bit_exact(data16, uninterrupted, tmp_path, capsys, stop_after, where):
    assert train.main(args(data16, tmp_path, "cut", 4, "--stop-after-batches", str(stop_after))) == 143  # as SIGTERM
    out = capsys.readouterr().out
    assert "Stopped" in out and "--resume" in out
    ckpt = load_checkpoint(tmp_path / "cut" / "weights" / "last.pt")
    assert (ckpt["epoch"] + 1) * 4 + ckpt["batch"] == stop_after, where
    pending = {4: True, 2: False, 6: True}[stop_after]  # batch ni = stop_after - 1 stepped or not (see args)
    assert bool(ckpt["ranks"][0]["grads"]) == pending, where
    assert train.main(["--resume", "--project", str(tmp_path), "--name", "cut"]) == 0
    assert "Resuming from epoch" in capsys.readouterr().out
    assert_same_run(uninterrupted, tmp_path / "cut" / "weights" / "last.pt")
    assert train.main(["--resume", "--project", str(tmp_path), "--name", "cut"]) == 1  # finished: says so
    assert "already finished" in capsys.readouterr().err


@pytest.mark.slow
def test_real_sigterm_stops_cleanly_and_resumes_exactly(data16, tmp_path):
    """SIGTERM a training process as soon as its first checkpoint exists (somewhere in epoch 1 of 8 batches);
    it must exit 143 (128 + SIGTERM) with a resumable checkpoint, and the resumed run must equal an uninterrupted
    one."""
    assert train.main(args(data16, tmp_path, "full", 2)) == 0
    cmd = [sys.executable, "train.py", *args(data16, tmp_path, "killed", 2)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = tmp_path / "killed" / "weights" / "last.pt"
    try:
        deadline = time.time() + 300
        while not last.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert last.exists(), "no checkpoint appeared"
        os.kill(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, out
    assert "Stopped" in out and "Traceback" not in out
    ckpt = load_checkpoint(last)
    resumable = ckpt["epoch"] < 1 or ckpt["batch"] > 0
    if resumable:
        assert train.main(["--resume", "--weights", str(last)]) == 0
    assert_same_run(tmp_path / "full" / "weights" / "last.pt", last)

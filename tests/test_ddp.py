"""End-to-end distributed training with torchrun on CPU (gloo).

Two ranks equal one process, a stopped 2-rank run resumes to the same weights, two simulated machines on
loopback complete an epoch, and a dead rank ends the job with torchrun's report instead of hanging.

Kept small for a 2-core machine: yolov3-tiny at 64 px, 16 training images, global batch 4, accumulate 2
(so both DDP's no_sync batches and the all-reduce batches are exercised), 2 epochs, no data workers.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

TIMEOUT = 600  # seconds for one launch; a hang fails the test instead of blocking the suite


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_env() -> dict[str, str]:
    # collectives give up after 2 minutes here (default 30) so a broken rank fails the test quickly
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "YOLO_DIST_TIMEOUT": "120"}


def train_args(data: Path, project: Path, name: str, epochs: int = 2) -> list[str]:
    return [
        "--cfg", "cfg/yolov3-tiny.cfg", "--data", str(data), "--img-size", "64", "--epochs", str(epochs),
        "--batch-size", "4", "--accumulate", "2", "--burn-in", "0", "--weights", "", "--device", "cpu",
        "--num-workers", "0", "--seed", "0", "--deterministic", "--sync-bn", "--project", str(project), "--name", name,
    ]  # fmt: skip


def torchrun(launcher: list[str], script_args: list[str], cwd: Path, log_dir: Path) -> subprocess.CompletedProcess:
    """Run ``python -m torch.distributed.run LAUNCHER train.py ARGS``; each rank's output lands in log_dir."""
    cmd = [sys.executable, "-m", "torch.distributed.run", *launcher, "--log-dir", str(log_dir), "--redirects", "3",
           "train.py", *script_args]  # fmt: skip
    return subprocess.run(cmd, cwd=cwd, env=launch_env(), capture_output=True, text=True, timeout=TIMEOUT)


def rank_logs(log_dir: Path, local_rank: int) -> str:
    """Everything one local rank wrote (stdout then stderr) over all launches logged in log_dir."""
    files = sorted(log_dir.glob(f"*/attempt_*/{local_rank}/stdout.log")) + sorted(
        log_dir.glob(f"*/attempt_*/{local_rank}/stderr.log")
    )
    return "".join(f.read_text(errors="replace") for f in files)


def check(proc: subprocess.CompletedProcess, log_dir: Path | None = None, stopped: bool = False) -> None:
    """The job finished (exit 0), or with ``stopped`` was stopped as SIGTERM would: every rank then exits 143
    (utils.runstop), which torchrun reports as a failed child with that exit code and exits 1."""
    ok = proc.returncode != 0 and "143" in proc.stderr if stopped else proc.returncode == 0
    if not ok:
        ranks = "" if log_dir is None else "".join(f"\n--- rank {r}:\n{rank_logs(log_dir, r)[-3000:]}" for r in (0, 1))
        pytest.fail(f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}{ranks}")


def weights(run_dir: Path, key: str = "model_raw") -> dict[str, torch.Tensor]:
    """The trained weights of a run's last.pt ('model' is their EMA, which only rank 0 keeps)."""
    return torch.load(run_dir / "weights" / "last.pt", map_location="cpu", weights_only=False)[key]


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert list(a) == list(b)
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def data_cfg(tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> Path:
    """16 training and 8 validation images of the built-in shapes set, made in a temporary folder."""
    from utils.shapes import make_shapes_dataset

    root = tmp_path_factory.mktemp("ddp_data")
    make_shapes_dataset(root / "shapes", seed=0, n_train=16, n_valid=8)
    (root / "shapes.names").write_text((repo_root / "data" / "shapes.names").read_text())
    data = root / "shapes.data"
    data.write_text("classes=3\ntrain=shapes/images/train\nvalid=shapes/images/valid\nnames=shapes.names\n")
    return data


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory, repo_root: Path, data_cfg: Path) -> dict[str, Path]:
    """The same 2-epoch training once as a single process and once as 2 torchrun ranks."""
    base = tmp_path_factory.mktemp("ddp_baseline")
    single = subprocess.run([sys.executable, "train.py", *train_args(data_cfg, base / "single", "run")],
                            cwd=repo_root, env=launch_env(), capture_output=True, text=True, timeout=TIMEOUT)
    check(single)
    # the same single process on 2 threads: other float summation orders, the noise floor of "equal"
    threads2 = subprocess.run([sys.executable, "train.py", *train_args(data_cfg, base / "single2", "run")],
                              cwd=repo_root, env={**launch_env(), "OMP_NUM_THREADS": "2"}, capture_output=True,
                              text=True, timeout=TIMEOUT)  # fmt: skip
    check(threads2)
    logs = base / "logs"
    check(torchrun(["--standalone", "--nproc_per_node", "2"], train_args(data_cfg, base / "ddp", "run"), repo_root,
                   logs), logs)  # fmt: skip
    return {"single": base / "single", "single2": base / "single2", "ddp": base / "ddp", "logs": logs}


def test_two_ranks_train_like_one_process(baseline: dict[str, Path]) -> None:
    rank0, rank1 = rank_logs(baseline["logs"], 0), rank_logs(baseline["logs"], 1)
    assert "rank 0/2 (local rank 0) on cpu, backend gloo" in rank0
    assert "rank 1/2 (local rank 1) on cpu, backend gloo" in rank1
    assert "Starting training for 2 epochs" in rank0 and "2 epochs completed" in rank0
    assert "Starting training" not in rank1 and "Epoch" not in rank1  # only rank 0 prints the bar and results

    # one set of files: a single run folder, written once (rank 0)
    assert [p.name for p in baseline["ddp"].iterdir()] == ["run"]
    run = baseline["ddp"] / "run"
    for name in ("results.txt", "hyp.yaml", "opt.yaml", "labels.png", "train_batch0.jpg", "results.png"):
        assert (run / name).is_file(), name
    assert sorted(p.name for p in (run / "weights").iterdir() if not p.name.startswith(".")) == ["best.pt", "last.pt"]
    rows = (run / "results.txt").read_text().splitlines()
    assert len(rows) == 3 and rows[0].split()[0] == "epoch"

    # the global batch, seed and schedule are those of the single process: the same weights up to float rounding,
    # i.e. no further from the single process than that process is from itself on 2 threads (from scratch at
    # lr0 the first steps amplify rounding: about 1e-4 after 2 epochs here; without --sync-bn the gap is 1e-2)
    single, ddp = weights(baseline["single"] / "run"), weights(run)
    diff, floor = max_abs_diff(single, ddp), max_abs_diff(single, weights(baseline["single2"] / "run"))
    assert diff <= max(2 * floor, 1e-5), f"2 ranks differ from 1 process by {diff}, 1 vs 2 threads by {floor}"
    # and the per-epoch training losses (box, obj, cls, total, targets) agree as well: within 1e-4 relative, or
    # within twice what the 2-thread single process differs by (the same rounding noise as for the weights)
    single_rows = (baseline["single"] / "run" / "results.txt").read_text().splitlines()[1:]
    threads2_rows = (baseline["single2"] / "run" / "results.txt").read_text().splitlines()[1:]
    assert len(single_rows) == len(threads2_rows) == len(rows) - 1
    for a, b, c in zip(single_rows, rows[1:], threads2_rows):
        for x, y, z in zip(*([float(v) for v in r.split()[2:7]] for r in (a, b, c))):
            assert abs(x - y) <= max(1e-4 * abs(x), 2 * abs(x - z)), (a, b, c)


def test_stopped_two_rank_run_resumes_to_the_same_weights(
    tmp_path: Path, repo_root: Path, data_cfg: Path, baseline: dict[str, Path]
) -> None:
    project, logs = tmp_path / "runs", tmp_path / "logs"
    launcher = ["--standalone", "--nproc_per_node", "2"]
    resume = ["--resume", "--project", str(project), "--name", "run"]
    # 1) stop after epoch 0 (4 batches = one epoch), exactly as SIGTERM would; --ema (rank 0 only) must not
    # change the trained weights and must carry over the resumes
    check(torchrun(launcher, [*train_args(data_cfg, project, "run"), "--ema", "--stop-after-batches", "4"],
                   repo_root, logs / "a"), logs / "a", stopped=True)  # fmt: skip
    assert "Stopped after epoch 0" in rank_logs(logs / "a", 0)
    assert "the same torchrun command with --resume" in rank_logs(logs / "a", 0)
    # the epoch-end checkpoint carries each rank's own RNG state (ranks are seeded seed + rank)
    ranks = torch.load(project / "run" / "weights" / "last.pt", map_location="cpu", weights_only=False)["ranks"]
    assert len(ranks) == 2 and not torch.equal(ranks[0]["rng"]["torch"], ranks[1]["rng"]["torch"])
    # with accumulate 2 the optimizer steps after batches ni = 0, 2, 4, 6: epoch 0 ends with batch 3 pending
    assert all(r["grads"] for r in ranks), "gradients pending at the epoch end are saved per rank"
    # 2) resume, stop mid-epoch in the middle of an accumulation (per-rank pending gradients, sampler position)
    check(torchrun(launcher, [*resume, "--stop-after-batches", "2"], repo_root, logs / "b"), logs / "b", stopped=True)
    assert "Resuming from epoch 1, batch 0 of 4" in rank_logs(logs / "b", 0)
    assert "Stopped at epoch 1 batch 2/4" in rank_logs(logs / "b", 0)
    # 3) resume to the end
    check(torchrun(launcher, resume, repo_root, logs / "c"), logs / "c")
    assert "Resuming from epoch 1, batch 2 of 4" in rank_logs(logs / "c", 0)

    assert [p.name for p in project.iterdir()] == ["run"]
    for key in ("model_raw", "model"):  # the trained weights, and their EMA (rank 0's, saved and restored)
        resumed, uninterrupted = weights(project / "run", key), weights(baseline["ddp"] / "run", key)
        diff = max_abs_diff(resumed, uninterrupted)
        assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed), f"{key}: max abs difference {diff}"
    assert len((project / "run" / "results.txt").read_text().splitlines()) == 3
    final = torch.load(project / "run" / "weights" / "last.pt", map_location="cpu", weights_only=False)
    assert final["ema_updates"] == 4  # optimizer steps after ni = 0, 2, 4, 6


def test_two_machines_on_loopback_complete_an_epoch(tmp_path: Path, repo_root: Path, data_cfg: Path) -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    procs = []
    for node_rank in (0, 1):
        launcher = ["--nnodes", "2", "--node_rank", str(node_rank), "--nproc_per_node", "1", "--rdzv_backend", "c10d",
                    "--rdzv_endpoint", endpoint, "--rdzv_id", f"test-{os.getpid()}", "--log-dir",
                    str(tmp_path / f"logs{node_rank}"), "--redirects", "3"]  # fmt: skip
        cmd = [sys.executable, "-m", "torch.distributed.run", *launcher, "train.py",
               *train_args(data_cfg, tmp_path / "runs", "mn", epochs=1)]  # fmt: skip
        procs.append(subprocess.Popen(cmd, cwd=repo_root, env=launch_env(), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))  # fmt: skip
    try:
        outputs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    logs = [rank_logs(tmp_path / f"logs{n}", 0) for n in (0, 1)]
    for p, out, log in zip(procs, outputs, logs):
        assert p.returncode == 0, f"{out[-3000:]}\n{log[-3000:]}"
    # c10d rendezvous hands out global ranks in joining order (torchrun ignores --node_rank with c10d)
    found = sorted(re.search(r"rank (\d)/2 \(local rank 0\) on cpu, backend gloo", log).group(1) for log in logs)
    assert found == ["0", "1"]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["mn"]
    assert len((tmp_path / "runs" / "mn" / "results.txt").read_text().splitlines()) == 2
    assert (tmp_path / "runs" / "mn" / "weights" / "last.pt").is_file()


def _child_with_rank(parent: int, rank: int) -> int | None:
    """The pid of ``parent``'s child process whose environment has RANK=rank."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            environ = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in environ:
            return int(stat.parent.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process through /proc")
def test_a_dead_rank_ends_the_job_with_a_report(tmp_path: Path, repo_root: Path, data_cfg: Path) -> None:
    logs = tmp_path / "logs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--log-dir",
           str(logs), "--redirects", "3", "train.py", *train_args(data_cfg, tmp_path / "runs", "dead", epochs=50)]
    proc = subprocess.Popen(cmd, cwd=repo_root, env=launch_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip
    try:
        deadline = time.time() + TIMEOUT
        while "Starting training" not in rank_logs(logs, 0):
            assert proc.poll() is None and time.time() < deadline, "training never started"
            time.sleep(0.5)
        time.sleep(2)  # inside the first epoch: rank 1 is in a collective or about to be
        pid = _child_with_rank(proc.pid, 0)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # rank 0 dies without a word: the worst case for the ranks waiting on it
        out = proc.communicate(timeout=180)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "Root Cause" in out and re.search(r"rank\s*:\s*0 \(local_rank: 0\)", out) and "SIGKILL" in out, out

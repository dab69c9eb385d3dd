"""The benchmark runs end to end on a tiny configuration and writes the documented JSON (not timed)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from bench import reference, run
from bench.synthetic import candidate_counts, random_batch, trained_like_predictions, write_random_dataset
from bench.timing import measure

SECTION_KEYS = ("ceilings", "nms", "loader", "infer", "train", "epoch")


@pytest.mark.slow
def test_quick_run_writes_json(tmp_path: Path) -> None:
    images = write_random_dataset(tmp_path / "set", n=8, seed=1)
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:
        rc = run.main(["--quick", "--data", str(images), "--json", str(out), "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["errors"] == {}
    for key in ("machine", "load", "options", "sections", "comparison", *SECTION_KEYS):
        assert key in data, key
    assert data["machine"]["cpu"] and data["machine"]["torch"] == torch.__version__
    assert data["options"]["quick"] is True
    assert math.isfinite(data["ceilings"]["fp32_matmul"]["median"])
    train = data["train"][0]
    assert train["img_s"]["median"] > 0 and train["train_gflop_per_img"] > train["forward_gflop_per_img"] > 0
    assert set(train["phase_share"]) == {"forward", "loss", "backward", "optimizer"}
    assert set(train["ceiling_share"]) == {"of_matmul", "of_conv"} and train["ceiling_share"]["of_matmul"] > 0
    assert {(r["workers"], r["cache"]) for r in data["loader"]} >= {(0, "off"), (0, "preload")}
    assert all(r["img_s"]["median"] > 0 for r in data["loader"])
    assert {r["fused"] for r in data["infer"]} == {False, True}
    assert {r["conf_thres"] for r in data["nms"]} == {0.001, 0.1}
    assert data["epoch"]["images"] == 8 and data["epoch"]["seconds"] > 0
    assert data["comparison"] == []  # quick figures are not comparable with the reference
    heap = {h["mode"]: h for h in data["memory"]["heap"]}
    assert heap["tuned"]["tuned"] is True and heap["default"]["tuned"] is False
    assert all(h["peak_rss_mib"] >= h["end_rss_mib"] > 0 for h in heap.values())
    cache = data["memory"]["ram_cache"]
    assert cache["images_cached_after_one_pass"] == 8 and cache["used_mib"] <= cache["reserved_mib"]
    assert train["profile"]["family_share"]["conv"] > 0 and train["build_targets_ms"] > 0


def test_only_and_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        run.parse_args(["--only", "train,bogus"])
    with pytest.raises(SystemExit):
        run.parse_args(["--reps", "0"])
    args = run.parse_args(["--only", "nms, ceiling"])
    assert args.sections == ["nms", "ceiling"]


def test_trained_like_predictions() -> None:
    pred = trained_like_predictions(4, 320, 3, seed=0)
    assert pred.shape == (4, 3 * (10 * 10 + 20 * 20), 8)
    assert torch.equal(pred, trained_like_predictions(4, 320, 3, seed=0))
    assert ((pred[..., 4:] >= 0) & (pred[..., 4:] <= 1)).all()
    low, high = candidate_counts(pred, 0.001), candidate_counts(pred, 0.1)
    assert 100 < low["rows"] < 600  # 'a few hundred boxes per image above 0.001'
    assert 5 < high["rows"] < 150  # 'dozens above 0.1'
    assert (pred[..., 4] < 0.001).float().mean() > 0.5  # most objectness very low


def test_random_batch_targets() -> None:
    imgs, targets = random_batch(3, 64, nc=80)
    assert imgs.shape == (3, 3, 64, 64)
    assert targets.shape[1] == 6 and set(targets[:, 0].long().tolist()) == {0, 1, 2}
    xy, wh = targets[:, 2:4], targets[:, 4:6]
    assert ((xy - wh / 2) >= -1e-6).all() and ((xy + wh / 2) <= 1 + 1e-6).all()


def test_measure_stops_at_budget() -> None:
    calls = []
    timing = measure(lambda: calls.append(1), reps=100, warmup=2, budget_s=0.0, min_reps=3)
    assert len(timing.seconds) == 3 and len(calls) == 5
    assert timing.rate(10)["median"] > 0


def test_comparison_direction_and_targets() -> None:
    results = {
        "options": {"quick": False},
        "machine": {"gpu": None},
        "ceilings": {"fp32_conv_fwdbwd_cl": {"max": 2 * reference.REFERENCE_CEILINGS["fp32_conv_fwdbwd_cl"]}},
        "train": [{"model": "yolov3-tiny", "img_size": 320, "batch_size": 16, "precision": "fp32",
                   "img_s": {"median": 19.2}}],
        "loader": [{"img_size": 320, "workers": 0, "cache": "off", "img_s": {"median": 88.0}},
                   {"img_size": 320, "workers": 2, "cache": "ram", "img_s": {"median": 966.0},
                    "first_pass_img_s": 322.0}],
        "infer": [{"model": "yolov3-tiny", "img_size": 320, "batch_size": 1, "fused": True, "precision": "fp32",
                   "ms_per_img": {"median": 14.75}}],
        "nms": [{"source": "synthetic", "layout": "yolov3-tiny@320/nc3", "conf_thres": 0.001, "batch_size": 1,
                 "ms_per_img": {"median": 1.4}}],
        "epoch": {},
    }
    rows = {r["what"]: r for r in reference.compare(results)}
    train = rows["train yolov3-tiny@320/bs16"]
    assert train["speedup"] == pytest.approx(2.0) and train["meets_target"] is True
    assert train["speedup_hw_adjusted"] == pytest.approx(1.0)
    assert rows["loader 320/w0/off vs nocache"]["meets_target"] is False
    assert rows["loader 320/w2/ram vs nocache"]["speedup"] == pytest.approx(6.0)
    assert rows["loader 320/w2/ram 1st pass vs nocache"]["speedup"] == pytest.approx(2.0)
    assert rows["infer yolov3-tiny@320/b1/fused"]["speedup"] == pytest.approx(2.0)
    both = rows["infer+nms yolov3-tiny@320/b1/fused conf 0.001"]
    assert both["speedup"] == pytest.approx((29.5 + 2.8) / (14.75 + 1.4))
    assert reference.compare({**results, "options": {"quick": True}}) == []


def test_import_is_silent(capsys: pytest.CaptureFixture[str]) -> None:
    import importlib

    importlib.reload(run)
    assert capsys.readouterr() == ("", "")


def test_ceiling_shares_use_the_precisions_fastest_ceiling() -> None:
    from bench.ceilings import ceiling_shares

    ceilings = {"fp32_matmul": {"median": 150.0, "max": 200.0}, "fp32_conv_fwdbwd_cl": {"max": 400.0},
                "bf16_matmul": {"max": 1000.0}}
    assert ceiling_shares(100.0, "fp32", ceilings) == {"of_matmul": 0.5, "of_conv": 0.25}
    assert ceiling_shares(100.0, "bf16", ceilings) == {"of_matmul": 0.1}
    assert ceiling_shares(100.0, "amp", ceilings) == {}


def test_gpu_comparison_rows() -> None:
    results = {
        "options": {"quick": False},
        "machine": {"gpu": "NVIDIA H200"},
        "train": [
            {"model": "yolov3-spp", "img_size": 416, "batch_size": 32, "precision": "amp", "cudnn_benchmark": True,
             "img_s": {"median": 610.0}},
            {"model": "yolov3-tiny", "img_size": 320, "batch_size": 32, "precision": "amp", "img_s": {"median": 5e3}},
            {"kind": "loader", "model": "yolov3-spp", "img_size": 416, "batch_size": 32, "precision": "amp",
             "data_wait_share_each": [0.3, 0.05]},
        ],
    }
    rows = reference.compare(results)
    assert len(rows) == 3  # spp step against the V100 figure, and the data wait of both epochs (tiny has no figure)
    assert rows[0]["speedup"] == pytest.approx(610 / 122) and rows[0]["meets_target"] is True
    assert "cudnn.benchmark on" in rows[0]["what"]
    assert [r["meets_target"] for r in rows[1:]] == [False, True] and rows[2]["ours"] == 0.05


def test_profile_step_accounts_for_the_step() -> None:
    from bench.training import TrainStep, build_model, profile_step
    from utils.hyp import DEFAULT_HYP, derive_loss_hyp

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = build_model(run.REPO_ROOT / "cfg" / "yolov3-tiny.cfg", 64, 3, torch.device("cpu"), True).train()
        loss_hyp = derive_loss_hyp(dict(DEFAULT_HYP), 3)
        imgs, targets = random_batch(2, 64, 3)
        step = TrainStep(model, imgs.contiguous(memory_format=torch.channels_last), targets, loss_hyp, "fp32",
                         torch.device("cpu"))
        step()
        prof = profile_step(step, torch.device("cpu"), step_flop=10**9)
    finally:
        torch.set_num_threads(threads)
    shares = prof["family_share"]
    assert set(shares) >= {"conv", "batchnorm", "activation", "optimizer", "other"}
    assert shares["conv"] > 0 and shares["batchnorm"] > 0 and shares["optimizer"] > 0
    assert 0.5 < sum(shares.values()) <= 1.05  # the operators' self times fill the step (thread-pool work inside)
    assert prof["conv_gflops"] == pytest.approx(1.0 / prof["family_s"]["conv"])


def test_gpu_check_without_cuda_lists_every_step(tmp_path: Path) -> None:
    from bench import gpu_check

    assert gpu_check.main(["--dry-run", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [s["name"] for s in report["steps"]] == ["smoke", "pytest", "bench", "train"]
    assert all(s["status"] == "skipped" and s["show"] for s in report["steps"])
    table = (tmp_path / "gpu_check.md").read_text()
    assert "would run `" in table and "bench/run.py --device 0 --only train,infer,nms" in table
    train_cmd = next(s for s in report["steps"] if s["name"] == "train")["cmd"]
    assert train_cmd[train_cmd.index("--epochs") + 1] == "2" and "--no-amp" not in train_cmd


def test_gpu_check_step_limit_kills_the_whole_group(tmp_path: Path) -> None:
    from bench import gpu_check

    script = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);" \
             " print('started', flush=True); time.sleep(60)"
    step = {"name": "slow", "cmd": [sys.executable, "-c", script]}
    entry = gpu_check.run_step(step, limit=0.5, log=tmp_path / "log")
    assert entry["status"] == "timeout" and entry["seconds"] < 30
    assert "===== slow: timeout" in (tmp_path / "log").read_text()


def test_gpu_check_reads_junit(tmp_path: Path) -> None:
    from bench import gpu_check

    (tmp_path / "junit.xml").write_text(
        '<testsuites><testsuite><testcase classname="tests.test_gpu" name="test_a"/>'
        '<testcase classname="tests.test_gpu" name="test_b"><failure message="x"/></testcase>'
        '<testcase classname="tests.test_gpu" name="test_c"><skipped message="needs CUDA"/></testcase>'
        "</testsuite></testsuites>")
    got = gpu_check.parse_pytest(tmp_path, "")
    assert got["passed"] == 1 and got["failed"] == ["tests.test_gpu::test_b"] and got["skipped"] == 1

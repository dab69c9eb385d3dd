"""The benchmark runs end to end on a tiny configuration and writes the documented JSON (not timed)."""

from __future__ import annotations

import json
import math
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

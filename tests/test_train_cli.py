"""train.py command line: every flag documented, contradictions refused before anything is loaded."""

from __future__ import annotations

import subprocess
import sys

import pytest

import train
from utils.train_options import build_parser, image_sizes, parse_opt

FLAGS = (
    "--epochs", "--batch-size", "--accumulate", "--cfg", "--data-cfg", "--data", "--multi-scale", "--img-size",
    "--rect", "--resume", "--transfer", "--num-workers", "--nosave", "--notest", "--xywh", "--evolve", "--bucket",
    "--var", "--weights", "--device", "--adam", "--cache-images", "--single-cls", "--name", "--freeze-layers",
    "--hyp", "--seed", "--deterministic", "--burn-in", "--schedule", "--recipe", "--no-amp", "--bf16", "--ema",
    "--no-ema", "--sync-bn", "--project", "--reduced-decode", "--cache-check", "--ram-cache-mb", "--compile",
)  # fmt: skip


def _error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as e:
        parse_opt(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


def test_help_lists_every_flag_with_help_text():
    text = build_parser().format_help()
    for flag in FLAGS:
        assert flag in text, flag
    for action in build_parser()._actions:
        if action.option_strings and action.dest not in ("help", "stop_after_batches"):
            assert action.help, f"{action.option_strings} has no help text"


def test_help_runs_as_a_program(repo_root):
    out = subprocess.run([sys.executable, "train.py", "--help"], cwd=repo_root, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "--img-size" in out.stdout and "--stop-after-batches" not in out.stdout


def test_defaults():
    opt = parse_opt([])
    assert (opt.epochs, opt.batch_size, opt.accumulate, opt.img_size) == (100, 16, None, [416])
    assert (opt.recipe, opt.schedule, opt.ema, opt.burn_in, opt.reduced_decode) == ("2020", None, None, None, False)
    assert opt.cfg.endswith("cfg/yolov3-spp.cfg") and opt.data.endswith("data/shapes.data")
    assert opt.weights is None and opt.evolve is None and opt.seed == 0 and opt.explicit == []


def test_data_alias_and_explicit_flags(tmp_path):
    data = str(tmp_path / "x.data")
    (tmp_path / "x.data").write_text("classes=1\n")
    a = parse_opt(["--data", data, "--epochs", "3"])
    b = parse_opt(["--data-cfg", data])
    assert a.data == b.data == data
    assert a.explicit == ["data", "epochs"]


@pytest.mark.parametrize(
    ("sizes", "multi_scale", "recipe", "expected"),
    [
        ([416], False, "2020", (416, 416, 416, False)),
        ([416], True, "2020", (256, 608, 416, True)),  # the reference's 416 // 1.5 .. 416 // 0.667, floored to 32
        ([320], True, "2020", (192, 448, 320, True)),
        ([416], True, "2019", (288, 640, 416, True)),  # the seed's range
        ([320, 640], False, "2020", (320, 640, 640, True)),  # MIN MAX: multi-scale, tested at MAX
        ([320, 640, 416], False, "2020", (320, 640, 416, True)),
        ([416, 416, 320], False, "2020", (416, 416, 320, False)),
    ],
)
def test_image_sizes_read_like_the_reference(sizes, multi_scale, recipe, expected):
    assert image_sizes(sizes, multi_scale, recipe) == expected


def test_evolve_bare_means_300():
    assert parse_opt(["--evolve"]).evolve == 300
    assert parse_opt(["--evolve", "2"]).evolve == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--img-size", "300"], "use 288"),
        (["--img-size", "320", "330"], "use 320"),
        (["--img-size", "320", "320", "320", "320"], "one to three values"),
        (["--img-size", "608", "320"], "MIN is larger than MAX"),
        (["--recipe", "2018"], "invalid choice"),
        (["--schedule", "linear"], "invalid choice"),
        (["--resume", "--transfer"], "--resume cannot be combined"),
        (["--resume", "--evolve", "3"], "--resume cannot be combined"),
        (["--rect", "--multi-scale"], "contradict"),
        (["--accumulate", "0"], "--accumulate 0"),
        (["--epochs", "0"], "--epochs 0"),
        (["--batch-size", "0"], "--batch-size 0"),
        (["--bf16", "--device", "0"], "--bf16"),
        (["--burn-in", "-1"], "--burn-in"),
        (["--no-such-flag"], "unrecognized"),
    ],
)
def test_contradictions_error_before_loading(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert message in _error(argv, capsys)
    assert not (tmp_path / "runs").exists()  # nothing was created


def test_batch_smaller_than_world_size(capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert "must be >= the 4 torchrun ranks" in _error(["--batch-size", "2"], capsys)


def test_missing_files_are_reported_before_loading(tmp_path, capsys):
    assert "missing.data: file not found" in _error(["--data", str(tmp_path / "missing.data")], capsys)
    assert "nope.cfg: file not found" in _error(["--cfg", "nope.cfg"], capsys)
    assert "hyp.yaml: file not found" in _error(["--hyp", str(tmp_path / "hyp.yaml")], capsys)


def test_main_reports_bad_data_file_without_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.data"
    bad.write_text("classes=3\ntrain=nowhere/images\nvalid=nowhere/images\nnames=x.names\n")
    code = train.main(["--data", str(bad), "--project", str(tmp_path / "runs"), "--device", "cpu", "--weights", ""])
    assert code == 1
    err = capsys.readouterr().err
    assert "bad.data" in err and "Traceback" not in err

"""Hyperparameter defaults, file loading and derived values (utils/hyp.py)."""

from __future__ import annotations

import copy

import pytest
import yaml

from utils.hyp import (
    DEFAULT_HYP,
    HYP_GAINS,
    HYP_KEYS_TXT,
    HYP_LIMITS,
    derive_loss_hyp,
    format_hyp,
    load_hyp,
)

EXPECTED = [
    ("giou", 3.54),
    ("cls", 37.4),
    ("cls_pw", 1.0),
    ("obj", 64.3),
    ("obj_pw", 1.0),
    ("iou_t", 0.20),
    ("lr0", 0.01),
    ("lrf", 0.0005),
    ("momentum", 0.937),
    ("weight_decay", 0.0005),
    ("fl_gamma", 0.0),
    ("hsv_h", 0.0138),
    ("hsv_s", 0.678),
    ("hsv_v", 0.36),
    ("degrees", 0.0),
    ("translate", 0.0),
    ("scale", 0.0),
    ("shear", 0.0),
    ("xy", 4.062),
    ("wh", 0.1845),
]


def test_defaults_exact_values_and_order():
    assert list(DEFAULT_HYP.items()) == EXPECTED
    assert tuple(k for k, _ in EXPECTED[:18]) == HYP_KEYS_TXT


def test_limits_and_gains_cover_every_key_and_hold_the_defaults():
    assert list(HYP_LIMITS) == list(DEFAULT_HYP) == list(HYP_GAINS)
    for k, v in DEFAULT_HYP.items():
        lo, hi = HYP_LIMITS[k]
        assert lo <= v <= hi, k
        assert HYP_GAINS[k] >= 0


def test_yaml_subset_updates_defaults_without_mutating_them(tmp_path):
    before = copy.deepcopy(DEFAULT_HYP)
    f = tmp_path / "hyp.yaml"
    f.write_text("lr0: 0.002\ngiou: 4\n")
    hyp = load_hyp(f)
    assert list(hyp) == list(DEFAULT_HYP)
    assert hyp["lr0"] == 0.002 and hyp["giou"] == 4.0 and isinstance(hyp["giou"], float)
    assert hyp["cls"] == 37.4
    assert before == DEFAULT_HYP
    hyp["cls"] = 1.0
    assert DEFAULT_HYP["cls"] == 37.4


def test_yaml_empty_file_gives_defaults(tmp_path):
    f = tmp_path / "hyp.yml"
    f.write_text("# nothing\n")
    assert load_hyp(f) == DEFAULT_HYP


def test_yaml_unknown_key_names_file_line_key_and_valid_keys(tmp_path):
    f = tmp_path / "hyp.yaml"
    f.write_text("lr0: 0.01\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match=r"hyp\.yaml:2: unknown hyperparameter 'learning_rate'.*giou, cls"):
        load_hyp(f)


@pytest.mark.parametrize("value", ["fast", "true", "[1, 2]", ".nan"])
def test_yaml_non_numeric_value_is_rejected(tmp_path, value):
    f = tmp_path / "hyp.yaml"
    f.write_text(f"giou: 3\nlr0: {value}\n")
    with pytest.raises(ValueError, match=r"hyp\.yaml:2: hyperparameter 'lr0' must be"):
        load_hyp(f)


def test_yaml_not_a_mapping(tmp_path):
    f = tmp_path / "hyp.yaml"
    f.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        load_hyp(f)


def test_txt_18_and_20_values_by_position(tmp_path):
    values = [float(i + 1) / 100 for i in range(20)]
    f18 = tmp_path / "hyp18.txt"
    f18.write_text("# ultralytics-style row\n" + " ".join(map(str, values[:18])) + "\n")
    hyp = load_hyp(f18)
    assert [hyp[k] for k in HYP_KEYS_TXT] == values[:18]
    assert hyp["xy"] == DEFAULT_HYP["xy"] and hyp["wh"] == DEFAULT_HYP["wh"]
    f20 = tmp_path / "hyp20.txt"
    f20.write_text(", ".join(map(str, values)))
    assert list(load_hyp(f20).values()) == values


def test_txt_wrong_count_names_file_count_and_expected(tmp_path):
    f = tmp_path / "hyp.txt"
    f.write_text(" ".join(["1"] * 25) + "\n")
    with pytest.raises(ValueError, match=r"hyp\.txt:1: found 25 values, expected 18 .* or 20"):
        load_hyp(f)


def test_txt_several_rows_and_bad_number(tmp_path):
    f = tmp_path / "hyp.txt"
    f.write_text("1 2\n3 4\n")
    with pytest.raises(ValueError, match="exactly one row"):
        load_hyp(f)
    f.write_text(" ".join(["1"] * 17 + ["x"]))
    with pytest.raises(ValueError, match="'shear' must be a number"):
        load_hyp(f)


def test_missing_file_and_unsupported_suffix(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_hyp(tmp_path / "nope.yaml")
    f = tmp_path / "hyp.json"
    f.write_text("{}")
    with pytest.raises(ValueError, match="unsupported"):
        load_hyp(f)


def test_best_hyp_style_yaml_round_trip(tmp_path):
    f = tmp_path / "hyp.yaml"
    f.write_text(yaml.safe_dump(DEFAULT_HYP, sort_keys=False))
    assert load_hyp(f) == DEFAULT_HYP


def test_derive_loss_hyp_scales_cls_and_does_not_mutate():
    hyp = dict(DEFAULT_HYP)
    derived = derive_loss_hyp(hyp, nc=3)
    assert derived is not hyp
    assert derived["cls"] == pytest.approx(37.4 * 3 / 80)
    assert hyp == DEFAULT_HYP
    assert {k: v for k, v in derived.items() if k != "cls"} == {k: v for k, v in hyp.items() if k != "cls"}
    assert derive_loss_hyp(hyp, 80)["cls"] == 37.4
    with pytest.raises(ValueError, match="nc=0"):
        derive_loss_hyp(hyp, 0)


def test_format_hyp_is_one_line_with_every_key():
    text = format_hyp(DEFAULT_HYP)
    assert "\n" not in text
    assert "giou=3.54" in text and "weight_decay=0.0005" in text and "wh=0.1845" in text

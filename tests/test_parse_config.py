"""The cfg and .data readers: typed values, defaults, and file:line errors on bad input."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest

from models import Darknet
from utils.hyp import DEFAULT_HYP
from utils.parse_config import (
    NET_KEYS_OVERRIDDEN,
    SHIPPED_NET,
    adapt_nc,
    net_values_used,
    parse_data_cfg,
    parse_model_cfg,
    unused_net_values,
)

CFGS = ("yolov3", "yolov3-spp", "yolov3-tiny")


@pytest.fixture(scope="module")
def tiny_text(repo_root: Path) -> str:
    return (repo_root / "cfg" / "yolov3-tiny.cfg").read_text()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.cfg"
    path.write_text(text)
    return path


def _line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based line number of the occurrence-th line equal to needle (after stripping)."""
    hits = [i for i, line in enumerate(text.splitlines(), 1) if line.strip() == needle]
    return hits[occurrence - 1]


@pytest.mark.parametrize("name", CFGS)
def test_shipped_cfgs_parse_with_types(repo_root, name):
    blocks = parse_model_cfg(repo_root / "cfg" / f"{name}.cfg", warn=False)
    net, defs = blocks[0], blocks[1:]
    assert net["type"] == "net" and net["channels"] == 3 and isinstance(net["momentum"], float)
    assert net["steps"] == [400000, 450000] and net["scales"] == [0.1, 0.1]
    yolos = [b for b in defs if b["type"] == "yolo"]
    assert len(yolos) == (2 if name == "yolov3-tiny" else 3)
    for y in yolos:
        assert isinstance(y["anchors"], np.ndarray) and y["anchors"].dtype == np.float32
        assert y["anchors"].shape == ((6, 2) if name == "yolov3-tiny" else (9, 2))
        assert y["classes"] == 80 and all(isinstance(m, int) for m in y["mask"])
    if name == "yolov3-tiny":
        assert [y["mask"] for y in yolos] == [[3, 4, 5], [1, 2, 3]]
        assert yolos[0]["anchors"][3].tolist() == [81.0, 82.0]
    else:
        assert [y["mask"] for y in yolos] == [[6, 7, 8], [3, 4, 5], [0, 1, 2]]
    convs = [b for b in defs if b["type"] == "convolutional"]
    assert all({"batch_normalize", "stride", "pad", "groups", "size", "activation"} <= set(c) for c in convs)
    assert convs[-1]["activation"] == "linear" and convs[-1]["batch_normalize"] == 0
    routes = [b["layers"] for b in defs if b["type"] == "route"]
    assert all(isinstance(v, int) for r in routes for v in r)


def test_spp_block_order(repo_root):
    defs = parse_model_cfg(repo_root / "cfg" / "yolov3-spp.cfg", warn=False)[1:]
    assert [defs[i]["type"] for i in range(77, 85)] == [
        "convolutional", "maxpool", "route", "maxpool", "route", "maxpool", "route", "convolutional",
    ]  # fmt: skip
    assert [defs[i]["size"] for i in (78, 80, 82)] == [5, 9, 13]
    assert defs[83]["layers"] == [-1, -3, -5, -6]


def test_conv_defaults(tmp_path):
    path = _write(tmp_path, "[net]\n[convolutional]\nfilters=4\n")
    conv = parse_model_cfg(path)[1]
    assert conv == {"type": "convolutional", "filters": 4, "batch_normalize": 0, "stride": 1, "pad": 0, "groups": 1,
                    "size": 1, "activation": "linear"}  # fmt: skip


def _net_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "utils.parse_config" and "[net]" in r.getMessage()]


TRAINER_DEFAULTS = {"batch_size": 16, "accumulate": 4, "img_size": 416, "hyp": DEFAULT_HYP, "burn_in": 1000,
                    "schedule": "multistep"}


@pytest.mark.parametrize("name", CFGS)
def test_no_net_warning_for_a_shipped_cfg(repo_root, caplog, name):
    """Issue 14: the shipped cfgs' own [net] values are Darknet's, not the user's: no warning on every run."""
    with caplog.at_level(logging.WARNING, logger="utils.parse_config"):
        parse_model_cfg(repo_root / "cfg" / f"{name}.cfg", net_used=net_values_used(**TRAINER_DEFAULTS))
        parse_model_cfg(repo_root / "cfg" / f"{name}.cfg")  # without the trainer's values too
    assert _net_warnings(caplog) == []


def test_shipped_net_values_are_the_cfgs(repo_root):
    for name in CFGS:
        net = parse_model_cfg(repo_root / "cfg" / f"{name}.cfg", warn=False)[0]
        assert {k: net[k] for k in NET_KEYS_OVERRIDDEN} == SHIPPED_NET[name]


def _custom_cfg(tiny_text: str, tmp_path: Path, **values) -> tuple[Path, dict[str, int]]:
    """yolov3-tiny.cfg with [net] values replaced; returns the file and each replaced key's line number."""
    lines = tiny_text.splitlines()
    where = {}
    for i, line in enumerate(lines):
        key = line.split("=")[0].strip()
        if key in values and "=" in line:
            lines[i] = f"{key}={values[key]}"
            where[key] = i + 1
    path = tmp_path / "custom.cfg"
    path.write_text("\n".join(lines) + "\n")
    return path, where


def test_net_warning_names_only_user_values_the_trainer_does_not_use(tiny_text, tmp_path, caplog):
    path, line = _custom_cfg(tiny_text, tmp_path, learning_rate=0.002, subdivisions=8, width=320, height=320,
                             max_batches=6000, momentum=0.937, hue=0.1)  # fmt: skip
    used = net_values_used(**{**TRAINER_DEFAULTS, "img_size": 320})
    with caplog.at_level(logging.WARNING, logger="utils.parse_config"):
        parse_model_cfg(path, net_used=used)
    (msg,) = _net_warnings(caplog)
    assert f"learning_rate=0.002 (line {line['learning_rate']}; the trainer uses hyp lr0=0.01)" in msg
    assert f"subdivisions=8 (line {line['subdivisions']}; the trainer uses --accumulate 4)" in msg
    assert f"max_batches=6000 (line {line['max_batches']}; the trainer uses --epochs)" in msg
    for quiet in ("width", "height", "momentum", "hue", "batch", "burn_in", "steps"):  # equal to the trainer's
        assert f"{quiet}=" not in msg  # or the shipped value (hue, batch, burn_in, steps)


def test_unused_net_values_compares_with_the_trainer_and_the_nearest_shipped_block():
    used = net_values_used(**TRAINER_DEFAULTS)
    net = {**SHIPPED_NET["yolov3-tiny"], "subdivisions": 8, "width": 512}
    assert [k for k, *_ in unused_net_values(net, used)] == ["subdivisions", "width"]
    assert unused_net_values({**net, "subdivisions": 4, "width": 416}, used) == []  # the trainer's own values
    # tiny with yolov3's subdivisions and width is nearer to yolov3's block (one key differs: height), and 416 is
    # what the trainer uses: values copied from a shipped cfg are not the user's
    assert unused_net_values({**SHIPPED_NET["yolov3-tiny"], "subdivisions": 16, "width": 608}, used) == []
    cos = net_values_used(**{**TRAINER_DEFAULTS, "schedule": "cos"})
    assert [k for k, *_ in unused_net_values({**SHIPPED_NET["yolov3"], "scales": [0.1, 0.1], "policy": "steps"},
                                             cos)] == []  # shipped values, even though the cosine replaces them
    assert unused_net_values({"learning_rate": 0.01}, used) == []
    assert unused_net_values({"learning_rate": 0.01}, None) == [("learning_rate", 0.01,
                                                                 "the command line and hyperparameters")]


def test_darknet_passes_the_trainer_values_on(tiny_text, tmp_path, caplog):
    path, _ = _custom_cfg(tiny_text, tmp_path, learning_rate=0.01, decay=0.001)
    with caplog.at_level(logging.WARNING, logger="utils.parse_config"):
        Darknet(path, warn_unused=True, net_used=net_values_used(**TRAINER_DEFAULTS))
        Darknet(path)
    (msg,) = _net_warnings(caplog)
    assert "decay=0.001" in msg and "learning_rate" not in msg


@pytest.mark.parametrize(
    ("old", "new", "pattern"),
    [
        ("filters=16", "fliters=16", r"unknown key 'fliters' in \[convolutional\]"),
        ("filters=16", "filters=sixteen", r"value 'sixteen' for 'filters'.*expected an integer"),
        ("filters=16", "filters=0", r"expected a positive integer"),
        ("hue=.1", "hue=a lot", r"value 'a lot' for 'hue'.*expected a number"),
        ("activation=leaky", "activation=leakyy", r"expected one of leaky, linear"),
        ("stride=2", "stride", r"malformed line 'stride': expected 'key=value'"),
        ("[upsample]", "[upsampel]", r"unknown section \[upsampel\]: expected one of"),
        ("filters=16", "filters=16\nfilters=16", r"key 'filters' given twice"),
    ],
)
def test_bad_values_name_file_and_line(tmp_path, tiny_text, old, new, pattern):
    text = tiny_text.replace(old, new, 1)
    path = _write(tmp_path, text)
    line = _line_of(text, new.split("\n")[-1], 2 if "\n" in new else 1) if "\n" in new else _line_of(text, new)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:{line}: .*{pattern}"):
        parse_model_cfg(path)


def test_yolo_filter_mismatch_names_yolo_line_and_expected_filters(tmp_path, tiny_text):
    text = tiny_text.replace("classes=80", "classes=3", 1)
    path = _write(tmp_path, text)
    line = _line_of(text, "[yolo]")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:{line}: .*needs filters=24 .*found filters=255"):
        parse_model_cfg(path)
    # an nc override rewrites classes and filters, so the same file is fine
    blocks = parse_model_cfg(path, nc=3)
    assert [b["filters"] for b in blocks[1:] if b.get("filters") in (24, 255)] == [24, 24]


def test_yolo_mask_beyond_anchors(tmp_path, tiny_text):
    text = tiny_text.replace("mask = 3,4,5", "mask = 4,5,6", 1)
    path = _write(tmp_path, text)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:{_line_of(text, '[yolo]')}: .*mask.*\[6\]"):
        parse_model_cfg(path)


def test_yolo_num_and_odd_anchors(tmp_path, tiny_text):
    path = _write(tmp_path, tiny_text.replace("num=6", "num=9", 1))
    with pytest.raises(ValueError, match=r"num=9 but anchors lists 6 pairs"):
        parse_model_cfg(path)
    path = _write(tmp_path, tiny_text.replace("344,319", "344", 1))
    with pytest.raises(ValueError, match=r"for 'anchors' in \[yolo\]: expected comma-separated pairs"):
        parse_model_cfg(path)


def test_route_to_missing_block(tmp_path, tiny_text):
    text = tiny_text.replace("layers = -1, 8", "layers = -1, 30", 1)
    path = _write(tmp_path, text)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:{_line_of(text, 'layers = -1, 30')}: .*block 30"):
        parse_model_cfg(path)


def test_structure_errors(tmp_path):
    with pytest.raises(ValueError, match=r"bad.cfg:1: .*before any section"):
        parse_model_cfg(_write(tmp_path, "batch=1\n[net]\n"))
    with pytest.raises(ValueError, match=r"bad.cfg:1: .*must be preceded by a \[net\]"):
        parse_model_cfg(_write(tmp_path, "[convolutional]\nfilters=3\n"))
    with pytest.raises(ValueError, match=r"bad.cfg:2: \[convolutional\] lacks filters"):
        parse_model_cfg(_write(tmp_path, "[net]\n[convolutional]\nsize=3\n"))
    with pytest.raises(FileNotFoundError, match="nope.cfg"):
        parse_model_cfg(tmp_path / "nope.cfg")


def test_adapt_nc_copies(repo_root):
    blocks = parse_model_cfg(repo_root / "cfg" / "yolov3-tiny.cfg", warn=False)
    adapted = adapt_nc(blocks, 1)
    assert [b["filters"] for b in adapted if b.get("filters") == 18] == [18, 18]
    assert [b["classes"] for b in adapted if b["type"] == "yolo"] == [1, 1]
    assert [b["classes"] for b in blocks if b["type"] == "yolo"] == [80, 80]
    with pytest.raises(ValueError, match="nc=0"):
        adapt_nc(blocks, 0)


def test_parse_data_cfg(tmp_path):
    path = tmp_path / "x.data"
    path.write_text(
        "# comment\nclasses= 3\ntrain=data/a.txt  # trailing\n\nvalid = data/b.txt\nnames=x.names\nbackup=b/\n"
    )
    assert parse_data_cfg(path) == {
        "classes": 3, "train": "data/a.txt", "valid": "data/b.txt", "names": "x.names", "backup": "b/",
    }  # fmt: skip
    path.write_text("classes=3\ntrain data/a.txt\n")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:2: malformed line"):
        parse_data_cfg(path)
    path.write_text("classes=three\n")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:1: classes='three': expected an integer"):
        parse_data_cfg(path)
    with pytest.raises(FileNotFoundError, match="missing.data"):
        parse_data_cfg(tmp_path / "missing.data")

"""Darknet model building, forward shapes and decoding, fusing, and weights I/O (Darknet and PyTorch)."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from models import Darknet, YOLOLayer
from utils.weights import (
    convert,
    cutoff_from_name,
    darknet_value_counts,
    load_darknet_weights,
    load_state_dict_fitting,
    load_weights,
    load_weights_fitting,
    save_weights,
)

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "architectures.json"
TINY_VALUES = 8_858_734
TINY_CONV15_VALUES = 7_743_344
DARKNET53_CONV74_VALUES = 40_620_640


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def reference() -> dict:
    if not REFERENCE.is_file():
        pytest.skip(f"reference tables not found at {REFERENCE}")
    return json.loads(REFERENCE.read_text())


@pytest.fixture(scope="module")
def cfg_dir(repo_root) -> Path:
    return repo_root / "cfg"


@pytest.fixture(scope="module")
def yolov3(cfg_dir) -> Darknet:
    return Darknet(cfg_dir / "yolov3.cfg")


@pytest.fixture(scope="module")
def spp(cfg_dir) -> Darknet:
    return Darknet(cfg_dir / "yolov3-spp.cfg")


@pytest.fixture()
def tiny(cfg_dir) -> Darknet:
    torch.manual_seed(0)
    return Darknet(cfg_dir / "yolov3-tiny.cfg")


def _write_darknet(path: Path, values: np.ndarray | int, version=(0, 2, 5), seen=123_456_789) -> None:
    """A Darknet file; an int ``values`` makes a sparse file of that many zeros."""
    with open(path, "wb") as f:
        np.array(version, dtype=np.int32).tofile(f)
        np.array([seen], dtype=np.int64 if version[0] * 10 + version[1] >= 2 else np.int32).tofile(f)
        if isinstance(values, int):
            f.truncate(f.tell() + 4 * values)
        else:
            values.astype(np.float32).tofile(f)


def _random_values(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n, dtype=np.float32)


# --- architecture --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["yolov3", "yolov3-spp", "yolov3-tiny"])
def test_state_dict_equals_reference(request, reference, cfg_dir, name):
    model = {"yolov3": "yolov3", "yolov3-spp": "spp"}.get(name)
    model = request.getfixturevalue(model) if model else Darknet(cfg_dir / f"{name}.cfg")
    ref = reference[name]
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == [(k, s) for k, s in ref["state_dict"]]
    assert sum(p.numel() for p in model.parameters()) == ref["n_params"]
    assert len(model.yolo_layers) == ref["n_yolo_layers"]
    counts = darknet_value_counts(model.module_defs)
    assert sum(counts) == ref["darknet_weights_float32_values"]
    for cutoff, n in ref["darknet_weights_float32_values_with_cutoff"].items():
        assert sum(counts[: int(cutoff)]) == n
    assert 20 + 4 * sum(counts) == ref["darknet_weights_file_bytes"]


def test_conventions(tiny, yolov3):
    bn = tiny.module_list[0].BatchNorm2d
    assert (bn.eps, bn.momentum) == (1e-4, 0.03) and tiny.module_list[0].Conv2d.bias is None
    assert isinstance(tiny.module_list[0].activation, torch.nn.LeakyReLU)
    assert tiny.module_list[0].activation.negative_slope == 0.1
    assert tiny.module_list[0].Conv2d.padding == (1, 1)
    assert not hasattr(tiny.module_list[15], "activation")
    pad = tiny.module_list[11]
    assert isinstance(pad.ZeroPad2d, torch.nn.ZeroPad2d) and pad.ZeroPad2d.padding == (0, 1, 0, 1)
    assert [tiny.module_list[i].stride for i in tiny.yolo_layers] == [32, 16]
    assert [yolov3.module_list[i].stride for i in yolov3.yolo_layers] == [32, 16, 8]
    second = tiny.module_list[tiny.yolo_layers[1]]
    assert second.anchors.tolist() == [[23, 27], [37, 58], [81, 82]]
    assert torch.equal(second.anchor_vec, second.anchors / 16)
    assert tiny.routs[13] and tiny.routs[8] and not tiny.routs[14]
    assert (tiny.nc, tiny.version.tolist(), tiny.seen.tolist()) == (80, [0, 2, 5], [0])
    assert tiny.cfg_text.startswith("# yolov3-tiny")


def test_yolo_layer_has_no_state_and_follows_dtype():
    layer = YOLOLayer(np.array([[10, 13], [16, 30]]), nc=2, stride=8)
    assert layer.state_dict() == {} and list(layer.parameters()) == []
    layer = layer.to(torch.float64)
    assert layer.anchor_vec.dtype == torch.float64 and layer.anchor_vec.tolist() == [[1.25, 1.625], [2.0, 3.75]]


def test_bias_prior(tiny):
    from models import smart_bias_init

    tiny = copy.deepcopy(tiny)
    smart_bias_init(tiny)
    for j in tiny.yolo_layers:
        b = tiny.module_list[j - 1].Conv2d.bias.view(3, 85)
        assert torch.all(b[:, 4] < -4.5 + 0.1) and torch.all(b[:, 4] > -4.5 - 0.1)
        assert torch.allclose(b[:, 5:].mean(), torch.tensor(math.log(0.6 / 79.01)), atol=0.02)


# --- forward ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hw", [(320, 320), (416, 416), (608, 608), (320, 416)])
def test_tiny_forward_shapes(tiny, hw):
    h, w = hw
    x = torch.rand(1, 3, h, w)
    tiny.train()
    out = tiny(x)
    assert [tuple(p.shape) for p in out] == [(1, 3, h // 32, w // 32, 85), (1, 3, h // 16, w // 16, 85)]
    tiny.eval()
    with torch.no_grad():
        io, raw = tiny(x)
    n = 3 * (h * w // 32**2 + h * w // 16**2)
    assert io.shape == (1, n, 85) and [p.shape for p in raw] == [p.shape for p in out]


def test_big_forward_shapes(yolov3, spp):
    x = torch.rand(1, 3, 256, 320)
    for model in (yolov3, spp):
        model.eval()
        with torch.no_grad():
            io, raw = model(x)
        assert [tuple(p.shape) for p in raw] == [(1, 3, 8, 10, 85), (1, 3, 16, 20, 85), (1, 3, 32, 40, 85)]
        assert io.shape == (1, 3 * (80 + 320 + 1280), 85)


def test_train_output_is_raw_permuted_head(tiny):
    tiny.train()
    x = torch.rand(1, 3, 64, 96)
    captured = []
    hook = tiny.module_list[22].register_forward_hook(lambda m, i, o: captured.append(o))
    out = tiny(x)
    hook.remove()
    head = captured[0]  # (1, 255, 4, 6)
    assert torch.equal(out[1], head.view(1, 3, 85, 4, 6).permute(0, 1, 3, 4, 2))


def test_eval_decoding_by_hand(tiny):
    tiny.eval()
    with torch.no_grad():
        io, raw = tiny(torch.rand(1, 3, 64, 96))
    ny, nx = 4, 6  # second layer, stride 16
    a, gy, gx = 2, 3, 1
    t = raw[1][0, a, gy, gx]
    row = io[0, 3 * 2 * 3 + a * ny * nx + gy * nx + gx]  # after the first layer's 3*2*3 rows
    anchor = torch.tensor([81.0, 82.0])  # mask 1,2,3 -> anchor 3
    assert torch.allclose(row[0], (torch.sigmoid(t[0]) + gx) * 16)
    assert torch.allclose(row[1], (torch.sigmoid(t[1]) + gy) * 16)
    assert torch.allclose(row[2:4], torch.exp(t[2:4]) * anchor)
    assert torch.allclose(row[4:], torch.sigmoid(t[4:]))


def test_channels_last(tiny):
    tiny.eval()
    x = torch.rand(1, 3, 96, 64)
    with torch.no_grad():
        ref, _ = tiny(x)
        tiny.to(memory_format=torch.channels_last)
        io, _ = tiny(x.contiguous(memory_format=torch.channels_last))
        tiny.train()
        out = tiny(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(io, ref, atol=1e-4)
    assert out[0].is_contiguous()


@pytest.mark.parametrize("nc", [1, 3])
def test_nc_adaptation(cfg_dir, nc):
    from models import smart_bias_init

    model = Darknet(cfg_dir / "yolov3-tiny.cfg", nc=nc)
    smart_bias_init(model)  # the class prior follows nc
    assert model.nc == nc
    for j in model.yolo_layers:
        assert model.module_list[j - 1].Conv2d.weight.shape[0] == 3 * (5 + nc)
        assert model.module_list[j].no == 5 + nc
        b = model.module_list[j - 1].Conv2d.bias.view(3, 5 + nc)[:, 5:]
        assert abs(b.mean().item() - math.log(0.6 / (nc - 0.99))) < 0.05
    model.eval()
    with torch.no_grad():
        io, raw = model(torch.rand(1, 3, 64, 64))
    assert io.shape == (1, 3 * (4 + 16), 5 + nc) and raw[0].shape == (1, 3, 2, 2, 5 + nc)
    assert "classes=80" in model.cfg_text


def test_fuse_agrees(tiny):
    torch.manual_seed(1)
    for m in tiny.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    tiny.eval()
    x = torch.rand(1, 3, 128, 96)
    with torch.no_grad():
        ref, _ = tiny(x)
        tiny.fuse()
        io, _ = tiny(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in tiny.modules())
    assert "module_list.0.Conv2d.bias" in tiny.state_dict()
    assert torch.allclose(io, ref, atol=1e-4, rtol=1e-4)
    tiny.train()
    assert [p.shape[-1] for p in tiny(x)] == [85, 85]


def test_info_gflops(tiny):
    n_layers, n_p, n_g, gflops = tiny.info(img_size=320)
    assert (n_layers, n_p, n_g) == (37, 8_852_366, 8_852_366)
    assert abs(gflops - 3.29) < 0.01
    assert tiny.training  # info leaves the mode as it was


def test_import_prints_nothing(repo_root):
    r = subprocess.run([sys.executable, "-c", "import models, utils.parse_config"], cwd=repo_root,
                       capture_output=True, text=True, check=True)  # fmt: skip
    assert r.stdout == "" and r.stderr == ""


# --- Darknet weights ---------------------------------------------------------------------------------------


def test_cutoff_from_name():
    assert cutoff_from_name("weights/darknet53.conv.74") == 75
    assert cutoff_from_name("yolov3-tiny.conv.15") == 15
    assert cutoff_from_name("yolov3.weights") == -1


def test_darknet_file_order(tiny, tmp_path):
    path = tmp_path / "tiny.weights"
    _write_darknet(path, np.arange(TINY_VALUES, dtype=np.float32) % 1000)
    report = load_darknet_weights(tiny, path)
    first = tiny.module_list[0]
    assert first.BatchNorm2d.bias.tolist() == list(range(16))
    assert first.BatchNorm2d.weight.tolist() == list(range(16, 32))
    assert first.BatchNorm2d.running_mean[0] == 32 and first.BatchNorm2d.running_var[0] == 48
    assert first.Conv2d.weight.flatten()[:2].tolist() == [64, 65]
    head = tiny.module_list[22].Conv2d
    assert head.bias.numel() == 255 and head.weight.flatten()[-1] == (TINY_VALUES - 1) % 1000
    assert report["tensors_loaded"] == 11 * 5 + 2 * 2 and report["values_loaded"] == TINY_VALUES
    assert report["seen"] == 123_456_789 and report["blocks_skipped_by_cutoff"] == []


@pytest.mark.parametrize("version", [(0, 2, 5), (0, 1, 0)])
def test_darknet_round_trip_byte_exact(tiny, tmp_path, version):
    src, dst = tmp_path / "in.weights", tmp_path / "out.weights"
    _write_darknet(src, _random_values(TINY_VALUES), version=version, seen=987)
    load_darknet_weights(tiny, src)
    save_weights(tiny, dst)
    assert src.read_bytes() == dst.read_bytes()
    assert (tiny.version.tolist(), int(tiny.seen[0])) == (list(version), 987)


def test_darknet_round_trip_with_cutoff(tiny, tmp_path):
    src, dst = tmp_path / "yolov3-tiny.conv.15", tmp_path / "out.conv.15"
    _write_darknet(src, _random_values(TINY_CONV15_VALUES, seed=3))
    before = tiny.module_list[15].Conv2d.weight.clone()
    report = load_darknet_weights(tiny, src)  # cutoff 15 from the name
    assert report["cutoff"] == 15 and report["blocks_skipped_by_cutoff"] == [15, 18, 21, 22]
    assert torch.equal(tiny.module_list[15].Conv2d.weight, before)
    save_weights(tiny, dst, cutoff=15)
    assert src.read_bytes() == dst.read_bytes()


def test_darknet53_conv74_loads_into_yolov3(yolov3, tmp_path):
    path = tmp_path / "darknet53.conv.74"
    _write_darknet(path, DARKNET53_CONV74_VALUES)
    tail = _random_values(8, seed=5)
    with open(path, "r+b") as f:  # the last values of the file are the last weights of block 73
        f.seek(-4 * len(tail), 2)
        tail.tofile(f)
    report = load_darknet_weights(yolov3, path)
    assert report["cutoff"] == 75 and report["values_loaded"] == DARKNET53_CONV74_VALUES
    assert torch.equal(yolov3.module_list[73].Conv2d.weight.flatten()[-8:], torch.from_numpy(tail))


def test_truncated_file_error(tiny, tmp_path):
    path = tmp_path / "short.weights"
    _write_darknet(path, TINY_CONV15_VALUES)
    with pytest.raises(ValueError, match=r"short.weights: too short: .*needs 8,858,734 .* has 7,743,344; .*"
                                         r"first 15 blocks of cfg/yolov3-tiny.cfg \(pass cutoff=15\)"):  # fmt: skip
        load_darknet_weights(tiny, path)


def test_oversized_file_error(tiny, tmp_path):
    path = tmp_path / "long.weights"
    _write_darknet(path, TINY_VALUES + 7)
    with pytest.raises(ValueError, match=r"longer than needed .* needs 8,858,734 .* has 8,858,741; it fits none"):
        load_darknet_weights(tiny, path)


def test_wrong_cfg_error_names_fitting_cfg(yolov3, tmp_path):
    path = tmp_path / "yolov3-tiny.weights"
    _write_darknet(path, TINY_VALUES)
    with pytest.raises(ValueError, match=r"too short.*it fits cfg/yolov3-tiny.cfg as a whole"):
        load_darknet_weights(yolov3, path)


# --- PyTorch checkpoints -----------------------------------------------------------------------------------


def test_load_weights_pt_formats(cfg_dir, tiny, tmp_path):
    sd = tiny.state_dict()
    other = Darknet(cfg_dir / "yolov3-tiny.cfg")
    for i, ckpt in enumerate(({"model": sd, "epoch": 3, "ema": sd}, {"model": tiny}, sd)):
        path = tmp_path / f"c{i}.pt"
        torch.save(ckpt, path)
        torch.nn.init.zeros_(other.module_list[0].Conv2d.weight)
        report = load_weights(other, path)
        assert report["format"] == "pt" and report["tensors_loaded"] == len(sd)
        assert torch.equal(other.module_list[0].Conv2d.weight, tiny.module_list[0].Conv2d.weight)


def test_load_weights_mismatch_error(cfg_dir, tiny, tmp_path):
    path = tmp_path / "coco.pt"
    torch.save({"model": tiny.state_dict()}, path)
    model = Darknet(cfg_dir / "yolov3-tiny.cfg", nc=3)
    with pytest.raises(ValueError, match=r"coco.pt does not fit .*yolov3-tiny.cfg \(nc=3\): 4 with other shapes: "
                                         r"module_list.15.Conv2d.weight \(255, 512, 1, 1\).*nc=80"):  # fmt: skip
        load_weights(model, path)
    with pytest.raises(FileNotFoundError, match=r"nothing is downloaded.*weights/"):
        load_weights(model, tmp_path / "absent.pt")


def test_load_state_dict_fitting(cfg_dir, tiny):
    model = Darknet(cfg_dir / "yolov3-tiny.cfg", nc=3)
    n, skipped = load_state_dict_fitting(model, tiny.state_dict())
    assert n == len(tiny.state_dict()) - 4
    assert {k for k, _ in skipped} == {f"module_list.{i}.Conv2d.{p}" for i in (15, 22) for p in ("weight", "bias")}
    assert torch.equal(model.module_list[0].Conv2d.weight, tiny.module_list[0].Conv2d.weight)


HEADS = {f"module_list.{i}.Conv2d.{p}" for i in (15, 22) for p in ("weight", "bias")}  # yolov3-tiny's output convs


@pytest.mark.parametrize("fmt", ["pt", "weights"])
def test_weights_of_80_classes_fit_a_3_class_model_except_the_heads(cfg_dir, tiny, tmp_path, fmt):
    """Fine-tuning: an 80-class .pt or Darknet .weights onto nc=3 loads every other tensor bit for bit (BatchNorm
    statistics included) and leaves the output convolutions at their fresh 3-class init."""
    path = tmp_path / f"coco80.{fmt}"
    if fmt == "pt":
        torch.save({"model": tiny.state_dict(), "epoch": 3}, path)
    else:
        save_weights(tiny, path)
    model = Darknet(cfg_dir / "yolov3-tiny.cfg", nc=3)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_weights_fitting(model, path)
    sd, src = model.state_dict(), tiny.state_dict()
    assert {k for k, _ in report["skipped"]} == HEADS
    assert report["loaded"] == report["total"] - 4 and report["format"] == ("pt" if fmt == "pt" else "darknet")
    for k, v in sd.items():
        if k in HEADS:
            assert v.shape[0] == 3 * (5 + 3) and torch.equal(v, fresh[k]), k
        elif not k.endswith("num_batches_tracked"):
            assert torch.equal(v, src[k]), k
    if fmt == "weights":
        assert report["file_nc"] == 80


def test_darknet_cutoff_file_loads_its_blocks_only(cfg_dir, tiny, tmp_path):
    path = tmp_path / "yolov3-tiny.conv.15"
    save_weights(tiny, path, cutoff=15)
    model = Darknet(cfg_dir / "yolov3-tiny.cfg", nc=1)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_weights_fitting(model, path)
    loaded = {k for k in model.state_dict() if int(k.split(".")[1]) < 15 and not k.endswith("num_batches_tracked")}
    assert report["loaded"] == len(loaded) and report["cutoff"] == 15
    for k, v in model.state_dict().items():
        assert torch.equal(v, tiny.state_dict()[k] if k in loaded else fresh[k]), k


def test_official_tiny_weights_onto_one_class(cfg_dir):
    official = REFERENCE.parents[1] / "weights" / "yolov3-tiny.weights"
    if not official.is_file():
        pytest.skip(f"official weights not found at {official}")
    model = Darknet(cfg_dir / "yolov3-tiny.cfg", nc=1)
    report = load_weights_fitting(model, official)
    assert report["file_nc"] == 80 and {k for k, _ in report["skipped"]} == HEADS
    coco = Darknet(cfg_dir / "yolov3-tiny.cfg")
    load_darknet_weights(coco, official)
    assert torch.equal(model.module_list[13].Conv2d.weight, coco.module_list[13].Conv2d.weight)


def test_weights_that_fit_nothing_are_refused(cfg_dir, tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"model": {"backbone.weight": torch.zeros(3)}}, path)
    with pytest.raises(ValueError, match=r"other.pt: none of its 1 tensors fits"):
        load_weights_fitting(Darknet(cfg_dir / "yolov3-tiny.cfg", nc=3), path)
    bad = tmp_path / "bad.weights"
    _write_darknet(bad, _random_values(1234, seed=0))
    with pytest.raises(ValueError, match="bad.weights"):
        load_weights_fitting(Darknet(cfg_dir / "yolov3-tiny.cfg", nc=3), bad)


def test_convert_round_trip(cfg_dir, tmp_path):
    src = tmp_path / "tiny.weights"
    _write_darknet(src, _random_values(TINY_VALUES, seed=7))
    pt = convert(cfg_dir / "yolov3-tiny.cfg", src)
    assert pt == str(tmp_path / "tiny.pt")
    ckpt = torch.load(pt, weights_only=True)
    assert ckpt["epoch"] == -1 and ckpt["optimizer"] is None and "module_list.0.Conv2d.weight" in ckpt["model"]
    back = convert(cfg_dir / "yolov3-tiny.cfg", pt, output=tmp_path / "back.weights")
    # .pt carries no Darknet header, so the default header (0.2.5, seen 0) differs from the source's seen
    assert Path(back).read_bytes()[20:] == src.read_bytes()[20:]


CUSTOM_CFG = """[net]
channels=3
[convolutional]
filters=8
size=3
stride=2
pad=1
activation=mish
[convolutional]
batch_normalize=1
filters=8
size=1
activation=swish
[shortcut]
from=-2
activation=relu
[route]
layers=0,2
groups=2
group_id=1
[maxpool]
size=3
stride=2
[convolutional]
filters=16
size=3
stride=2
pad=1
groups=2
activation=logistic
[route]
layers=0
[convolutional]
filters=21
size=1
activation=linear
[yolo]
mask=0
anchors=8,8, 16,16
classes=2
"""


def test_custom_blocks(tmp_path):
    """route groups/group_id, shortcut with activation, grouped conv, every activation, absolute routes."""
    path = tmp_path / "custom.cfg"
    path.write_text(CUSTOM_CFG)
    with pytest.raises(ValueError, match=r"custom.cfg:37: .*needs filters=7 .*found filters=21"):
        Darknet(path)
    model = Darknet(path, nc=16)
    assert model.module_list[7].Conv2d.out_channels == 21
    assert model.module_list[8].stride == 2  # the route back to block 0 restores its stride
    kinds = [type(m.activation).__name__ for m in model.module_list if hasattr(m, "activation")]
    assert kinds == ["Mish", "SiLU", "Sigmoid"]
    captured = {}
    for i in (0, 2, 3):
        model.module_list[i].register_forward_hook(lambda m, inp, out, i=i: captured.__setitem__(i, out))
    model.eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        io, raw = model(x)
    assert torch.equal(captured[3], torch.cat((captured[0], captured[2]), 1)[:, 8:])
    assert raw[0].shape == (1, 1, 16, 16, 21) and io.shape == (1, 256, 21)
    model.train()
    assert model(x)[0].shape == (1, 1, 16, 16, 21)
    with pytest.raises(ValueError, match="expected height and width multiples of 2"):
        model(torch.rand(1, 3, 33, 32))


def test_yolo_layer_channels_last_input_gives_the_same_values_and_a_channels_last_gradient():
    layer = YOLOLayer(np.array([[10, 13], [16, 30], [33, 23]]), nc=2, stride=8)
    x = torch.randn(2, 3 * 7, 5, 6)
    outs, grads = [], []
    for fmt in (torch.contiguous_format, torch.channels_last):
        leaf = x.clone().contiguous(memory_format=fmt).requires_grad_(True)
        p = leaf * 1.0  # stands for the head convolution's output: the hook sees the gradient it would get
        p.register_hook(grads.append)
        out = layer.train()(p)
        assert out.shape == (2, 3, 5, 6, 7) and out.is_contiguous()
        (out * torch.arange(out.numel()).view_as(out)).sum().backward()
        outs.append(out.detach())
        with torch.no_grad():
            io, raw = layer.eval()(p)
        outs += [io, raw]
    assert all(torch.equal(a, b) for a, b in zip(outs[:3], outs[3:]))
    assert torch.equal(grads[0], grads[1])
    # channels-last, as the head convolution's oneDNN backward wants it: no copy there (one on the way, not two)
    assert grads[1].is_contiguous(memory_format=torch.channels_last)


def _head_biases(model: Darknet) -> list[torch.Tensor]:
    return [model.module_list[i - 1][0].bias.detach().clone() for i in model.yolo_layers]


def test_heads_keep_pytorch_init_and_smart_bias_init_adds_the_prior():
    from models import smart_bias_init

    torch.manual_seed(0)
    plain = Darknet("cfg/yolov3-tiny.cfg", nc=3)
    torch.manual_seed(0)
    primed = Darknet("cfg/yolov3-tiny.cfg", nc=3)
    assert smart_bias_init(primed) == 2
    for i, b0, b1 in zip(plain.yolo_layers, _head_biases(plain), _head_biases(primed)):
        conv = plain.module_list[i - 1][0]
        bound = 1 / math.sqrt(conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1])
        assert b0.abs().max() <= bound  # PyTorch's default uniform(-bound, bound): no prior at construction
        want = b0.view(3, 8).clone()
        want[:, 4] += -4.5
        want[:, 5:] += math.log(0.6 / (3 - 0.99))
        assert torch.equal(b1.view(3, 8), want)
    others = [(k, v) for k, v in primed.state_dict().items() if not any(k.startswith(f"module_list.{i - 1}.")
                                                                      for i in primed.yolo_layers)]
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in others)


@pytest.mark.parametrize(("flag", "recipe", "on"), [(None, "2020", False), (None, "2019", True), (True, "2020", True),
                                                     (False, "2019", False)])
def test_smart_bias_default_follows_the_recipe(flag, recipe, on):
    from utils.train_options import parse_opt, smart_bias_for

    assert smart_bias_for(flag, recipe) is on
    opt = parse_opt(["--recipe", recipe] + ([] if flag is None else ["--smart-bias" if flag else "--no-smart-bias"]))
    assert smart_bias_for(opt.smart_bias, opt.recipe) is on

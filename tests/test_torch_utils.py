"""Device selection, seeding, conv+BN folding, the weights EMA and the model summary."""

from __future__ import annotations

import copy
import logging
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from utils.torch_utils import (
    ModelEMA,
    de_parallel,
    fuse_conv_and_bn,
    init_seeds,
    model_info,
    select_device,
    time_synchronized,
)


def test_select_device_cpu():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("CPU", batch_size=3) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_select_device_without_cuda():
    assert select_device("") == torch.device("cpu")
    for request in ("0", "0,1", "cuda:0"):
        with pytest.raises(ValueError, match="CUDA is not available: use --device cpu"):
            select_device(request)
    with pytest.raises(ValueError, match="expected '', 'cpu' or GPU indices"):
        select_device("gpu")


def test_init_seeds_reproducible():
    init_seeds(3)
    a = (random.random(), np.random.rand(), torch.rand(2))
    init_seeds(3)
    b = (random.random(), np.random.rand(), torch.rand(2))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def test_init_seeds_deterministic_flag():
    before = torch.are_deterministic_algorithms_enabled()
    try:
        init_seeds(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(before)


def test_de_parallel():
    m = nn.Linear(2, 2)
    assert de_parallel(m) is m
    assert de_parallel(nn.DataParallel(m)) is m


@pytest.mark.parametrize(("groups", "bias"), [(1, False), (2, True)])
def test_fuse_conv_and_bn(groups, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=groups, bias=bias)
    bn = nn.BatchNorm2d(6, eps=1e-4, momentum=0.03)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.2, 3)
    bn.weight.data.uniform_(0.5, 2)
    bn.bias.data.uniform_(-1, 1)
    seq = nn.Sequential(conv, bn).eval()
    fused = fuse_conv_and_bn(conv, bn)
    x = torch.randn(2, 4, 9, 7)
    assert fused.bias is not None and fused.groups == groups and fused.stride == (2, 2)
    assert torch.allclose(fused(x), seq(x), atol=1e-5)


def test_model_ema():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    ema = ModelEMA(model, decay=0.9)
    assert not any(p.requires_grad for p in ema.ema.parameters()) and not ema.ema.training
    start = {k: v.clone() for k, v in ema.ema.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model(torch.randn(2, 3, 4, 4))  # changes BN running stats and num_batches_tracked
    ema.update(model)
    d = 0.9 * (1 - math.exp(-1 / 2000))
    assert ema.updates == 1 and ema.decay(1) == pytest.approx(d)
    msd = model.state_dict()
    for k, v in ema.ema.state_dict().items():
        if v.dtype.is_floating_point:
            assert torch.allclose(v, start[k] * d + (1 - d) * msd[k]), k
        else:
            assert torch.equal(v, start[k]), k  # integer buffers are not averaged


def test_model_ema_resume_counter():
    ema = ModelEMA(nn.Linear(2, 2), updates=4000)
    assert ema.decay(4001) == pytest.approx(0.9999 * (1 - math.exp(-4001 / 2000)))


def test_model_info_counts_and_flops(capsys):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Conv2d(8, 2, 1))
    model[1].weight.requires_grad_(False)
    n_layers, n_p, n_g, gflops = model_info(model, img_size=(16, 32))
    assert (n_layers, n_p, n_g) == (3, 8 * 27 + 16 + 2, 8 * 27 + 2)
    macs = 16 * 32 * (8 * 27 + 2 * 8)
    assert gflops == pytest.approx(2 * macs / 1e9)
    assert "Model Summary: 3 layers" in capsys.readouterr().out


def test_time_synchronized():
    t0 = time_synchronized()
    assert time_synchronized() >= t0


def test_build_optimizer_groups_follow_the_reference():
    """Three groups: BN and other weights without decay, conv weights with decay, biases without; frozen
    tensors left out."""
    from models import Darknet
    from utils.hyp import DEFAULT_HYP
    from utils.torch_utils import build_optimizer

    model = Darknet(Path(__file__).resolve().parents[1] / "cfg" / "yolov3-tiny.cfg", nc=3)
    model.module_list[0].Conv2d.weight.requires_grad_(False)
    opt = build_optimizer(model, DEFAULT_HYP)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = [[names[id(p)] for p in g["params"]] for g in opt.param_groups]
    assert all("BatchNorm2d" in n for n in groups[0])
    assert all(n.endswith("Conv2d.weight") for n in groups[1]) and "module_list.0.Conv2d.weight" not in groups[1]
    assert all(n.endswith(".bias") for n in groups[2]) and "module_list.15.Conv2d.bias" in groups[2]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, DEFAULT_HYP["weight_decay"], 0.0]
    assert [g["name"] for g in opt.param_groups] == ["other", "conv", "bias"]
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["nesterov"]
    adam = build_optimizer(model, DEFAULT_HYP, adam=True)
    assert isinstance(adam, torch.optim.Adam) and adam.defaults["betas"] == (0.9, 0.999)  # PyTorch's, as the reference


def test_apply_batch_settings_sets_each_named_group():
    from models import Darknet
    from utils.hyp import DEFAULT_HYP
    from utils.torch_utils import apply_batch_settings, build_optimizer

    model = Darknet(Path(__file__).resolve().parents[1] / "cfg" / "yolov3-tiny.cfg", nc=3)
    for adam in (False, True):
        opt = build_optimizer(model, DEFAULT_HYP, adam=adam)
        apply_batch_settings(opt, {"other": 0.1, "conv": 0.2, "bias": 0.3}, {"other": 0.0, "conv": 4e-4, "bias": 0.0},
                             0.91)  # fmt: skip
        assert [(g["lr"], g["weight_decay"]) for g in opt.param_groups] == [(0.1, 0.0), (0.2, 4e-4), (0.3, 0.0)]
        assert all(g.get("momentum", 0.91) == 0.91 for g in opt.param_groups)
        assert adam == ("momentum" not in opt.param_groups[0])


def test_compile_forward_falls_back_to_eager_when_compiling_fails(monkeypatch, caplog):
    from torch._dynamo.exc import TorchDynamoException

    from utils.torch_utils import compile_forward

    calls = []

    def broken_compile(model, mode=None):
        def run(x):
            calls.append(x)
            raise TorchDynamoException("backend compiler failed: no C++ compiler")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.LeakyReLU(0.1)).eval()
    forward = compile_forward(model)
    x = torch.rand(1, 3, 8, 8)
    with caplog.at_level(logging.WARNING, logger="utils.torch_utils"):
        assert torch.equal(forward(x), model(x)) and torch.equal(forward(x), model(x))
    assert len(calls) == 1  # tried once, then eager for good, said once
    assert sum("torch.compile failed" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(RuntimeError):  # the model's own errors still surface
        forward(torch.rand(1, 5, 8, 8))


@pytest.mark.slow
def test_compile_forward_trains_like_eager():
    from utils.torch_utils import compile_forward

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.LeakyReLU(0.1)).train()
    eager = copy.deepcopy(model)
    x = torch.rand(2, 3, 16, 16)
    forward = compile_forward(model)
    forward(x).square().mean().backward()
    eager(x).square().mean().backward()
    torch.testing.assert_close(model[0].weight.grad, eager[0].weight.grad, rtol=1e-4, atol=1e-6)

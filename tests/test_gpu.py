"""CUDA paths that CPU runs never take (every test is marked gpu).

AMP training against float32, the GradScaler through --resume, test.py --half against float32, channels-last
on CUDA, and NCCL under torchrun. Every test skips without CUDA; ``python bench/gpu_check.py`` runs them
(``pytest -m gpu``) with the rest of the GPU check.

Stated tolerances (what "equal within a tolerance" means below):
- AMP (float16 autocast + GradScaler, as train.py on CUDA) against float32 (as ``--no-amp``), yolov3-tiny@320
  batch 8, 4 steps from the same weights on the same batch: every loss finite and within 3% of the float32
  loss; the first step's unscaled gradient at cosine similarity >= 0.98 with float32's and a norm ratio in
  [0.8, 1.25]; the weights' total update after 4 steps at cosine >= 0.8 and norm ratio in [0.8, 1.25]. Steps
  the GradScaler skips (inf gradients while its scale is still too high, at most 2 allowed) are skipped in the
  float32 run too, so both apply the same updates. Why not tighter: on a randomly initialised network float16
  activations change the gradients by ~15% (relative L2) through the BatchNorm backward's cancellations
  (float16 autocast on CPU, yolov3-tiny@160: gradient cosine 0.993 and norm ratio 0.998 at the first step,
  4-step update cosine 0.935 and ratio 0.99, losses within 1.2%), while the bugs this is for (gradients left
  scaled, a skipped or doubled step, a loss term lost) are off by far more.
- test.py ``--half`` against float32, same weights: the raw eval outputs (boxes in pixels within 0.5 px + 1%,
  scores within 0.01); with the official yolov3-tiny weights on coco128 P, R, mAP@0.5 and mAP@0.5:0.95 within
  0.01 absolute.
- channels-last against NCHW on CUDA, float32 with TF32 off, yolov3-spp@256 batch 2: the loss within 1e-4
  relative; all gradients together within 5% relative L2 at cosine >= 0.998 (the same comparison on CPU gives
  1.6% and 0.9999: other kernels' float32 rounding, amplified through the BatchNorm backward at random init).

Data beside the checkout (coco128, the official yolov3-tiny weights) is looked for in ``shared/`` inside the
checkout first (where a GPU machine gets it: ``python bench/gpu_check.py --stage`` copies it there), then in
``../shared``; tests that need it skip when it is absent.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.synthetic import random_batch
from models import Darknet
from utils.hyp import DEFAULT_HYP, derive_loss_hyp
from utils.loss import compute_loss
from utils.torch_utils import build_optimizer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "cfg" / "yolov3-tiny.cfg"
SHARED = next((p for p in (REPO / "shared", REPO.parent / "shared") if (p / "datasets" / "coco128").is_dir()),
              REPO.parent / "shared")  # fmt: skip
TIMEOUT = 240  # seconds for one subprocess run: a hang fails the test instead of eating the GPU session


def shapes_data(root: Path, n_train: int = 16, n_valid: int = 8) -> Path:
    """A small built-in shapes set in ``root`` and its .data file."""
    from utils.shapes import make_shapes_dataset

    make_shapes_dataset(root / "shapes", seed=0, n_train=n_train, n_valid=n_valid)
    (root / "shapes.names").write_text((REPO / "data" / "shapes.names").read_text())
    data = root / "shapes.data"
    data.write_text("classes=3\ntrain=shapes/images/train\nvalid=shapes/images/valid\nnames=shapes.names\n")
    return data


def train_steps(
    model: Darknet, imgs: torch.Tensor, targets: torch.Tensor, amp: bool, steps: int, skip: frozenset = frozenset()
) -> tuple[list[float], list[int], torch.Tensor]:
    """``steps`` training steps as train.py takes them (accumulate 1); with float32, the steps in ``skip`` leave
    the weights as they are (as a GradScaler's skipped step). Returns (losses, indices of skipped steps, the
    first step's unscaled gradient flattened)."""
    hyp = dict(DEFAULT_HYP)
    loss_hyp = derive_loss_hyp(hyp, model.nc)
    optimizer = build_optimizer(model, hyp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    losses, skipped, first_grad = [], [], None
    for i in range(steps):
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            pred = model(imgs)
        loss, _ = compute_loss([p.float() for p in pred], targets, model, hyp=loss_hyp, gr=1.0)
        loss = loss * (len(imgs) / 64)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # what scaler.step does first; here so that the gradient can be read
        if first_grad is None:
            first_grad = torch.cat([p.grad.flatten() for p in model.parameters()])
        scale = scaler.get_scale() if amp else 1.0
        if i not in skip:
            scaler.step(optimizer)
        scaler.update()
        if amp and scaler.get_scale() < scale:  # the scale shrinks exactly when the step was skipped
            skipped.append(i)
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses, skipped, first_grad


def _similar(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(cosine similarity, norm ratio |a| / |b|) of two flat tensors."""
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0)), float(a.norm() / b.norm())


def test_amp_training_steps_stay_finite_and_close_to_float32():
    torch.manual_seed(0)
    base = Darknet(TINY, nc=80).cuda().to(memory_format=torch.channels_last).train()
    start = torch.cat([p.detach().flatten() for p in base.parameters()])
    imgs, targets = random_batch(8, 320, 80, seed=0)
    imgs = imgs.cuda().contiguous(memory_format=torch.channels_last)
    targets = targets.cuda()
    amp_model = copy.deepcopy(base)
    l16, skipped, g16 = train_steps(amp_model, imgs, targets, True, steps=4)
    fp32_model = copy.deepcopy(base)
    l32, _, g32 = train_steps(fp32_model, imgs, targets, False, steps=4, skip=frozenset(skipped))
    assert all(torch.isfinite(torch.tensor(l16))), l16
    assert len(skipped) <= 2, f"GradScaler skipped steps {skipped} of 4 (inf/nan gradients in float16)"
    for a, b in zip(l16, l32):
        assert abs(a - b) <= 0.03 * abs(b), (l16, l32)
    if 0 not in skipped:  # a skipped first step has inf/nan gradients: nothing to compare
        cos, ratio = _similar(g16, g32)
        assert cos >= 0.98 and 0.8 <= ratio <= 1.25, ("first-step gradient", cos, ratio)
    u16 = torch.cat([p.detach().flatten() for p in amp_model.parameters()]) - start
    u32 = torch.cat([p.detach().flatten() for p in fp32_model.parameters()]) - start
    cos, ratio = _similar(u16, u32)
    assert cos >= 0.8 and 0.8 <= ratio <= 1.25, ("4-step update", cos, ratio, skipped)


def _record_layout_losses(model: Darknet, lost: list[int]) -> None:
    """Forward hooks appending to ``lost`` the index of every block whose 4-d output is not channels-last."""

    def hook(index: int):
        def check(module, inputs, out) -> None:
            if not isinstance(out, torch.Tensor) or out.dim() != 4:
                return
            if not out.is_contiguous(memory_format=torch.channels_last):
                lost.append(index)

        return check

    for i, m in enumerate(model.module_list):
        m.register_forward_hook(hook(i))


def test_channels_last_on_cuda_matches_nchw_and_keeps_the_layout():
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # compare float32 with float32
    try:
        torch.manual_seed(0)
        nchw = Darknet(REPO / "cfg" / "yolov3-spp.cfg", nc=80).cuda().train()
        cl = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
        imgs, targets = random_batch(2, 256, 80, seed=1)
        imgs, targets = imgs.cuda(), targets.cuda()
        lost: list[int] = []  # blocks whose output left channels-last (routes, upsampling, SPP maxpools ...)
        _record_layout_losses(cl, lost)
        results = []
        for model, x in ((nchw, imgs), (cl, imgs.contiguous(memory_format=torch.channels_last))):
            loss, _ = compute_loss(model(x), targets, model, hyp=derive_loss_hyp(dict(DEFAULT_HYP), 80), gr=1.0)
            loss.backward()
            results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
        assert not lost, f"blocks {lost} returned NCHW tensors from a channels-last input"
        (l0, g0), (l1, g1) = results
        torch.testing.assert_close(l1, l0, rtol=1e-4, atol=1e-6)
        g0, g1 = torch.cat([g.flatten() for g in g0]), torch.cat([g.flatten() for g in g1])
        cos, _ = _similar(g1, g0)
        rel = float((g1 - g0).norm() / g0.norm())
        assert rel <= 0.05 and cos >= 0.998, (rel, cos)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32


def test_half_eval_outputs_match_float32():
    """test.py --half runs the fused model under float16 autocast; its decoded outputs stay close to float32."""
    import utils.evaluate as test_py

    torch.manual_seed(0)
    model = Darknet(TINY, nc=80)
    for m in model.modules():  # trained-like BatchNorm statistics, so the fused weights are not trivial
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"gpu-half-{os.getpid()}.pt"
    torch.save({"model": model.state_dict()}, path)
    try:
        fused = test_py.load_model(TINY, path, 80, 320, torch.device("cuda"))
    finally:
        path.unlink()
    x = torch.rand(4, 3, 320, 416, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        full = fused(x)[0]
        with torch.autocast("cuda", dtype=torch.float16):
            half = fused(x)[0].float()
    assert torch.isfinite(half).all()
    torch.testing.assert_close(half[..., :4], full[..., :4], rtol=0.01, atol=0.5)
    torch.testing.assert_close(half[..., 4:], full[..., 4:], rtol=0, atol=0.01)


def test_half_test_py_matches_float32_on_coco128(tmp_path):
    weights = SHARED / "weights" / "yolov3-tiny.weights"
    images = SHARED / "datasets" / "coco128" / "images" / "train2017"
    if not (weights.is_file() and images.is_dir()):
        pytest.skip(f"needs the official yolov3-tiny weights and coco128 in {SHARED} (bench/gpu_check.py --stage)")
    import utils.evaluate as test_py

    data = tmp_path / "coco128.data"
    data.write_text(f"classes=80\ntrain={images}\nvalid={images}\nnames={REPO / 'data' / 'coco128.names'}\n")
    out = {}
    for half in (False, True):
        with contextlib.redirect_stdout(io.StringIO()):
            out[half], _ = test_py.test(TINY, data, weights, batch_size=32, img_size=416, device="0", half=half,
                                        plots=False, save_dir=tmp_path / f"half{half}", workers=4)  # fmt: skip
    assert out[False][2] > 0.1, out[False]  # the official weights do detect COCO objects
    for a, b in zip(out[True][:4], out[False][:4]):  # P, R, mAP@0.5, mAP@0.5:0.95
        assert abs(a - b) <= 0.01, (out[True], out[False])


def run_train(args: list[str], cwd: Path = REPO, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    prefix = [sys.executable, "-m", "torch.distributed.run", *launcher] if launcher else [sys.executable]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "YOLO_DIST_TIMEOUT": "120"}
    proc = subprocess.run([*prefix, "train.py", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)  # fmt: skip
    if proc.returncode:
        pytest.fail(f"train.py exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def gpu_train_args(data: Path, project: Path, name: str) -> list[str]:
    """2 epochs of 16 images at batch 4 (accumulate 1: 8 optimizer steps), AMP on (train.py's CUDA default)."""
    return [
        "--cfg", str(TINY), "--data", str(data), "--img-size", "128", "--epochs", "2", "--batch-size", "4",
        "--accumulate", "1", "--weights", "", "--device", "0", "--num-workers", "0", "--notest",
        "--project", str(project), "--name", name,
    ]  # fmt: skip


def test_resume_restores_the_grad_scaler(tmp_path, capsys):
    import train
    from utils.checkpoint import load_checkpoint

    data = shapes_data(tmp_path / "data")
    assert train.main(gpu_train_args(data, tmp_path, "full")) == 0  # in this process: no start-up per run
    assert train.main([*gpu_train_args(data, tmp_path, "cut"), "--stop-after-batches", "3"]) == 0
    assert "Stopped" in capsys.readouterr().out
    cut = load_checkpoint(tmp_path / "cut" / "weights" / "last.pt")
    assert cut["scaler"] and cut["scaler"]["scale"] > 0, "an AMP run must save its GradScaler"
    assert cut["scaler"]["_growth_tracker"] >= 1  # steps since the last skipped one: the state a fresh scaler lacks
    assert train.main(["--resume", "--project", str(tmp_path), "--name", "cut"]) == 0
    assert "Resuming from epoch 0, batch 3" in capsys.readouterr().out
    full = load_checkpoint(tmp_path / "full" / "weights" / "last.pt")
    resumed = load_checkpoint(tmp_path / "cut" / "weights" / "last.pt")
    # a scaler restarted from scratch would have counted only the 5 steps after the cut
    for key in ("scale", "_growth_tracker"):
        assert resumed["scaler"][key] == full["scaler"][key], (key, resumed["scaler"], full["scaler"])


NCCL_PROBE = """
import sys, torch, torch.distributed as dist
sys.path.insert(0, {repo!r})
from torch import nn
from models import Darknet
dist.init_process_group("nccl")
torch.cuda.set_device(0)
x = torch.full((4,), float(dist.get_rank() + 1), device="cuda")
dist.all_reduce(x)
dist.barrier(device_ids=[0])
box = [{{"world": dist.get_world_size()}}]
dist.broadcast_object_list(box, src=0, device=torch.device("cuda", 0))
model = nn.SyncBatchNorm.convert_sync_batchnorm(Darknet({cfg!r}, nc=3)).cuda().to(memory_format=torch.channels_last)
ddp = nn.parallel.DistributedDataParallel(model, device_ids=[0])
with torch.autocast("cuda", dtype=torch.float16):
    out = ddp(torch.rand(2, 3, 128, 128, device="cuda").contiguous(memory_format=torch.channels_last))
sum(o.float().mean() for o in out).backward()
ok = x.tolist() == [1.0] * 4 and box[0]["world"] == 1 and all(p.grad is not None for p in ddp.parameters())
print("NCCL_PROBE", "ok" if ok else "bad", dist.get_backend())
dist.destroy_process_group()
"""


def test_one_process_nccl_torchrun(tmp_path):
    """torchrun with one process on NCCL: collectives, DDP with SyncBatchNorm and AMP backward, then train.py
    itself launched by torchrun on the GPU."""
    probe = tmp_path / "nccl_probe.py"
    probe.write_text(NCCL_PROBE.format(repo=str(REPO), cfg=str(TINY)))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                           str(probe)], cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)  # fmt: skip
    assert proc.returncode == 0 and "NCCL_PROBE ok nccl" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]
    data = shapes_data(tmp_path / "data")
    run_train(gpu_train_args(data, tmp_path, "ddp1"), launcher=["--standalone", "--nproc_per_node", "1"])
    assert (tmp_path / "ddp1" / "weights" / "last.pt").is_file()

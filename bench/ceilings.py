"""What the machine's kernels can do: matrix-multiply and 3x3-convolution GFLOP/s.

The kernels are those of ../shared/reference/baseline-cpu.md ("The machine's ceilings"): a 2048x2048
matmul, and a 3x3 convolution 64->64 channels on 104x104 maps at batch 8, forward alone and forward plus
backward (gradients for the input and the weights, 3x the forward FLOPs), NCHW and channels-last. FLOPs
count 2 per multiply-add.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.timing import measure


def matmul_gflops(n: int, dtype: torch.dtype, device: torch.device, reps: int) -> dict[str, float | int]:
    """GFLOP/s of an (n, n) @ (n, n) matmul in `dtype`: median and spread over `reps` repetitions."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    timing = measure(lambda: a @ b, reps=reps, warmup=2, device=device)
    return timing.rate(2 * n**3 / 1e9)


def conv_gflops(
    batch: int,
    size: int,
    channels: int,
    dtype: torch.dtype,
    device: torch.device,
    channels_last: bool,
    backward: bool,
    reps: int,
) -> dict[str, float | int]:
    """GFLOP/s of a 3x3 stride-1 padded convolution `channels`->`channels` on (batch, channels, size, size).

    With `backward`, each repetition also computes the input and weight gradients (3x the forward FLOPs).
    """
    gen = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, channels, size, size, generator=gen).to(device=device, dtype=dtype, memory_format=fmt)
    w = (0.05 * torch.randn(channels, channels, 3, 3, generator=gen)).to(device=device, dtype=dtype)
    w = w.to(memory_format=fmt)
    fwd_flop = 2 * batch * channels * channels * 9 * size * size
    if backward:
        x.requires_grad_(True)
        w.requires_grad_(True)
        grad = torch.ones(batch, channels, size, size, device=device, dtype=dtype).to(memory_format=fmt)

        def step() -> None:
            y = F.conv2d(x, w, padding=1)
            gx, gw = torch.autograd.grad(y, (x, w), grad)
            del gx, gw

        flop = 3 * fwd_flop
    else:

        def step() -> None:
            with torch.no_grad():
                F.conv2d(x, w, padding=1)

        flop = fwd_flop
    timing = measure(step, reps=reps, warmup=2, device=device)
    return timing.rate(flop / 1e9)


def bf16_supported(device: torch.device) -> bool:
    """Whether bfloat16 matmuls run natively here (CUDA with bf16, or a CPU with AVX512-BF16/AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def measure_ceilings(device: torch.device, reps: int, quick: bool, bf16: bool) -> dict[str, object]:
    """All ceilings as a dict name -> {median, min, max, reps} GFLOP/s, plus the kernel sizes used.

    bf16 kernels are measured when `bf16` is asked for or the device is a GPU (where AMP uses half
    precision); `quick` shrinks every kernel so the whole section takes well under a second.
    """
    n, batch, size, channels = (256, 1, 16, 16) if quick else (2048, 8, 104, 64)
    out: dict[str, object] = {"kernels": {"matmul_n": n, "conv": [batch, channels, size, size]}}
    out["fp32_matmul"] = matmul_gflops(n, torch.float32, device, reps)
    for cl in (False, True):
        tag = "cl" if cl else "nchw"
        out[f"fp32_conv_fwd_{tag}"] = conv_gflops(batch, size, channels, torch.float32, device, cl, False, reps)
        out[f"fp32_conv_fwdbwd_{tag}"] = conv_gflops(batch, size, channels, torch.float32, device, cl, True, reps)
    low = torch.float16 if device.type == "cuda" else torch.bfloat16
    if (bf16 or device.type == "cuda") and bf16_supported(device):
        name = "fp16" if low == torch.float16 else "bf16"
        out[f"{name}_matmul"] = matmul_gflops(n, low, device, reps)
        out[f"{name}_conv_fwdbwd_cl"] = conv_gflops(batch, size, channels, low, device, True, True, reps)
    return out


def ceiling_shares(achieved_gflops: float, precision: str, ceilings: dict[str, object]) -> dict[str, float]:
    """The achieved GFLOP/s of a step as a fraction of the measured ceilings of its precision: ``of_matmul``
    (the 2048x2048 matmul) and ``of_conv`` (the channels-last 3x3 conv forward+backward). Each ceiling is its
    fastest repetition (what the machine can do). Missing ceilings (not measured, e.g. ``--only train``) give
    no entry."""
    low = {"fp32": "fp32", "bf16": "bf16", "amp": "fp16"}.get(precision, precision)
    out = {}
    for key, name in (("of_matmul", f"{low}_matmul"), ("of_conv", f"{low}_conv_fwdbwd_cl")):
        ceiling = ceilings.get(name)
        best = ceiling.get("max") if isinstance(ceiling, dict) else None
        if best:
            out[key] = achieved_gflops / best
    return out

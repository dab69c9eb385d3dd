"""Memory workload: what the RAM image cache and the heap tuning cost, and what a big data set would need.

- RAM cache: a training ``LoadImagesAndLabels`` with the default shared cache (``ram_cache_mb``, capped at half
  of /dev/shm's free space), one pass over the image set; reported: the budget, the images that got a slot,
  the bytes reserved and filled, bytes per image, and what the default bound and ``--cache-images`` would hold
  or need for a 200,000-image set of the same kind (``cache_images=True`` decodes every image into each
  process's own memory, without a bound).
- Heap tuning: the same training steps in two fresh processes, one with ``utils.general.tune_malloc`` (as
  train.py, test.py and detect.py) and one with glibc's defaults: peak and final resident memory (VmHWM,
  VmRSS) and the median step time. The steps are yolov3-tiny batch 8 at the multi-scale sizes 320..608, which
  fragment a heap that never shrinks: the case the tuning costs most.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIG_SET = 200_000  # images of the 'user with a big data set' the figures are extrapolated to

# Runs in a fresh process (the heap settings are process-wide and cannot be undone): argv = tuned|default, cfg,
# batch, sizes (comma-separated), threads. Prints one JSON line.
HEAP_PROBE = """
import json, statistics, sys, time
sys.path.insert(0, {repo!r})
import torch
from utils.general import tune_malloc
mode, cfg, batch, sizes, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
tuned = tune_malloc() if mode == "tuned" else False
torch.set_num_threads(threads)
from bench.synthetic import random_batch
from bench.training import TrainStep, build_model
from utils.hyp import DEFAULT_HYP, derive_loss_hyp
loss_hyp = derive_loss_hyp(dict(DEFAULT_HYP), 80)
model = build_model(cfg, 320, 80, torch.device("cpu"), True).train()
times = []
for size in [int(s) for s in sizes.split(",")]:
    imgs, targets = random_batch(batch, size, 80, seed=size)
    step = TrainStep(model, imgs.contiguous(memory_format=torch.channels_last), targets, loss_hyp, "fp32",
                     torch.device("cpu"))
    t0 = time.perf_counter(); step(); times.append(time.perf_counter() - t0)
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
kib = lambda k: int(status[k].split()[0]) if k in status else None
print("HEAP " + json.dumps({{"mode": mode, "tuned": tuned, "peak_rss_mib": kib("VmHWM") / 1024,
      "end_rss_mib": kib("VmRSS") / 1024, "step_s_median": statistics.median(times), "steps": len(times)}}))
"""


def ram_cache_figures(images: str | list[str], img_size: int, hyp: dict[str, float]) -> dict[str, object]:
    """The default RAM cache after one pass over the image set (0 workers, so this process fills it)."""
    from utils.datasets import LoadImagesAndLabels
    from utils.image_cache import mem_available

    dataset = LoadImagesAndLabels(images, img_size=img_size, batch_size=16, augment=True, hyp=hyp, seed=0,
                                  verbose=False)  # fmt: skip
    cache = dataset.ram_cache
    shm = shutil.disk_usage("/dev/shm") if os.path.isdir("/dev/shm") else None
    default_mb = _default_ram_cache_mb()
    out: dict[str, object] = {
        "img_size": img_size,
        "images": dataset.n,
        "ram_cache_mb_default": default_mb,
        "dev_shm_free_gib": None if shm is None else round(shm.free / 2**30, 1),
        "cache": cache is not None,
    }
    if cache is None:
        return out
    t0 = time.perf_counter()
    for i in range(dataset.n):
        dataset[i]
    pass_s = time.perf_counter() - t0
    slots = cache.offsets >= 0
    per_image = float((cache.shapes_hw.prod(1) * 3).mean())
    cached = len(cache)  # shared pages are taken only when an image is written: memory used ~ cached images
    budget = min(default_mb * 2**20, shm.free // 2) if shm is not None else default_mb * 2**20
    out.update({
        "reserved_mib": round(cache.nbytes / 2**20, 1),
        "used_mib": round(cached * per_image / 2**20, 1),
        "images_with_a_slot": int(slots.sum()),
        "images_cached_after_one_pass": cached,
        "bytes_per_image": round(per_image),
        "one_pass_s": round(pass_s, 2),
        f"set_of_{BIG_SET}": {
            "decoded_gib": round(BIG_SET * per_image / 2**30, 1),
            "default_cache_holds_images": int(budget // per_image),
            "default_cache_gib": round(min(budget, BIG_SET * per_image) / 2**30, 2),
            "cache_images_needs_gib": round(BIG_SET * per_image / 2**30, 1),
            "mem_available_gib": round((mem_available() or 0) / 2**30, 1),
        },
    })  # fmt: skip
    return out


def _default_ram_cache_mb() -> float:
    import inspect

    from utils.datasets import LoadImagesAndLabels

    param = inspect.signature(LoadImagesAndLabels).parameters.get("ram_cache_mb")
    return float(param.default) if param is not None else 0.0


def heap_figures(quick: bool, threads: int) -> list[dict[str, object]]:
    """Peak/final RSS and step time of the same training steps with and without tune_malloc (two processes)."""
    cfg = str(REPO / "cfg" / "yolov3-tiny.cfg")
    batch, sizes = (2, "64,96,64") if quick else (8, "320,416,608,352,512,384,576,320")
    rows = []
    for mode in ("tuned", "default"):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
        cmd = [sys.executable, "-c", HEAP_PROBE.format(repo=str(REPO)), mode, cfg, str(batch), sizes, str(threads)]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("HEAP ")), None)
        if proc.returncode or line is None:
            raise RuntimeError(f"heap probe ({mode}) exited {proc.returncode}: {proc.stderr[-2000:]}")
        rows.append({**json.loads(line[5:]), "model": "yolov3-tiny", "batch_size": batch, "sizes": sizes})
    return rows


def bench_memory(images: str | list[str], quick: bool, hyp: dict[str, float], threads: int) -> dict[str, object]:
    """The memory section: RAM cache figures at 416 (64 with ``quick``) and the heap A/B."""
    return {"ram_cache": ram_cache_figures(images, 64 if quick else 416, hyp), "heap": heap_figures(quick, threads)}

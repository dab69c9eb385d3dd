"""Data-loader workload: images/s of the training dataset through a DataLoader.

LoadImagesAndLabels with mosaic, HSV, affine and flip, by image size, worker count and image caching (as in
../shared/reference/baseline-cpu.md).

Cache modes:
- ``off``: every item decodes its 4 mosaic images from disk (``ram_cache_mb=0``): the reference's "no cache".
- ``ram``: the dataset's default shared RAM cache, filled as images are first decoded: the first pass is cold
  (reported separately), later passes read decoded images from memory.
- ``preload``: ``cache_images=True`` (everything decoded when the dataset is built): the reference's "cached".
"""

from __future__ import annotations

import inspect
import time

from bench.timing import Timing
from bench.training import shuffled_loader

CACHE_MODES = ("off", "ram", "preload")


def make_dataset(images: str | list[str], img_size: int, batch_size: int, hyp: dict[str, float], mode: str):
    """A training LoadImagesAndLabels (augment, mosaic) with the cache mode; None when the data module has no
    such mode (a version without a RAM cache has no 'ram' mode, and its 'off' is its default)."""
    from utils.datasets import LoadImagesAndLabels

    has_ram = "ram_cache_mb" in inspect.signature(LoadImagesAndLabels).parameters
    kwargs: dict[str, object] = {}
    if mode == "preload":
        kwargs["cache_images"] = True
    elif mode == "ram":
        if not has_ram:
            return None
    elif has_ram:
        kwargs["ram_cache_mb"] = 0
    return LoadImagesAndLabels(images, img_size=img_size, batch_size=batch_size, augment=True, hyp=hyp, seed=0,
                               verbose=False, **kwargs)


def bench_loader(
    images: str | list[str],
    img_size: int,
    workers_list: list[int],
    mode: str,
    hyp: dict[str, float],
    batch_size: int,
    reps: int,
) -> list[dict[str, object]]:
    """One row per worker count: images/s over whole passes through the image set.

    Each worker count gets a freshly built dataset (so the 'ram' cache starts empty). Pass 0 is timed on its
    own (`first_pass_img_s`: cold RAM cache, page cache, and the start of the workers, which then persist as in
    train.py), then `reps` passes, each a new epoch (dataset.set_epoch, so augmentations differ) and a new
    iterator, timed from creating it to the last batch. `dataset_build_s` is the dataset construction (label
    scan, plus decoding everything with 'preload').
    """

    rows = []
    for workers in workers_list:
        t0 = time.perf_counter()
        dataset = make_dataset(images, img_size, batch_size, hyp, mode)
        build_s = time.perf_counter() - t0
        if dataset is None:
            continue
        loader = shuffled_loader(dataset, batch_size, workers)
        timing = Timing()
        first = 0.0
        n = 0
        for epoch in range(reps + 1):
            dataset.set_epoch(epoch)
            n = 0
            t0 = time.perf_counter()
            for imgs, *_ in loader:
                n += len(imgs)
            dt = time.perf_counter() - t0
            if epoch:
                timing.seconds.append(dt)
            else:
                first = dt
        rows.append({
            "img_size": img_size,
            "workers": workers,
            "cache": mode,
            "batch_size": batch_size,
            "images_per_rep": n,
            "img_s": timing.rate(n),
            "first_pass_img_s": n / first,
            "dataset_build_s": build_s,
        })
    return rows

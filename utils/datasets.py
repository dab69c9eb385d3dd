"""The training and testing dataset ``LoadImagesAndLabels``: items, rectangular batches, collate and multi-scale.

The dataset opens a source through ``utils.labels.scan_source`` (every label file and image validated once, in the
main process; problems of the whole set reported together), then builds items as pure functions of (seed, epoch,
index): mosaic or letterbox, affine, HSV jitter and flip (``utils.augmentations``).

Speed: decoded, resized images are kept in a shared-memory RAM cache (``utils.image_cache.SharedImageCache``,
``ram_cache_mb``) that the main process and every DataLoader worker fill and read, so each image is decoded once per
run rather than about four times per epoch (mosaic). The epoch lives in shared memory too, so DataLoader workers
may be persistent. With ``num_workers=0`` the images of a batch are decoded by a few threads (``threads``). None of
this changes an item.

Command line: ``python -m utils.datasets check data/coco128.data [--img-size 416] [--plot labels.png]
[--cache-check content]`` (``utils.data_check``) validates the train and valid sets of a ``.data`` file, prints every
problem grouped by kind, the counts and the per-class table, and exits 1 on any problem.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from utils.augmentations import apply_hsv, hsv_gains, letterbox, mosaic_affine, random_affine
from utils.boxes import xywhn2xyxy, xyxy2xywhn
from utils.hyp import DEFAULT_HYP
from utils.image_cache import SharedImageCache, check_preload_fits, mem_available
from utils.images import bgr_to_chw_rgb, load_image, resized_shapes
from utils.labels import DatasetScan, scan_source
from utils.problems import MAX_LISTED, DatasetError, problems_message

LOGGER = logging.getLogger(__name__)

AUGMENT_KEYS = ("hsv_h", "hsv_s", "hsv_v", "degrees", "translate", "scale", "shear")


def _check_arguments(img_size: int, batch_size: int, seed: int, ram_cache_mb: float, threads: int | None) -> None:
    """Raise ValueError naming the first of ``LoadImagesAndLabels``'s numeric arguments that is out of range."""
    if int(img_size) <= 0 or int(batch_size) <= 0:
        raise ValueError(f"img_size={img_size} and batch_size={batch_size} must be positive integers")
    if int(seed) < 0:
        raise ValueError(f"seed={seed} must be >= 0")
    if not ram_cache_mb >= 0:
        raise ValueError(f"ram_cache_mb={ram_cache_mb} must be >= 0 (0 disables the cache)")
    if threads is not None and int(threads) < 1:
        raise ValueError(f"threads={threads} must be >= 1 (or None for the available CPUs)")


def _default_threads() -> int:
    """Decoding threads of ``__getitems__`` by default: the CPUs this process may run on, at most 4."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(4, cpus)


def rect_batch_shapes(
    shapes_wh: np.ndarray, batch_size: int, img_size: int, pad: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Per-batch letterbox shapes for rectangular batches of images already sorted by aspect ratio h/w.

    Returns:
        ``(batch, batch_shapes)``: the batch index of each image (n,) and (nb, 2) int ``(h, w)`` multiples of 32:
        the batch's most extreme aspect ratio fitted in ``img_size``, plus ``pad`` strides (0.5 for testing).
    """
    n = len(shapes_wh)
    batch = np.arange(n) // batch_size
    nb = int(batch[-1]) + 1 if n else 0
    ar = shapes_wh[:, 1] / shapes_wh[:, 0]
    shapes = np.ones((nb, 2))
    for i in range(nb):
        ari = ar[batch == i]
        lo, hi = ari.min(), ari.max()
        if hi < 1:
            shapes[i] = hi, 1
        elif lo > 1:
            shapes[i] = 1, 1 / lo
    return batch, np.ceil(shapes * img_size / 32 + pad).astype(int) * 32


class LoadImagesAndLabels(Dataset):
    """YOLO detection dataset: validated labels, letterboxed or mosaic-augmented images.

    Args:
        path: image folder, ``.txt`` list, image, glob, or a list of these (see ``collect_image_files``).
        img_size: training/testing size s; images are resized so their long side is s.
        batch_size: used for the rectangular batch shapes.
        augment: mosaic (unless ``rect``), random affine, HSV jitter and left-right flips, from ``hyp``.
        hyp: hyperparameters (keys ``AUGMENT_KEYS``); ``utils.hyp.DEFAULT_HYP`` when None.
        rect: sort by aspect ratio and letterbox each batch to its own shape (``batch_shapes``).
        cache_images: decode and resize every image once, now, and keep them in RAM (the size is printed first).
        ram_cache_mb: without ``cache_images``, keep up to this many MiB of decoded, resized images in shared
            memory as they are first loaded (``SharedImageCache``: one copy shared by the main process and all
            DataLoader workers, kept across epochs), so each is decoded once per run instead of ~4 times per epoch
            (mosaic). Capped at half the free space of ``/dev/shm``; 0 disables it. Items are identical either way.
        threads: threads that decode the images of one batch (``__getitems__``) in the main process, i.e. with
            ``num_workers=0`` (workers decode one by one: they already use the cores). Default: the CPUs this
            process may run on, at most 4; 1 decodes one by one. Decoding releases the GIL.
        reduced_decode: decode JPEGs shrunk by 2x or more at reduced DCT scale (faster, other pixels; see
            ``load_image``). Off by default: full-resolution decoding as the reference.
        single_cls: every class becomes 0.
        nc: number of classes; labels with a class outside ``[0, nc)`` are errors.
        pad: extra strides around rect batch shapes (0.5 for testing, 0 for training).
        seed: augmentation seed: item i in epoch e draws from ``np.random.default_rng([seed, e, i])``, so the
            data are a pure function of (seed, epoch, index) whatever the worker count (see ``set_epoch``).
            The epoch lives in shared memory, so ``set_epoch`` in the main process reaches
            DataLoader workers that already run (``persistent_workers=True``).
        verbose: print the scan summary (and the first few missing label files).
        cache_check: ``'mtime'`` or ``'content'``: how the label cache notices edited label files (``cache_key``;
            the CLIs' ``--cache-check``). ``'content'`` costs about 17 us per label file and start (coco128: 3 ms
            instead of 1 ms; ``CACHE_CHECK_HELP``).

    Raises:
        DatasetError (a ValueError): every problem of the set was collected (invalid label rows, unreadable label
            files, undecodable images, list entries not found); the message names up to ``MAX_LISTED`` of them,
            grouped by kind with counts, and points to ``python -m utils.datasets check``.
        FileNotFoundError: a source that does not exist.

    Items are ``(img, labels, path, shapes)``: img (3, h, w) uint8 RGB tensor, labels (n, 6) float32
    ``0, class, x, y, w, h`` normalised to the output image, the image path, and shapes None for mosaic or
    ``((h0, w0), ((h / h0, w / w0), (dw, dh)))`` (original size, resize ratios, letterbox half paddings).
    """

    def __init__(
        self,
        path: str | Path | Sequence[str | Path],
        img_size: int = 416,
        batch_size: int = 16,
        augment: bool = False,
        hyp: dict | None = None,
        rect: bool = False,
        cache_images: bool = False,
        single_cls: bool = False,
        nc: int | None = None,
        pad: float = 0.0,
        seed: int = 0,
        verbose: bool = True,
        ram_cache_mb: float = 1024,
        threads: int | None = None,
        reduced_decode: bool = False,
        cache_check: str = "mtime",
    ) -> None:
        _check_arguments(img_size, batch_size, seed, ram_cache_mb, threads)
        self.threads = _default_threads() if threads is None else int(threads)
        self.hyp = dict(DEFAULT_HYP if hyp is None else hyp)
        missing_keys = [k for k in AUGMENT_KEYS if k not in self.hyp]
        if augment and missing_keys:
            raise ValueError(f"hyp is missing augmentation keys {missing_keys} (fix: start from utils.hyp.DEFAULT_HYP)")
        self.img_size = int(img_size)
        self.augment = augment
        self.rect = rect
        self.mosaic = augment and not rect
        self.seed = int(seed)
        self.reduced_decode = bool(reduced_decode)
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()  # shared: see set_epoch

        self._open(scan_source(path, nc, cache_check), path, verbose, single_cls)
        self.batch = np.arange(self.n) // batch_size
        self.batch_shapes = None
        if rect:
            self._sort_by_aspect_ratio()
            self.batch, self.batch_shapes = rect_batch_shapes(self.shapes, batch_size, self.img_size, pad)

        self.imgs: list | None = None
        self.ram_cache: SharedImageCache | None = None
        if cache_images:
            self._cache_images(verbose)
        elif ram_cache_mb > 0:
            self._make_ram_cache(ram_cache_mb)

    def _open(self, scan: DatasetScan, path: object, verbose: bool, single_cls: bool) -> None:
        """Take the images, labels and sizes of ``scan``, printing its summary; refuse a set with any problem."""
        if verbose and scan.img_files:
            print(scan.summary())
        if scan.problems:
            raise DatasetError(problems_message(path, scan.problems, limit=MAX_LISTED), scan.problems)
        self.img_files, self.label_files = scan.img_files, scan.label_files
        self.report, self.missing_labels, self.cache_path = scan.report, scan.missing_labels, scan.cache_path
        labels = scan.labels
        if single_cls:
            labels = [np.concatenate((np.zeros_like(x[:, :1]), x[:, 1:]), 1) for x in labels]
        self.labels = labels
        self.shapes = scan.shapes
        self.orientation = scan.orientation
        self.n = len(self.img_files)

    def _sort_by_aspect_ratio(self) -> None:
        """Order the images by aspect ratio h/w, for rectangular batches.

        numpy's default sort, as the reference: ties between equal aspect ratios then fall as they did there (on
        the same numpy and CPU), which decides some images' letterbox shapes (README parity table)."""
        irect = (self.shapes[:, 1] / self.shapes[:, 0]).argsort()
        self.img_files = [self.img_files[i] for i in irect]
        self.label_files = [self.label_files[i] for i in irect]
        self.labels = [self.labels[i] for i in irect]
        self.shapes, self.orientation = self.shapes[irect], self.orientation[irect]

    def _cache_images(self, verbose: bool) -> None:
        r = self.img_size / self.shapes.max(1)
        nbytes = sum(int(w * ri) * int(h * ri) * 3 for (w, h), ri in zip(self.shapes, r))
        where = self.img_files[0] if self.n == 1 else f"{Path(self.img_files[0]).parent} ({self.n} images)"
        check_preload_fits(nbytes, self.n, where, mem_available())
        if verbose:
            print(f"Caching images ({nbytes / 1e9:.2f} GB)")
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            self.imgs = list(pool.map(self._read, range(self.n)))
        for img, *_ in self.imgs:
            img.flags.writeable = False  # items work in place on their own copies: a slip raises, never corrupts

    def _make_ram_cache(self, ram_cache_mb: float) -> None:
        budget = int(ram_cache_mb * 2**20)
        if os.path.isdir("/dev/shm"):  # the shared memory to spare: containers often make /dev/shm small
            budget = min(budget, shutil.disk_usage("/dev/shm").free // 2)
        shapes_hw = resized_shapes(self.shapes, self.img_size)
        if budget < shapes_hw[0].prod() * 3:
            LOGGER.debug("no RAM image cache: budget %d bytes", budget)
            return
        self.ram_cache = SharedImageCache(shapes_hw, budget)
        LOGGER.debug("RAM image cache: %d of %d images, %.1f MiB", (self.ram_cache.offsets >= 0).sum(), self.n,
                     self.ram_cache.nbytes / 2**20)

    def _read(self, index: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        w0, h0 = self.shapes[index]
        return load_image(self.img_files[index], self.img_size, self.augment, (int(h0), int(w0)),
                          int(self.orientation[index]), reduced=self.reduced_decode)

    def _cached(self, index: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]] | None:
        """``load_image``'s result for image ``index`` from ``imgs`` or the RAM cache (read-only), else None."""
        if self.imgs is not None:
            return self.imgs[index]
        return None if self.ram_cache is None else self.ram_cache.get(index)

    def _load(self, index: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """``load_image``'s result for image ``index``: cached, or decoded now (and then cached when it fits)."""
        hit = self._cached(index)
        if hit is not None:
            return hit
        out = self._read(index)
        if self.ram_cache is not None:
            self.ram_cache.put(index, out[0], out[1])
        return out

    @property
    def epoch(self) -> int:
        """The epoch whose augmentation draws items use (see ``set_epoch``)."""
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (call every epoch, before iterating).

        The value is in shared memory: DataLoader workers see it, persistent ones included, as long as it is set
        before the epoch's iterator is created (or, with persistent workers, before iterating it).
        """
        self._epoch.fill_(int(epoch))

    def batch_indices(self) -> list[list[int]]:
        """Item indices grouped by ``batch`` (the rectangular batches, in order, when ``rect``)."""
        nb = int(self.batch[-1]) + 1
        return [np.flatnonzero(self.batch == i).tolist() for i in range(nb)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, str, tuple | None]:
        return self._build([i], threads=1)[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor, str, tuple | None]]:
        """The items ``[self[i] for i in indices]`` (a DataLoader fetches a batch through this).

        Outside DataLoader workers (``num_workers=0``) the images are decoded on ``threads`` threads; the threads
        live for one call, so none is left running when a DataLoader later forks its workers. Workers decode on
        one thread: they already use the cores."""
        threads = 1 if torch.utils.data.get_worker_info() is not None else min(self.threads, len(indices))
        return self._build(indices, threads)

    def _build(self, indices: Sequence[int], threads: int) -> list[tuple]:
        """Items in three stages: (1) the images the items need, each read once: from a cache, else decoded on
        ``threads`` threads (decoding releases the GIL); (2) item by item, the random draws, mosaic or letterbox,
        affine and labels (small numpy arrays: GIL-bound, threads would contend); (3) item by item, HSV jitter,
        flip and the (3, h, w) RGB layout, in place on the item's own image. Running the HSV stage on threads too
        was measured slower on 2 cores: the second core reads images the first just wrote, and the two contend.
        Each item's draws come from its own generator in the same order as a one-by-one build, so items do not
        depend on ``threads`` or on the batch they are built in."""
        epoch = self.epoch
        plans = []
        for i in indices:
            rng = np.random.default_rng([self.seed, epoch, i]) if self.augment else None
            picks = [i, *rng.integers(0, self.n, 3).tolist()] if self.mosaic else [i]
            plans.append((i, rng, picks))
        loaded = {k: self._cached(k) for k in dict.fromkeys(k for *_, picks in plans for k in picks)}
        misses = [k for k, v in loaded.items() if v is None]
        if threads > 1 and len(misses) > 1:
            with ThreadPoolExecutor(min(threads, len(misses))) as pool:
                loaded.update(zip(misses, pool.map(self._load, misses)))
        else:
            loaded.update((k, self._load(k)) for k in misses)
        staged = [self._compose(index, rng, picks, [loaded[k] for k in picks]) for index, rng, picks in plans]
        return [self._finish(x) for x in staged]

    def _compose(self, index: int, rng: np.random.Generator | None, picks: list[int], images: list[tuple]) -> tuple:
        """Stage 2 of ``_build`` for one item: ``(img, labels_out, hsv gains or None, flip, path, shapes)``, where
        img is a new (h, w, 3) BGR array of this item's own (mosaic, letterbox and affine all return one)."""
        hyp = self.hyp
        if self.mosaic:
            img, labels = mosaic_affine(
                [im for im, *_ in images],
                [self.labels[k] for k in picks],
                self.img_size,
                degrees=hyp["degrees"],
                translate=hyp["translate"],
                scale=hyp["scale"],
                shear=hyp["shear"],
                rng=rng,
            )
            shapes = None
        else:
            img, (h0, w0), (h, w) = images[0]
            shape = tuple(self.batch_shapes[self.batch[index]]) if self.rect else self.img_size
            img, ratio, pad = letterbox(img, shape, auto=False, scaleup=self.augment)
            shapes = (h0, w0), ((h / h0, w / w0), pad)
            x = self.labels[index]
            labels = x.copy()
            labels[:, 1:] = xywhn2xyxy(x[:, 1:], ratio[0] * w, ratio[1] * h, pad[0], pad[1])
            if self.augment:
                img, labels = random_affine(
                    img,
                    labels,
                    degrees=hyp["degrees"],
                    translate=hyp["translate"],
                    scale=hyp["scale"],
                    shear=hyp["shear"],
                    rng=rng,
                )
        gains = hsv_gains(hyp["hsv_h"], hyp["hsv_s"], hyp["hsv_v"], rng) if self.augment else None

        height, width = img.shape[:2]
        labels_out = np.zeros((len(labels), 6), dtype=np.float32)
        labels_out[:, 1:] = labels
        labels_out[:, 2:] = xyxy2xywhn(labels[:, 1:5], width, height)
        flip = self.augment and rng.random() < 0.5
        if flip:  # left-right flip: x mirrored here, the pixels in stage 3 (bgr_to_chw_rgb)
            labels_out[:, 2] = 1 - labels_out[:, 2]
        return img, labels_out, gains, flip, self.img_files[index], shapes

    @staticmethod
    def _finish(staged: tuple) -> tuple[torch.Tensor, torch.Tensor, str, tuple | None]:
        """Stage 3 of ``_build`` for one item: HSV jitter and flip in place on its own image, then the layout."""
        img, labels_out, gains, flip, path, shapes = staged
        if gains is not None:
            apply_hsv(img, gains, dst=img)
        chw = bgr_to_chw_rgb(img, flip, inplace=gains is not None)
        return torch.from_numpy(chw), torch.from_numpy(labels_out), path, shapes

    @staticmethod
    def collate_fn(batch: list) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...], tuple]:
        """Stack items into ``(imgs (bs, 3, h, w) uint8, targets (n, 6) [image index, class, x, y, w, h], paths,
        shapes)``.

        In a DataLoader worker the images are stacked straight into shared memory (``share_memory_`` on a new
        tensor, as fast as the private allocator torch's default collate uses: 16 images at 416, min 4.6 vs 4.9 ms),
        so the batch goes to the main process by handle, not as a copy. The stack is numpy's, single threaded:
        ``torch.stack`` runs on torch's intra-op threads, and when those compete with other processes for the
        cores (workers, a busy machine) a 16-image stack was measured 60x slower (3 ms -> 170 ms).
        """
        imgs, labels, paths, shapes = zip(*batch)
        for i, lab in enumerate(labels):
            lab[:, 0] = i
        shape = (len(imgs), *imgs[0].shape)
        if torch.utils.data.get_worker_info() is not None:
            out = torch.empty(shape, dtype=imgs[0].dtype).share_memory_()
        else:  # numpy backs big arrays with huge pages: ~200 fewer page faults per batch than torch.empty
            out = torch.from_numpy(np.empty(shape, dtype=np.uint8))
        np.stack([x.numpy() for x in imgs], out=out.numpy())
        return out, torch.cat(labels, 0), paths, shapes


def worker_init(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: no OpenCV thread pool inside workers (they are the parallelism).

    Augmentation randomness needs no seeding here: it comes from per-item generators (see ``LoadImagesAndLabels``).
    """
    cv2.setNumThreads(0)


def resize_batch(imgs: torch.Tensor, img_size: int, gs: int = 32) -> torch.Tensor:
    """Multi-scale: resize a float batch (bs, 3, h, w) so its long side is ``img_size`` (each side rounded up to a
    multiple of ``gs``), bilinearly, on the batch's device. Targets are normalised, so they need no change.
    Returns ``imgs`` itself when the size does not change."""
    sf = img_size / max(imgs.shape[2:])
    ns = [math.ceil(x * sf / gs) * gs for x in imgs.shape[2:]]
    if ns == list(imgs.shape[2:]):
        return imgs
    return F.interpolate(imgs, size=ns, mode="bilinear", align_corners=False)


if __name__ == "__main__":
    from utils.data_check import main  # the command lives there; ``python -m utils.datasets check`` is its name

    sys.exit(main())

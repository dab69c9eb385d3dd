"""Datasets: image formats, items, the RAM image cache, workers, collate and the coco128 set."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from tests.dataset_helpers import GOOD, SIZES6, make_dataset
from utils.datasets import LoadImagesAndLabels, resize_batch, worker_init
from utils.image_cache import check_preload_fits, mem_available
from utils.images import bgr_to_chw_rgb, load_image


# ------------------------------------------------------------------------------------------- image formats
def test_special_images_load_as_3_channel_bgr(tmp_path):
    images = tmp_path / "images" / "train"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    cv2.imwrite(str(images / "deep.png"), rng.integers(0, 65535, (30, 40, 3), dtype=np.uint16))
    cv2.imwrite(str(images / "gray16.png"), rng.integers(0, 65535, (30, 40), dtype=np.uint16))
    cv2.imwrite(str(images / "alpha.png"), rng.integers(0, 255, (30, 40, 4), dtype=np.uint8))
    cv2.imwrite(str(images / "gray.jpg"), rng.integers(0, 255, (30, 40), dtype=np.uint8))
    pil = Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8))  # stored 40 wide, 30 high
    exif = pil.getexif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed: 30 wide, 40 high
    pil.save(images / "rotated.jpg", exif=exif.tobytes())

    ds = LoadImagesAndLabels(images, img_size=80, verbose=False)
    shapes = dict(zip((Path(f).name for f in ds.img_files), ds.shapes.tolist()))
    assert shapes == {"alpha.png": [40, 30], "deep.png": [40, 30], "gray.jpg": [40, 30], "gray16.png": [40, 30],
                      "rotated.jpg": [30, 40]}  # fmt: skip
    for f in ds.img_files:
        img, (h0, w0), (h, w) = load_image(f, 80)
        assert img.dtype == np.uint8 and img.shape == (h, w, 3)
        assert [w0, h0] == shapes[Path(f).name]
        assert max(h, w) == 80
    for i in range(len(ds)):
        img, _, _, shapes_i = ds[i]
        assert img.shape == (3, 80, 80) and img.dtype == torch.uint8


@pytest.mark.parametrize("img_size", [320, 160, 100, 64, 416])
def test_reduced_jpeg_decode_gives_the_plain_size(tmp_path, img_size):
    path = str(tmp_path / "x.jpg")
    cv2.imwrite(path, np.random.default_rng(0).integers(0, 255, (481, 641, 3), dtype=np.uint8))
    plain, hw0, hw = load_image(path, img_size)
    fast, hw0_fast, hw_fast = load_image(path, img_size, shape_hw0=(481, 641), orientation=1, reduced=True)
    assert (hw0, hw) == (hw0_fast, hw_fast) and plain.shape == fast.shape
    assert np.abs(plain.astype(int) - fast.astype(int)).mean() < 40  # same picture (random noise: loose)


def test_full_resolution_decode_by_default(tmp_path):
    """Without the opt-in, a JPEG shrunk 2x is decoded in full and resized (the reference's pixels), even when the
    dataset knows its original size and orientation."""
    path = str(tmp_path / "x.jpg")
    cv2.imwrite(path, np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8))
    full = cv2.resize(cv2.imread(path), (320, 240), interpolation=cv2.INTER_AREA)
    default, _, _ = load_image(path, 320, shape_hw0=(480, 640), orientation=1)
    reduced, _, _ = load_image(path, 320, shape_hw0=(480, 640), orientation=1, reduced=True)
    assert np.array_equal(default, full)
    assert not np.array_equal(reduced, full)


# ------------------------------------------------------------------------------------------- items
def test_item_letterbox_labels_and_shapes(tmp_path):
    images = make_dataset(tmp_path, {"a": "1 0.5 0.5 0.5 0.25\n"}, sizes={"a": (128, 64)})
    ds = LoadImagesAndLabels(images, img_size=64, nc=2, verbose=False)
    img, labels, path, shapes = ds[0]
    assert img.shape == (3, 64, 64) and path == str(images / "a.jpg")
    assert shapes == ((64, 128), ((0.5, 0.5), (0.0, 16.0)))
    # box 64x16 px in the 128x64 image -> 32x8 in the 64x32 resized image, padded 16 px top and bottom
    np.testing.assert_allclose(labels.numpy(), [[0, 1, 0.5, 0.5, 0.5, 0.125]], atol=1e-6)


def test_items_are_pure_functions_of_seed_epoch_index(tmp_path):
    images = make_dataset(tmp_path, dict.fromkeys("abcd", GOOD))
    kw = {"img_size": 64, "augment": True, "nc": 2, "verbose": False}
    ds1, ds2 = LoadImagesAndLabels(images, **kw), LoadImagesAndLabels(images, **kw)
    for i in (2, 0):
        a, b = ds1[i], ds2[i]
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    ds2.set_epoch(1)
    assert not torch.equal(ds1[0][0], ds2[0][0])
    assert not torch.equal(LoadImagesAndLabels(images, seed=1, **kw)[0][0], ds1[0][0])


def test_augmented_items_without_mosaic(tmp_path):
    images = make_dataset(tmp_path, dict.fromkeys("ab", GOOD))
    hyp = {"hsv_h": 0.01, "hsv_s": 0.5, "hsv_v": 0.3, "degrees": 5, "translate": 0.1, "scale": 0.1, "shear": 2}
    ds = LoadImagesAndLabels(images, img_size=64, batch_size=2, augment=True, hyp=hyp, rect=True, verbose=False)
    assert not ds.mosaic
    for i in range(2):
        img, labels, _, shapes = ds[i]
        assert tuple(img.shape[1:]) == tuple(ds.batch_shapes[0]) and shapes is not None
        assert ((labels[:, 2:] >= 0) & (labels[:, 2:] <= 1)).all()
    with pytest.raises(ValueError, match="missing augmentation keys"):
        LoadImagesAndLabels(images, img_size=64, augment=True, hyp={"hsv_h": 0.1}, verbose=False)


def test_rect_sorts_by_aspect_and_shapes_batches(tmp_path):
    sizes = {"a": (64, 32), "b": (32, 64), "c": (64, 64), "d": (60, 40)}
    images = make_dataset(tmp_path, dict.fromkeys(sizes, GOOD), sizes=sizes)
    ds = LoadImagesAndLabels(images, img_size=64, batch_size=2, rect=True, pad=0.5, verbose=False)
    assert [Path(f).stem for f in ds.img_files] == ["a", "d", "c", "b"]  # h/w ascending
    assert ds.batch.tolist() == [0, 0, 1, 1]
    assert ds.batch_indices() == [[0, 1], [2, 3]]
    # batch 0: ar max 40/60 -> (h, w) = ceil((2/3*64/32 + 0.5))*32, ceil(64/32 + 0.5)*32
    assert ds.batch_shapes.tolist() == [[64, 96], [96, 96]]
    imgs, targets, paths, shapes = LoadImagesAndLabels.collate_fn([ds[0], ds[1]])
    assert imgs.shape == (2, 3, 64, 96) and imgs.dtype == torch.uint8
    assert targets[:, 0].tolist() == [0, 0, 1, 1] and len(paths) == len(shapes) == 2


def test_resize_batch():
    imgs = torch.rand(2, 3, 64, 96)
    assert resize_batch(imgs, 96) is imgs
    assert resize_batch(imgs, 128).shape == (2, 3, 96, 128)
    assert resize_batch(imgs, 100).shape == (2, 3, 96, 128)  # sides rounded up to multiples of 32


def _assert_same_items(a: tuple, b: tuple) -> None:
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2:] == b[2:]


@pytest.mark.parametrize("kw", [{"augment": True}, {}, {"augment": True, "rect": True}])
def test_ram_cache_items_equal_uncached(tmp_path, kw):
    images = make_dataset(tmp_path, dict.fromkeys(SIZES6, GOOD), sizes=SIZES6)
    cached = LoadImagesAndLabels(images, img_size=64, batch_size=2, verbose=False, **kw)
    plain = LoadImagesAndLabels(images, img_size=64, batch_size=2, verbose=False, ram_cache_mb=0, **kw)
    assert plain.ram_cache is None and len(cached.ram_cache) == 0
    for epoch in (0, 1):  # epoch 0 fills the cache, epoch 1 reads it
        cached.set_epoch(epoch)
        plain.set_epoch(epoch)
        for i in range(len(plain)):
            _assert_same_items(cached[i], plain[i])
    assert len(cached.ram_cache) == 6
    img = cached.ram_cache.get(0)[0]
    assert not img.flags.writeable  # shared with other processes: nothing may draw on it


def test_ram_cache_respects_budget(tmp_path):
    images = make_dataset(tmp_path, dict.fromkeys(SIZES6, GOOD), sizes=SIZES6)
    ds = LoadImagesAndLabels(images, img_size=64, verbose=False, ram_cache_mb=30_000 / 2**20)  # 30 kB
    hw = ds.ram_cache.shapes_hw
    nbytes = hw.prod(1) * 3  # resized images: 64x48, 48x64, 64x48, 64x64, 64x25, 64x64
    assert hw.tolist()[:2] == [[48, 64], [64, 48]] and nbytes.tolist()[:2] == [9216, 9216]
    fits = int((np.cumsum(nbytes) <= 30_000).sum())  # images in index order while they fit: 3
    assert fits == 3 and (ds.ram_cache.offsets >= 0).sum() == fits
    assert ds.ram_cache.nbytes == nbytes[:fits].sum() <= 30_000
    assert ds.ram_cache._block.size <= 30_000  # the shared memory mapped
    for i in range(len(ds)):
        ds[i]
    assert len(ds.ram_cache) == fits
    assert LoadImagesAndLabels(images, img_size=64, verbose=False, ram_cache_mb=0.001).ram_cache is None
    with pytest.raises(ValueError, match="ram_cache_mb"):
        LoadImagesAndLabels(images, img_size=64, verbose=False, ram_cache_mb=-1)


def test_ram_cache_copy_is_its_own(tmp_path):
    """A plain deepcopy (not a worker start) gets its own memory and lock: what one copy caches, the other does
    not see; the images cached before the copy are in both."""
    images = make_dataset(tmp_path, dict.fromkeys(SIZES6, GOOD), sizes=SIZES6)
    ds = LoadImagesAndLabels(images, img_size=64, verbose=False)
    ds[0]
    twin = copy.deepcopy(ds)
    assert len(twin.ram_cache) == len(ds.ram_cache) == 1
    assert np.array_equal(twin.ram_cache.get(0)[0], ds.ram_cache.get(0)[0])
    assert not np.shares_memory(twin.ram_cache.get(0)[0], ds.ram_cache.get(0)[0])
    twin[1]
    assert len(twin.ram_cache) == 2 and len(ds.ram_cache) == 1
    _assert_same_items(twin[1], ds[1])


def test_set_epoch_reaches_persistent_workers_and_workers_fill_the_shared_cache(tmp_path):
    images = make_dataset(tmp_path, dict.fromkeys(SIZES6, GOOD), sizes=SIZES6)
    ds = LoadImagesAndLabels(images, img_size=64, augment=True, verbose=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, persistent_workers=True,
                                         collate_fn=LoadImagesAndLabels.collate_fn, worker_init_fn=worker_init)
    firsts = []
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        batches = list(loader)
        expected = [LoadImagesAndLabels.collate_fn([ds[i], ds[i + 1]]) for i in range(0, 6, 2)]
        for got, want in zip(batches, expected):
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]) and got[2] == want[2]
        firsts.append(batches[0][0])
    assert not torch.equal(*firsts)  # the epochs differ, so the workers did switch to epoch 1
    assert len(ds.ram_cache) == 6  # written by the workers, seen here


@pytest.mark.parametrize("rect", [False, True])
def test_batch_build_equals_one_by_one_and_leaves_cached_images_alone(tmp_path, rect):
    """A batch (built in stages, HSV and flip in place) gives the items one-by-one calls give, in mosaic and in
    rect mode, and never writes into the cached images it composes from (they are read-only)."""
    images = make_dataset(tmp_path, dict.fromkeys(SIZES6, GOOD), sizes=SIZES6)
    ds = LoadImagesAndLabels(images, img_size=64, batch_size=3, augment=True, rect=rect, verbose=False,
                             cache_images=True, seed=5)
    before = [img.copy() for img, *_ in ds.imgs]
    assert not any(img.flags.writeable for img, *_ in ds.imgs)
    ds.set_epoch(2)
    batch = ds.__getitems__([4, 1, 2, 1])
    for got, i in zip(batch, [4, 1, 2, 1]):
        _assert_same_items(got, ds[i])
    assert all(np.array_equal(a, b) for a, b in zip(before, (img for img, *_ in ds.imgs)))


def test_threads(tmp_path):
    images = make_dataset(tmp_path, dict.fromkeys(SIZES6, GOOD), sizes=SIZES6)
    one = LoadImagesAndLabels(images, img_size=64, augment=True, verbose=False, threads=1)
    two = LoadImagesAndLabels(images, img_size=64, augment=True, verbose=False, threads=2, ram_cache_mb=0)
    for a, b in zip(one.__getitems__([5, 0, 3, 3]), two.__getitems__([5, 0, 3, 3])):
        _assert_same_items(a, b)
    with pytest.raises(ValueError, match="threads"):
        LoadImagesAndLabels(images, img_size=64, verbose=False, threads=0)


def test_bgr_to_chw_rgb_and_collate():
    img = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(bgr_to_chw_rgb(img), img[:, :, ::-1].transpose(2, 0, 1))
    np.testing.assert_array_equal(bgr_to_chw_rgb(img, flip=True), img[:, ::-1, ::-1].transpose(2, 0, 1))
    own = img.copy()
    np.testing.assert_array_equal(bgr_to_chw_rgb(own, flip=True, inplace=True), img[:, ::-1, ::-1].transpose(2, 0, 1))
    items = [(torch.from_numpy(bgr_to_chw_rgb(img)), torch.ones((k, 6)), f"p{k}", None) for k in (2, 0, 1)]
    imgs, targets, paths, shapes = LoadImagesAndLabels.collate_fn(items)
    assert imgs.shape == (3, 3, 5, 7) and imgs.dtype == torch.uint8 and torch.equal(imgs[1], items[1][0])
    assert targets[:, 0].tolist() == [0, 0, 2] and paths == ("p2", "p0", "p1") and shapes == (None,) * 3


@pytest.mark.slow
def test_spawned_workers_share_the_cache_and_epoch(tmp_path):
    images = make_dataset(tmp_path, dict.fromkeys(SIZES6, GOOD), sizes=SIZES6)
    ds = LoadImagesAndLabels(images, img_size=64, augment=True, verbose=False)
    ds.set_epoch(3)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=1, multiprocessing_context="spawn",
                                         collate_fn=LoadImagesAndLabels.collate_fn)
    got = list(loader)
    assert len(ds.ram_cache) == 6
    for b, start in zip(got, (0, 3)):
        want = LoadImagesAndLabels.collate_fn([ds[i] for i in range(start, start + 3)])
        assert torch.equal(b[0], want[0]) and torch.equal(b[1], want[1])


# ------------------------------------------------------------------------------------------- coco128
def test_coco128_report_and_grayscale(coco128_dir):
    ds = LoadImagesAndLabels(coco128_dir / "images" / "train2017", img_size=320, nc=80, verbose=False)
    assert ds.n == 128 and len(ds.img_files) == 128
    assert ds.report == {"found": 126, "missing": 2, "empty": 0, "duplicate": 0, "corrupt": 0}
    assert sum(len(x) for x in ds.labels) == 929
    gray = str(coco128_dir / "images" / "train2017" / "000000000086.jpg")
    img, (h0, w0), (h, w) = load_image(gray, 320)
    assert img.shape == (h, w, 3) and max(h, w) == 320
    assert list(ds.shapes[ds.img_files.index(gray)]) == [w0, h0]


def test_coco128_mosaic_batch(coco128_dir):
    ds = LoadImagesAndLabels(coco128_dir / "images" / "train2017", img_size=320, augment=True, nc=80, verbose=False)
    imgs, targets, paths, shapes = LoadImagesAndLabels.collate_fn([ds[i] for i in range(8)])
    assert imgs.shape == (8, 3, 320, 320) and imgs.dtype == torch.uint8
    assert targets.shape[1] == 6 and len(targets) > 0 and shapes == (None,) * 8
    assert set(targets[:, 0].long().tolist()) <= set(range(8))
    xywh = targets[:, 2:]
    assert (xywh >= 0).all() and (xywh <= 1).all() and (xywh[:, 2:] > 0).all()
    assert (xywh[:, :2] - xywh[:, 2:] / 2 >= -1e-6).all() and (xywh[:, :2] + xywh[:, 2:] / 2 <= 1 + 1e-6).all()


def test_coco128_corrupted_copies(coco128_dir, tmp_path):
    """Real files copied to tmp_path, then broken: a bad label row and an image that is not a JPEG."""
    stems = ["000000000009", "000000000025", "000000000030"]
    images, labels = tmp_path / "images" / "train2017", tmp_path / "labels" / "train2017"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for s in stems:
        shutil.copy(coco128_dir / "images" / "train2017" / f"{s}.jpg", images)
        shutil.copy(coco128_dir / "labels" / "train2017" / f"{s}.txt", labels)
    assert LoadImagesAndLabels(images, img_size=320, nc=80, verbose=False).report["found"] == 3
    rows = (labels / f"{stems[1]}.txt").read_text().splitlines()
    rows[1] = "80" + rows[1][rows[1].index(" ") :]
    (labels / f"{stems[1]}.txt").write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=rf"{stems[1]}.txt:2: class 80 outside \[0, nc=80\)"):
        LoadImagesAndLabels(images, img_size=320, nc=80, verbose=False)
    shutil.copy(coco128_dir / "labels" / "train2017" / f"{stems[1]}.txt", labels)
    (images / f"{stems[2]}.jpg").write_bytes((coco128_dir / "labels" / "train2017" / f"{stems[2]}.txt").read_bytes())
    with pytest.raises(ValueError, match=rf"(?s)1 problem .*image cannot be read or decoded.*{stems[2]}.jpg"):
        LoadImagesAndLabels(images, img_size=320, nc=80, verbose=False)




def test_cache_images_is_refused_when_it_would_not_fit_in_memory(tmp_path):
    """--cache-images on a set whose decoded images exceed half the available memory stops at the start with the
    numbers and the fix, instead of an out-of-memory kill later; unknown available memory checks nothing."""

    check_preload_fits(10 * 2**30, 200_000, "big/images", None)  # unknown: no check
    check_preload_fits(2**30, 1000, "small/images", 4 * 2**30)
    with pytest.raises(ValueError, match=r"big/images: --cache-images would keep 200,000 decoded images, 70\.0 GiB.*"
                                         r"only 16\.0 GiB is available.*Drop --cache-images"):
        check_preload_fits(70 * 2**30, 200_000, "big/images", 16 * 2**30)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:   16000000 kB\n")
    assert mem_available(meminfo) == 16_000_000 * 1024 and mem_available(tmp_path / "absent") is None

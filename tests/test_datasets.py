"""Datasets: image lists, label validation and its messages, the label cache, image formats, items and .data files."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from utils.datasets import (
    MAX_LISTED,
    DatasetError,
    LoadImagesAndLabels,
    augmentation_drops,
    bgr_to_chw_rgb,
    cache_key,
    img2label_paths,
    list_image_files,
    load_image,
    main,
    resize_batch,
    resolve_data_cfg,
    worker_init,
)


def make_dataset(root: Path, labels: dict[str, str | None], sizes: dict[str, tuple[int, int]] | None = None) -> Path:
    """Write ``root/images/train/<name>.jpg`` (random pixels, default 64x48) and the given label file texts.

    ``labels`` maps an image stem to its label text (None: no label file). Returns the images folder.
    """
    images, label_dir = root / "images" / "train", root / "labels" / "train"
    images.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for stem, text in labels.items():
        w, h = (sizes or {}).get(stem, (64, 48))
        cv2.imwrite(str(images / f"{stem}.jpg"), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        if text is not None:
            (label_dir / f"{stem}.txt").write_text(text)
    return images


GOOD = "0 0.5 0.5 0.2 0.3\n1 0.25 0.25 0.1 0.1\n"


# ------------------------------------------------------------------------------------------- image lists
def test_list_image_files_sources(tmp_path):
    images = make_dataset(tmp_path, {"b": GOOD, "a": GOOD, "c": None})
    (images / "notes.md").write_text("not an image")
    expected = [str(images / f"{s}.jpg") for s in "abc"]
    assert list_image_files(images) == expected
    assert list_image_files(str(images / "*.jpg")) == expected
    listing = tmp_path / "list.txt"
    listing.write_text("images/train/c.jpg\n\nimages/train/a.jpg\n" + str(images / "a.jpg") + "\n")
    assert list_image_files(listing) == [expected[0], expected[2]]  # relative to the .txt, de-duplicated
    assert list_image_files([listing, images / "b.jpg"]) == expected
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_image_files(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        list_image_files(tmp_path / "empty")


def test_img2label_paths_replaces_last_images_folder():
    assert img2label_paths(["/d/images/x/images/train/a.b.jpg"]) == ["/d/images/x/labels/train/a.b.txt"]
    assert img2label_paths(["/d/pics/a.png"]) == ["/d/pics/a.txt"]


# ------------------------------------------------------------------------------------------- validation
def test_report_counts_missing_empty_duplicate(tmp_path, caplog, capsys):
    images = make_dataset(tmp_path, {"a": GOOD, "b": None, "c": "\n", "d": GOOD + "0 0.5 0.5 0.2 0.3\n"})
    with caplog.at_level(logging.WARNING):
        ds = LoadImagesAndLabels(images, img_size=64, nc=2)
    assert ds.report == {"found": 2, "missing": 1, "empty": 1, "duplicate": 1, "corrupt": 0}
    assert "d.txt" in caplog.text and "duplicate" in caplog.text
    assert [len(x) for x in ds.labels] == [2, 0, 0, 2]
    assert ds.labels[0].dtype == np.float32 and ds.labels[0].shape == (2, 5)
    assert ds.shapes.tolist() == [[64, 48]] * 4
    out = capsys.readouterr().out
    assert "(2 found, 1 missing, 1 empty, 1 duplicate, 0 corrupt)" in out


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("0 0.5 0.5 0.2", "4 columns"),
        ("0 0.5 0.5 0.2 0.3 0.9", "6 columns"),
        ("0 0.5 abc 0.2 0.3", "y_center 'abc' is not a number"),
        ("3 0.5 0.5 0.2 0.3", r"class 3 outside \[0, nc=3\)"),
        ("-1 0.5 0.5 0.2 0.3", "class '-1' must be an integer >= 0"),
        ("1.5 0.5 0.5 0.2 0.3", "class '1.5' must be an integer"),
        ("0 1.2 0.5 0.2 0.3", r"x_center 1.2 outside \[0, 1\]"),
        ("0 0.5 0.5 -0.2 0.3", r"width -0.2 outside \[0, 1\]"),
        ("0 0.5 0.5 0.2 0", "height 0 must be > 0"),
        ("0 0.5 nan 0.2 0.3", "y_center nan outside"),
    ],
)
def test_bad_label_line_names_file_and_line(tmp_path, line, match):
    images = make_dataset(tmp_path, {"a": GOOD, "b": GOOD + "\n" + line + "\n"})
    label_file = tmp_path / "labels" / "train" / "b.txt"
    with pytest.raises(ValueError, match=match) as e:
        LoadImagesAndLabels(images, img_size=64, nc=3, verbose=False)
    assert f"{label_file}:4:" in str(e.value)  # the bad row is on line 4 (after 2 rows and a blank line)
    assert "fix" in str(e.value)


def test_class_range_checked_only_with_nc(tmp_path):
    images = make_dataset(tmp_path, {"a": "7 0.5 0.5 0.2 0.3\n"})
    assert LoadImagesAndLabels(images, img_size=64, verbose=False).labels[0][0, 0] == 7
    single = LoadImagesAndLabels(images, img_size=64, single_cls=True, verbose=False)
    assert single.labels[0][0, 0] == 0


def test_undecodable_image_names_file(tmp_path, capsys):
    images = make_dataset(tmp_path, {"a": GOOD, "b": GOOD})
    (images / "b.jpg").write_bytes(b"\xff\xd8 this is not a jpeg" * 10)
    with pytest.raises(ValueError, match="cannot be read or decoded") as e:
        LoadImagesAndLabels(images, img_size=64, nc=2)
    assert str(images / "b.jpg") in str(e.value)
    assert "1 corrupt" in capsys.readouterr().out
    assert not (tmp_path / "labels" / "train.cache").exists()  # a failed scan is not cached


def test_cache_written_reused_and_invalidated(tmp_path, capsys):
    images = make_dataset(tmp_path, {"a": GOOD, "b": "2 0.5 0.5 0.5 0.5\n"})
    cache = tmp_path / "labels" / "train.cache"
    first = LoadImagesAndLabels(images, img_size=64, nc=3)
    assert cache.is_file() and "from cache" not in capsys.readouterr().out
    second = LoadImagesAndLabels(images, img_size=64, nc=3)
    assert "from cache" in capsys.readouterr().out
    for x, y in zip(first.labels, second.labels):
        np.testing.assert_array_equal(x, y)
    assert second.shapes.tolist() == first.shapes.tolist() and second.report == first.report

    (tmp_path / "labels" / "train" / "b.txt").write_text("1 0.4 0.4 0.2 0.2\n0 0.1 0.1 0.1 0.1\n")
    third = LoadImagesAndLabels(images, img_size=64, nc=3)
    assert "from cache" not in capsys.readouterr().out
    np.testing.assert_allclose(third.labels[1], [[1, 0.4, 0.4, 0.2, 0.2], [0, 0.1, 0.1, 0.1, 0.1]])

    os.remove(tmp_path / "labels" / "train" / "a.txt")  # a label file disappearing also invalidates
    assert LoadImagesAndLabels(images, img_size=64, nc=3, verbose=False).report["missing"] == 1


def test_corrupt_cache_file_is_rebuilt(tmp_path):
    images = make_dataset(tmp_path, {"a": GOOD})
    (tmp_path / "labels" / "train.cache").write_bytes(b"garbage")
    ds = LoadImagesAndLabels(images, img_size=64, nc=3, verbose=False)
    assert ds.report["found"] == 1


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


SIZES6 = {"a": (64, 48), "b": (48, 64), "c": (80, 60), "d": (64, 64), "e": (100, 40), "f": (50, 50)}


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
    assert ds.ram_cache._data.untyped_storage().nbytes() <= 30_000
    for i in range(len(ds)):
        ds[i]
    assert len(ds.ram_cache) == fits
    assert LoadImagesAndLabels(images, img_size=64, verbose=False, ram_cache_mb=0.001).ram_cache is None
    with pytest.raises(ValueError, match="ram_cache_mb"):
        LoadImagesAndLabels(images, img_size=64, verbose=False, ram_cache_mb=-1)


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


def test_threads_and_indices(tmp_path):
    images = make_dataset(tmp_path, dict.fromkeys(SIZES6, GOOD), sizes=SIZES6)
    one = LoadImagesAndLabels(images, img_size=64, augment=True, verbose=False, threads=1)
    two = LoadImagesAndLabels(images, img_size=64, augment=True, verbose=False, threads=2, ram_cache_mb=0)
    for a, b in zip(one.__getitems__([5, 0, 3, 3]), two.__getitems__([5, 0, 3, 3])):
        _assert_same_items(a, b)
    with pytest.raises(ValueError, match="threads"):
        LoadImagesAndLabels(images, img_size=64, verbose=False, threads=0)
    one.image_weights = True
    one.indices = [5, 5, 5, 0, 0, 0]
    assert one.indices.tolist() == [5, 5, 5, 0, 0, 0] and one[1][2] == one.img_files[5]
    with pytest.raises(ValueError, match="indices"):
        one.indices = [0, 6, 0, 0, 0, 0]


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


# ------------------------------------------------------------------------------------------- .data files
def _write_data(folder: Path, train: str, names: str = "a\nb\n", classes: int = 2) -> Path:
    (folder / "x.names").write_text(names)
    data = folder / "x.data"
    data.write_text(f"# test\nclasses={classes}\ntrain={train}\nvalid={train}\nnames=x.names\n")
    return data


def test_resolve_data_cfg_relative_to_data_then_cwd(tmp_path, monkeypatch):
    images = make_dataset(tmp_path / "ds", {"a": GOOD})
    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    (cfg_dir / "ds").symlink_to(tmp_path / "ds")
    cfg = resolve_data_cfg(_write_data(cfg_dir, "ds/images/train"))
    assert cfg["classes"] == 2 and cfg["names"] == ["a", "b"]
    assert cfg["train"] == str(cfg_dir / "ds" / "images" / "train") == cfg["valid"]
    monkeypatch.chdir(tmp_path)  # not beside the .data file: found from the working directory
    data = _write_data(cfg_dir, "ds/images/train,ds/images/train/a.jpg")
    (cfg_dir / "ds").unlink()
    cfg = resolve_data_cfg(data)
    assert cfg["train"] == [str(images), str(images / "a.jpg")]


def test_resolve_data_cfg_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        resolve_data_cfg(_write_data(tmp_path, "missing/images"))
    assert str(tmp_path / "missing" / "images") in str(e.value) and str(Path.cwd() / "missing") in str(e.value)
    make_dataset(tmp_path, {"a": GOOD})
    with pytest.raises(ValueError, match="x.names: 1 names but .* classes=2"):
        resolve_data_cfg(_write_data(tmp_path, "images/train", names="only\n"))


def test_check_cli(tmp_path, capsys):
    make_dataset(tmp_path, {"a": GOOD, "b": None})
    png = tmp_path / "labels.png"
    assert main(["check", str(_write_data(tmp_path, "images/train")), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "1 found, 1 missing" in out and "all" in out and png.is_file()
    assert "train: 2 images, 2 boxes" in out and "valid: the train set" in out and "no problems" in out
    (tmp_path / "labels" / "train" / "b.txt").write_text("5 0.5 0.5 0.1 0.1\n")
    assert main(["check", str(tmp_path / "x.data")]) == 1
    captured = capsys.readouterr()
    assert f"{tmp_path / 'labels' / 'train' / 'b.txt'}:1: class 5 outside" in captured.out
    assert "1 problem in" in captured.err and "Traceback" not in captured.err


# ------------------------------------------------------------------------------------------- image lists (issue 14)
def _ultralytics_repo(root: Path, stems: str = "xyz") -> Path:
    """A repository root holding a custom set written the ultralytics way: ``data/custom/images/*.jpg``, labels
    beside them, ``data/custom/train.txt`` with entries relative to the repository root and ``data/custom.data``."""
    make_dataset(root / "data" / "custom", dict.fromkeys(stems, GOOD))
    for split in ("images", "labels"):  # the ultralytics tutorial layout has no train/ subfolder
        for f in (root / "data" / "custom" / split / "train").iterdir():
            f.rename(root / "data" / "custom" / split / f.name)
        (root / "data" / "custom" / split / "train").rmdir()
    (root / "data" / "custom" / "train.txt").write_text("".join(f"data/custom/images/{s}.jpg\n" for s in stems))
    (root / "data" / "custom.names").write_text("a\nb\n")
    data = root / "data" / "custom.data"
    data.write_text("classes=2\ntrain=data/custom/train.txt\nvalid=data/custom/train.txt\nnames=data/custom.names\n")
    return data


def test_ultralytics_list_relative_to_working_directory_opens(tmp_path, monkeypatch, capsys):
    """Issue 14: entries like data/custom/images/x.jpg in data/custom/train.txt, used from the repository root, are
    found (the old code looked in data/custom/data/custom/images and called every image corrupt)."""
    _ultralytics_repo(tmp_path)
    monkeypatch.chdir(tmp_path)
    ds = LoadImagesAndLabels("data/custom/train.txt", img_size=64, nc=2)
    assert ds.img_files == [str(tmp_path / "data" / "custom" / "images" / f"{s}.jpg") for s in "xyz"]
    assert ds.report["found"] == 3 and len(ds[0][1]) == 2
    assert main(["check", "data/custom.data"]) == 0
    assert "train: 3 images, 6 boxes" in capsys.readouterr().out


def test_list_entries_cwd_first_then_list_folder_and_dot_prefix(tmp_path, monkeypatch):
    images = make_dataset(tmp_path / "set", dict.fromkeys("ab", GOOD))
    listing = tmp_path / "set" / "list.txt"
    listing.write_text("images/train/a.jpg\n./images/train/b.jpg\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert list_image_files(listing) == [str(images / "a.jpg"), str(images / "b.jpg")]  # found beside the list
    decoys = make_dataset(elsewhere, dict.fromkeys("ab", GOOD))  # the same relative paths under the cwd
    assert list_image_files(listing) == [str(decoys / "a.jpg"), str(images / "b.jpg")]  # cwd first; ./ list first
    assert list_image_files(listing, cwd=tmp_path) == [str(images / "a.jpg"), str(images / "b.jpg")]


def test_list_entry_found_nowhere_names_list_line_and_both_places(tmp_path, monkeypatch):
    make_dataset(tmp_path / "set", {"a": GOOD})
    listing = tmp_path / "set" / "train.txt"
    listing.write_text("images/train/a.jpg\n\nimages/train/gone.jpg\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as e:
        LoadImagesAndLabels(listing, img_size=64, nc=2, verbose=False)
    msg = str(e.value)
    assert f"{listing}:3: image images/train/gone.jpg not found" in msg
    assert str(tmp_path / "images" / "train" / "gone.jpg") in msg  # the working directory
    assert str(tmp_path / "set" / "images" / "train" / "gone.jpg") in msg  # the list's folder
    assert "cannot be read or decoded" not in msg
    with pytest.raises(FileNotFoundError, match="1 image list entry not found"):
        list_image_files(listing)


# ------------------------------------------------------------------------------------------- every problem at once
def _bad_set(root: Path) -> Path:
    """Three bad rows of two kinds in two files, an undecodable image, a missing label file; returns the .data."""
    images = make_dataset(root, {"a": "5 0.5 0.5 0.2 0.2\n", "b": GOOD + "0 abc 0.5 0.2 0.2\n9 0.5 0.5 0.1 0.1\n",
                                 "c": GOOD, "d": None})  # fmt: skip
    (images / "c.jpg").write_bytes(b"not an image")
    return _write_data(root, "images/train")


def test_check_reports_every_problem_grouped_by_kind(tmp_path, capsys):
    data = _bad_set(tmp_path)
    labels = tmp_path / "labels" / "train"
    assert main(["check", str(data)]) == 1
    captured = capsys.readouterr()
    out = captured.out
    assert "class outside [0, nc): 2" in out and "value not a number: 1" in out
    assert "image cannot be read or decoded: 1" in out
    for where in (f"{labels / 'a.txt'}:1: class 5", f"{labels / 'b.txt'}:3: x_center 'abc'",
                  f"{labels / 'b.txt'}:4: class 9", f"{tmp_path / 'images' / 'train' / 'c.jpg'}: image cannot"):
        assert where in out
    assert "4 problems in" in captured.err
    assert f"no label file (trained as images without boxes): {labels / 'd.txt'}" in out


def test_check_lists_the_first_few_per_kind_then_a_count(tmp_path, capsys):
    make_dataset(tmp_path, {"a": "".join(f"{c} 0.5 0.5 0.1 0.1\n" for c in range(3, 11))})
    assert main(["check", str(_write_data(tmp_path, "images/train")), "--per-kind", "3"]) == 1
    out = capsys.readouterr().out
    assert "class outside [0, nc): 8" in out and "... and 5 more" in out
    assert ":3: class 5 outside" in out and ":4: class 6" not in out


def test_opening_names_up_to_max_listed_problems_in_one_error(tmp_path):
    make_dataset(tmp_path, {"a": "".join(f"{c} 0.5 0.5 0.1 0.1\n" for c in range(2, 17)), "b": "0 2 0.5 0.1 0.1\n"})
    with pytest.raises(DatasetError) as e:
        LoadImagesAndLabels(tmp_path / "images" / "train", img_size=64, nc=2, verbose=False)
    assert len(e.value.problems) == 16
    msg = str(e.value)
    assert "16 problems" in msg and "class outside [0, nc): 15" in msg and "coordinate outside [0, 1]: 1" in msg
    assert msg.count("class") >= MAX_LISTED and ":10: class 11" in msg and ":11: class 12" not in msg
    assert "... and 5 more" in msg and "utils.datasets check" in msg


def test_missing_label_files_are_named_in_the_summary(tmp_path, capsys):
    stems = [f"m{i}" for i in range(8)]
    make_dataset(tmp_path, {"a": GOOD, **dict.fromkeys(stems)})
    labels = tmp_path / "labels" / "train"
    for _ in range(2):  # the second time from the cache: the names still come
        ds = LoadImagesAndLabels(tmp_path / "images" / "train", img_size=64, nc=2)
        out = capsys.readouterr().out
        assert ds.missing_labels == [str(labels / f"{s}.txt") for s in stems]
        assert f"{labels / 'm0.txt'}, {labels / 'm1.txt'}" in out and "m4.txt and 3 more" in out
    assert "from cache" in out


def test_augmentation_drops_counts_boxes_too_small_at_the_image_size():
    labels = [np.array([[0, 0.5, 0.5, 0.01, 0.5], [0, 0.5, 0.5, 0.5, 0.5], [0, 0.5, 0.5, 0.9, 0.08]], np.float32)]
    # 640x480 image at 416: widths 4.2, 208, 374 px, heights 156, 156, 18.7 px; the first is 4.2 > 4 px kept
    # by size but its aspect ratio 37 is not, the third's is 20: both dropped
    assert augmentation_drops(labels, np.array([[640, 480]]), 416) == 2
    assert augmentation_drops(labels, np.array([[640, 480]]), 64) == 2  # the second: 32 x 24 px
    assert augmentation_drops(labels, np.array([[640, 480]]), 10) == 3  # the second: 5 x 3.75 px
    assert augmentation_drops(labels, np.array([[0, 0]]), 416) == 0  # an undecodable image: reported elsewhere


# ------------------------------------------------------------------------------------------- label cache (issue 14)
def test_train_and_valid_lists_sharing_a_labels_folder_keep_two_caches(tmp_path, capsys):
    make_dataset(tmp_path, dict.fromkeys("abcd", GOOD))
    train_list, valid_list = tmp_path / "train.txt", tmp_path / "valid.txt"
    train_list.write_text("./images/train/a.jpg\n./images/train/b.jpg\n./images/train/c.jpg\n")
    valid_list.write_text("./images/train/d.jpg\n")
    for _ in range(2):
        LoadImagesAndLabels(train_list, img_size=64, nc=2)
        LoadImagesAndLabels(valid_list, img_size=64, nc=2)
    out = capsys.readouterr().out.splitlines()
    assert [line.endswith("(from cache)") for line in out] == [False, False, True, True]
    assert (tmp_path / "train.cache").is_file() and (tmp_path / "valid.cache").is_file()
    assert not (tmp_path / "labels" / "train.cache").exists()


def test_two_sources_of_one_labels_folder_get_two_cache_files(tmp_path):
    images = make_dataset(tmp_path, dict.fromkeys("abc", GOOD))
    one = LoadImagesAndLabels([images / "a.jpg", images / "b.jpg"], img_size=64, nc=2, verbose=False)
    two = LoadImagesAndLabels(str(images / "c.*"), img_size=64, nc=2, verbose=False)
    assert one.cache_path != two.cache_path and one.cache_path.parent == two.cache_path.parent == tmp_path / "labels"
    assert one.cache_path.is_file() and two.cache_path.is_file()


def _valid_cache_bytes(tmp_path: Path) -> tuple[Path, bytes]:
    make_dataset(tmp_path, {"a": GOOD, "b": "1 0.3 0.3 0.2 0.2\n"})
    cache = tmp_path / "labels" / "train.cache"
    LoadImagesAndLabels(tmp_path / "images" / "train", img_size=64, nc=2, verbose=False)
    return cache, cache.read_bytes()


@pytest.mark.parametrize("damage", ["empty", "truncated", "random", "bitflip", "directory"])
def test_unreadable_cache_is_rebuilt_with_one_warning_naming_it(tmp_path, caplog, capsys, damage):
    cache, good = _valid_cache_bytes(tmp_path)
    if damage == "directory":
        cache.unlink()
        cache.mkdir()
    else:
        bad = {"empty": b"", "truncated": good[: len(good) // 2], "random": os.urandom(len(good))}.get(damage)
        if bad is None:  # flip one byte inside the stored labels array
            i = good.index(np.float32(0.3).tobytes())
            bad = good[:i] + bytes([good[i] ^ 0xFF]) + good[i + 1 :]
        cache.write_bytes(bad)
    with caplog.at_level(logging.WARNING, logger="utils.datasets"):
        ds = LoadImagesAndLabels(tmp_path / "images" / "train", img_size=64, nc=2)
    records = [r for r in caplog.records if "label cache" in r.getMessage()]
    assert len(records) == 1 and str(cache) in records[0].getMessage() and "rebuilding" in records[0].getMessage()
    assert "\n" not in records[0].getMessage()
    assert "from cache" not in capsys.readouterr().out
    np.testing.assert_allclose(ds.labels[1], [[1, 0.3, 0.3, 0.2, 0.2]])
    if damage != "directory":
        assert cache.read_bytes() == good  # rebuilt: the same bytes as the first build


def test_cache_write_is_fsynced_before_the_rename_and_atomic(tmp_path, monkeypatch):
    make_dataset(tmp_path, {"a": GOOD})
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(b))), real_replace(a, b)))
    LoadImagesAndLabels(tmp_path / "images" / "train", img_size=64, nc=2, verbose=False)
    cache = tmp_path / "labels" / "train.cache"
    kinds = [e[0] for e in events]
    assert kinds == ["fsync", "replace", "fsync"], events
    assert events[0][1].endswith(".tmp") and events[1][1] == str(cache) and events[2][1] == str(cache.parent)
    before = cache.read_bytes()

    def fail(a, b):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    (tmp_path / "labels" / "train" / "a.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    LoadImagesAndLabels(tmp_path / "images" / "train", img_size=64, nc=2, verbose=False)
    assert cache.read_bytes() == before and sorted(p.name for p in cache.parent.iterdir()) == ["train", "train.cache"]


def test_content_cache_check_sees_an_edit_that_keeps_size_and_mtime(tmp_path, capsys):
    make_dataset(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n"})
    label = tmp_path / "labels" / "train" / "a.txt"
    images = tmp_path / "images" / "train"
    LoadImagesAndLabels(images, img_size=64, nc=2, verbose=False)
    st = label.stat()
    label.write_text("1 0.5 0.5 0.2 0.2\n")  # same size
    os.utime(label, ns=(st.st_atime_ns, st.st_mtime_ns))  # what some label tools do
    stale = LoadImagesAndLabels(images, img_size=64, nc=2, cache_check="mtime")
    assert "from cache" in capsys.readouterr().out and stale.labels[0][0, 0] == 0  # the limit of the default key
    fresh = LoadImagesAndLabels(images, img_size=64, nc=2, cache_check="content")
    assert "from cache" not in capsys.readouterr().out and fresh.labels[0][0, 0] == 1
    again = LoadImagesAndLabels(images, img_size=64, nc=2, cache_check="content")
    assert "from cache" in capsys.readouterr().out and again.labels[0][0, 0] == 1
    data = _write_data(tmp_path, "images/train")
    assert main(["check", str(data), "--cache-check", "content"]) == 0
    with pytest.raises(ValueError, match="cache_check='size'"):
        LoadImagesAndLabels(images, img_size=64, nc=2, cache_check="size")


def test_cache_key_depends_on_the_source_and_the_check_mode(tmp_path):
    images = make_dataset(tmp_path, {"a": GOOD})
    files = [str(images / "a.jpg")]
    labels = img2label_paths(files)
    keys = {cache_key(files, labels, 2, [src], mode) for src in ("x/train.txt", "x/valid.txt")
            for mode in ("mtime", "content")}
    assert len(keys) == 4


@pytest.mark.slow
def test_ultralytics_custom_set_trains_from_the_repository_root(tmp_path, monkeypatch):
    """Issue 14: a custom set written the ultralytics way trains without changes (one tiny epoch)."""
    import train

    _ultralytics_repo(tmp_path, stems="pqrstuvw")
    monkeypatch.chdir(tmp_path)
    args = ["--cfg", "cfg/yolov3-tiny.cfg", "--data", "data/custom.data", "--img-size", "64", "--epochs", "1",
            "--batch-size", "4", "--accumulate", "1", "--weights", "", "--device", "cpu", "--num-workers", "0",
            "--project", str(tmp_path / "runs"), "--name", "custom"]  # fmt: skip
    assert train.main(args) == 0
    assert (tmp_path / "runs" / "custom" / "weights" / "last.pt").is_file()


def test_cache_images_is_refused_when_it_would_not_fit_in_memory(tmp_path):
    """--cache-images on a set whose decoded images exceed half the available memory stops at the start with the
    numbers and the fix, instead of an out-of-memory kill later; unknown available memory checks nothing."""
    from utils.datasets import check_preload_fits, mem_available

    check_preload_fits(10 * 2**30, 200_000, "big/images", None)  # unknown: no check
    check_preload_fits(2**30, 1000, "small/images", 4 * 2**30)
    with pytest.raises(ValueError, match=r"big/images: --cache-images would keep 200,000 decoded images, 70\.0 GiB.*"
                                         r"only 16\.0 GiB is available.*Drop --cache-images"):
        check_preload_fits(70 * 2**30, 200_000, "big/images", 16 * 2**30)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:   16000000 kB\n")
    assert mem_available(meminfo) == 16_000_000 * 1024 and mem_available(tmp_path / "absent") is None

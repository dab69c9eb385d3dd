"""Dataset sources: image lists, label validation and its messages, the label cache, .data files and ``check``."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from tests.dataset_helpers import GOOD, make_dataset
from utils.data_check import augmentation_drops, main
from utils.data_files import img2label_paths, list_image_files, resolve_data_cfg
from utils.datasets import LoadImagesAndLabels
from utils.label_cache import cache_key
from utils.problems import MAX_LISTED, DatasetError


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
    with caplog.at_level(logging.WARNING, logger="utils.label_cache"):
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

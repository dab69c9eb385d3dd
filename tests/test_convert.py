"""VOC XML and COCO json -> YOLO datasets (utils/convert.py).

Each rule on small hand-made files, re-runs, and the real raccoon (VOC) and coco128 (COCO) sets when ../shared is
present."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from utils.annotations import read_split_list, voc_corners_to_xyxy
from utils.convert import convert_coco, convert_voc, main, yolo_rows
from utils.data_check import main as datasets_main
from utils.datasets import LoadImagesAndLabels

RACCOON = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "raccoon"


def _image(path: Path, w: int, h: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8))
    return path


def _xml(folder: Path, stem: str, objects: list[tuple], size: tuple[int, int] | None = None) -> Path:
    """A VOC file for ``<stem>.jpg``; objects are ``(name, xmin, ymin, xmax, ymax)`` or with ``difficult`` last."""
    folder.mkdir(parents=True, exist_ok=True)
    objs = ""
    for o in objects:
        name, x1, y1, x2, y2, *rest = o
        objs += (f"<object><name>{name}</name><difficult>{rest[0] if rest else 0}</difficult><bndbox>"
                 f"<xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")
    size_xml = f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>" if size else ""
    path = folder / f"{stem}.xml"
    path.write_text(f"<annotation><filename>{stem}.jpg</filename>{size_xml}{objs}</annotation>")
    return path


def _voc(root: Path, items: dict[str, tuple[tuple[int, int], list[tuple]]]) -> tuple[Path, Path]:
    """Images 'stem.jpg' of the given sizes with their XML (claiming the real size); returns (annotations, images)."""
    for stem, (size, objects) in items.items():
        _image(root / "JPEGImages" / f"{stem}.jpg", *size)
        _xml(root / "Annotations", stem, objects, size)
    return root / "Annotations", root / "JPEGImages"


def _rows(path: Path) -> np.ndarray:
    return np.loadtxt(path, ndmin=2) if path.read_text().strip() else np.zeros((0, 5))


def _tree_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


# ------------------------------------------------------------------------------------------- geometry
def test_voc_corners_are_one_based_by_default():
    assert voc_corners_to_xyxy(1, 1, 100, 50) == (0, 0, 100, 50)  # the whole 100x50 image
    assert voc_corners_to_xyxy(1, 1, 100, 50, corners="as-written") == (1, 1, 100, 50)
    with pytest.raises(ValueError, match="corners"):
        voc_corners_to_xyxy(1, 1, 2, 2, corners="zero")


def test_yolo_rows_clip_and_flag_empty_boxes():
    xywh, clipped, kept = yolo_rows(np.array([[0, 0, 100, 50], [-10, 10, 50, 60], [120, 10, 130, 20],
                                              [10, 10, 10, 30]]), 100, 50)  # fmt: skip
    np.testing.assert_allclose(xywh[0], [0.5, 0.5, 1, 1])
    np.testing.assert_allclose(xywh[1], [0.25, 0.6, 0.5, 0.8])  # clipped to x 0..50, y 10..50
    assert clipped.tolist() == [False, True, True, False]
    assert kept.tolist() == [True, True, False, False]  # outside the image; zero width


def test_voc_boxes_one_based_and_as_written(tmp_path):
    ann, img = _voc(tmp_path, {"a": ((100, 50), [("cat", 1, 1, 100, 50), ("cat", 11, 6, 30, 25)])})
    data = convert_voc(ann, img, tmp_path / "out", val_fraction=0, verbose=False)
    np.testing.assert_allclose(_rows(tmp_path / "out" / "labels" / "train" / "a.txt"),
                               [[0, 0.5, 0.5, 1, 1], [0, 0.2, 0.3, 0.2, 0.4]])  # pixels 11..30: x 10..30
    convert_voc(ann, img, tmp_path / "raw", val_fraction=0, corners="as-written", verbose=False)
    np.testing.assert_allclose(_rows(tmp_path / "raw" / "labels" / "train" / "a.txt"),
                               [[0, 0.505, 0.51, 0.99, 0.98], [0, 0.205, 0.31, 0.19, 0.38]])
    assert data == tmp_path / "out" / "out.data"


# ------------------------------------------------------------------------------------------- VOC rules
def test_real_image_size_wins_over_the_xml_size_with_a_warning(tmp_path, caplog):
    _image(tmp_path / "img" / "a.jpg", 100, 50)
    _image(tmp_path / "img" / "b.jpg", 100, 50)
    a = _xml(tmp_path / "ann", "a", [("cat", 1, 1, 50, 25)], size=(200, 100))  # wrong
    _xml(tmp_path / "ann", "b", [("cat", 1, 1, 50, 25)], size=(100, 50))  # right
    with caplog.at_level(logging.WARNING, logger="utils.convert"):
        convert_voc(tmp_path / "ann", tmp_path / "img", tmp_path / "out", val_fraction=0, verbose=False)
    warnings = [r.getMessage() for r in caplog.records if "size" in r.getMessage()]
    assert len(warnings) == 1 and str(a) in warnings[0] and "200x100" in warnings[0] and "100x50" in warnings[0]
    for stem in "ab":
        np.testing.assert_allclose(_rows(tmp_path / "out" / "labels" / "train" / f"{stem}.txt"),
                                   [[0, 0.25, 0.25, 0.5, 0.5]])


def test_boxes_clipped_and_empty_ones_dropped_with_a_warning(tmp_path, caplog, capsys):
    ann, img = _voc(tmp_path, {"a": ((100, 50), [("cat", -9, 11, 50, 60), ("dog", 150, 5, 190, 40),
                                                 ("cat", 31, 11, 30, 20)])})  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="utils.convert"):
        convert_voc(ann, img, tmp_path / "out", val_fraction=0)
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(dropped) == 2 and all(str(ann / "a.xml") in m and "100x50 image" in m for m in dropped)
    assert "object 2 'dog'" in dropped[0]  # outside the image
    assert "object 3 'cat'" in dropped[1]  # xmin 31 > xmax 30: no pixel inside
    rows = _rows(tmp_path / "out" / "labels" / "train" / "a.txt")
    np.testing.assert_allclose(rows, [[0, 0.25, 0.6, 0.5, 0.8]])  # x 0..50, y 10..50 after clipping
    out = capsys.readouterr().out
    assert "1 clipped" in out and "2 dropped" in out and "object 1 'cat'" in out


def test_difficult_objects_dropped_by_default_kept_with_the_flag(tmp_path, capsys):
    ann, img = _voc(tmp_path, {"a": ((100, 50), [("cat", 1, 1, 50, 25), ("dog", 51, 26, 100, 50, 1)])})
    convert_voc(ann, img, tmp_path / "drop", val_fraction=0)
    assert "1 difficult" in capsys.readouterr().out
    assert len(_rows(tmp_path / "drop" / "labels" / "train" / "a.txt")) == 1
    assert (tmp_path / "drop" / "drop.names").read_text() == "cat\ndog\n"  # the class still exists
    convert_voc(ann, img, tmp_path / "keep", val_fraction=0, keep_difficult=True, verbose=False)
    assert _rows(tmp_path / "keep" / "labels" / "train" / "a.txt")[:, 0].tolist() == [0, 1]


def test_names_file_sets_the_class_order_and_leaves_other_classes_out(tmp_path, capsys):
    ann, img = _voc(tmp_path, {"a": ((100, 50), [("cat", 1, 1, 50, 25), ("dog", 1, 1, 50, 25),
                                                 ("cow", 1, 1, 10, 10)])})  # fmt: skip
    names = tmp_path / "my.names"
    names.write_text("dog\ncat\n")
    convert_voc(ann, img, tmp_path / "out", val_fraction=0, names=names)
    assert "1 class 'cow' not in the names" in capsys.readouterr().out
    assert _rows(tmp_path / "out" / "labels" / "train" / "a.txt")[:, 0].tolist() == [1, 0]
    assert (tmp_path / "out" / "out.names").read_text() == "dog\ncat\n"


def test_bad_annotations_are_all_listed_and_nothing_is_written(tmp_path):
    ann, img = _voc(tmp_path, {"a": ((100, 50), [("cat", 1, 1, 50, "x")]), "b": ((100, 50), [("cat", 1, 1, 5, 5)])})
    (ann / "c.xml").write_text("<annotation><filename>c.jpg")
    _xml(ann, "d", [("cat", 1, 1, 5, 5)], size=(100, 50))  # no image d.jpg
    with pytest.raises(ValueError) as e:
        convert_voc(ann, img, tmp_path / "out", val_fraction=0)
    msg = str(e.value)
    assert "3 problem(s)" in msg and f"{ann / 'a.xml'}: object 1 'cat' has no numeric" in msg
    assert f"{ann / 'c.xml'}: cannot be parsed" in msg and f"image {img / 'd.jpg'} not found" in msg
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------- splits
def test_split_from_voc_imagesets_lists(tmp_path):
    ann, img = _voc(tmp_path, {s: ((64, 48), [("cat", 1, 1, 20, 20)]) for s in ("000001", "000002", "000003")})
    sets = tmp_path / "ImageSets" / "Main"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("000001\n000003\n")
    (sets / "val.txt").write_text("000002\n")
    data = convert_voc(ann, img, tmp_path / "out", split_lists=(sets / "train.txt", sets / "val.txt"), verbose=False)
    assert (tmp_path / "out" / "train.txt").read_text() == "./images/train/000001.jpg\n./images/train/000003.jpg\n"
    assert (tmp_path / "out" / "valid.txt").read_text() == "./images/valid/000002.jpg\n"
    assert "valid=valid.txt" in data.read_text()


def test_split_from_csv_lists_like_raccoon(tmp_path, caplog):
    ann, img = _voc(tmp_path, {s: ((64, 48), [("r", 1, 1, 20, 20), ("r", 21, 21, 40, 40)]) for s in "abcd"})
    header = "filename,width,height,class,xmin,ymin,xmax,ymax\n"
    (tmp_path / "train.csv").write_text(header + "a.jpg,64,48,r,1,1,20,20\na.jpg,64,48,r,21,21,40,40\nb.jpg,...\n")
    (tmp_path / "test.csv").write_text(header + "c.jpg,64,48,r,1,1,20,20\n")
    assert read_split_list(tmp_path / "train.csv") == [("a.jpg", 2), ("b.jpg", 4)]
    with caplog.at_level(logging.WARNING, logger="utils.convert"):
        convert_voc(ann, img, tmp_path / "out", split_lists=(tmp_path / "train.csv", tmp_path / "test.csv"),
                    verbose=False)
    assert "1 annotated image(s) are in neither split list" in caplog.text and "d.jpg" in caplog.text
    assert sorted(p.name for p in (tmp_path / "out" / "images" / "train").iterdir()) == ["a.jpg", "b.jpg"]
    assert [p.name for p in (tmp_path / "out" / "labels" / "valid").iterdir()] == ["c.txt"]


def test_bad_split_lists_are_errors_naming_list_and_line(tmp_path):
    ann, img = _voc(tmp_path, {s: ((64, 48), [("r", 1, 1, 20, 20)]) for s in "ab"})
    (tmp_path / "t.txt").write_text("a\nzz\n")
    (tmp_path / "v.txt").write_text("b\na\n")
    with pytest.raises(ValueError) as e:
        convert_voc(ann, img, tmp_path / "out", split_lists=(tmp_path / "t.txt", tmp_path / "v.txt"))
    msg = str(e.value)
    assert f"{tmp_path / 't.txt'}:2: 'zz' matches no annotated image" in msg
    assert f"{tmp_path / 'v.txt'}:2: 'a' is in both split lists" in msg
    with pytest.raises(ValueError, match="not both"):
        convert_voc(ann, img, tmp_path / "out", split_lists=(tmp_path / "t.txt", tmp_path / "v.txt"),
                    val_fraction=0.5)


def test_random_split_is_seeded(tmp_path):
    ann, img = _voc(tmp_path, {f"i{k:02d}": ((32, 32), [("r", 1, 1, 20, 20)]) for k in range(20)})
    lists = []
    for out, seed in (("a", 0), ("b", 0), ("c", 1)):
        convert_voc(ann, img, tmp_path / out, val_fraction=0.25, seed=seed, verbose=False)
        lists.append((tmp_path / out / "valid.txt").read_text())
    assert lists[0] == lists[1] != lists[2] and lists[0].count("\n") == 5
    train = (tmp_path / "a" / "train.txt").read_text().splitlines()
    assert len(train) == 15 and not set(train) & set(lists[0].splitlines())


# ------------------------------------------------------------------------------------------- output and re-runs
def test_output_links_to_the_sources_opens_and_checks(tmp_path, monkeypatch, capsys):
    ann, img = _voc(tmp_path / "src", {s: ((64, 48), [("cat", 1, 1, 20, 20)]) for s in "abcde"})
    before = _tree_hashes(tmp_path / "src")
    data = convert_voc(ann, img, tmp_path / "out", val_fraction=0.2, name="pets", verbose=False)
    assert data.name == "pets.data" and (tmp_path / "out" / "pets.names").is_file()
    link = tmp_path / "out" / "images" / "train" / "a.jpg"
    assert link.is_symlink() and os.readlink(link) == str(img / "a.jpg")
    monkeypatch.chdir(tmp_path / "src")  # the lists' ./ entries do not depend on the working directory
    assert datasets_main(["check", str(data)]) == 0
    assert "train + valid: 5 images, 5 boxes (4 train, 1 valid, 0 in both)" in capsys.readouterr().out
    ds = LoadImagesAndLabels(tmp_path / "out" / "train.txt", img_size=64, nc=2, verbose=False)
    assert ds.n == 4 and all(len(x) == 1 for x in ds.labels)
    convert_voc(ann, img, tmp_path / "copies", val_fraction=0.2, copy_images=True, verbose=False)
    copy = tmp_path / "copies" / "images" / "train" / "a.jpg"
    assert not copy.is_symlink() and copy.read_bytes() == (img / "a.jpg").read_bytes()
    assert _tree_hashes(tmp_path / "src") == before  # the sources are never changed


def test_rerun_rewrites_nothing_unchanged_and_refuses_the_users_files(tmp_path):
    ann, img = _voc(tmp_path / "src", {s: ((64, 48), [("cat", 1, 1, 20, 20)]) for s in "abcd"})
    out = tmp_path / "out"
    convert_voc(ann, img, out, val_fraction=0.25, verbose=False)
    label = next((out / "labels" / "train").iterdir())
    mtimes = {p: p.lstat().st_mtime_ns for p in out.rglob("*") if p.name != "convert.json"}
    convert_voc(ann, img, out, val_fraction=0.25, verbose=False)  # same again: nothing touched
    assert {p: p.lstat().st_mtime_ns for p in mtimes} == mtimes

    label.write_text("0 0.5 0.5 0.1 0.1\n")  # the user's edit
    (out / "notes.txt").write_text("mine")  # the user's own file: never touched
    (out / "valid.txt").unlink()
    (out / "valid.txt").write_text("./images/valid/x.jpg\n")
    state = _tree_hashes(out)
    with pytest.raises(FileExistsError) as e:
        convert_voc(ann, img, out, val_fraction=0.25, verbose=False)
    assert "refusing to overwrite 2 file(s)" in str(e.value) and str(label) in str(e.value)
    assert str(out / "valid.txt") in str(e.value) and "--overwrite" in str(e.value)
    assert _tree_hashes(out) == state  # nothing was written
    assert main(["voc", str(ann), str(img), str(out), "--val-fraction", "0.25"]) == 1
    convert_voc(ann, img, out, val_fraction=0.25, overwrite=True, verbose=False)
    assert label.read_text() == "0 0.156250 0.208333 0.312500 0.416667\n" and (out / "notes.txt").read_text() == "mine"


def test_rerun_removes_its_own_stale_outputs_and_keeps_edited_ones(tmp_path, caplog):
    ann, img = _voc(tmp_path / "src", {s: ((64, 48), [("cat", 1, 1, 20, 20)]) for s in "abcd"})
    out = tmp_path / "out"
    lists = []
    for name, seq in (("t1", "a\nb\n"), ("v1", "c\nd\n"), ("t2", "a\nc\n"), ("v2", "b\nd\n")):
        (tmp_path / name).write_text(seq)
        lists.append(tmp_path / name)
    convert_voc(ann, img, out, split_lists=lists[:2], verbose=False)
    (out / "labels" / "valid" / "c.txt").write_text("0 0.5 0.5 0.2 0.2\n")  # edited, then c moves to train
    with caplog.at_level(logging.WARNING, logger="utils.convert"):
        convert_voc(ann, img, out, split_lists=lists[2:], verbose=False)
    assert not (out / "images" / "train" / "b.jpg").exists() and not (out / "labels" / "train" / "b.txt").exists()
    assert (out / "images" / "valid" / "b.jpg").is_symlink() and (out / "labels" / "train" / "c.txt").is_file()
    assert not (out / "images" / "valid" / "c.jpg").exists()  # unchanged link of the earlier run: removed
    assert (out / "labels" / "valid" / "c.txt").read_text() == "0 0.5 0.5 0.2 0.2\n"  # edited: kept
    assert "edited since and are kept" in caplog.text and "c.txt" in caplog.text
    recorded = json.loads((out / "convert.json").read_text())["files"]
    assert "labels/valid/c.txt" not in recorded and "labels/train/c.txt" in recorded


def test_output_inside_a_source_folder_is_refused(tmp_path):
    ann, img = _voc(tmp_path / "x" / "images", {"a": ((64, 48), [("cat", 1, 1, 20, 20)])})
    with pytest.raises(ValueError, match="inside the output folder's images/"):
        convert_voc(ann, img, tmp_path / "x", val_fraction=0)


# ------------------------------------------------------------------------------------------- COCO
def _coco(tmp_path: Path, images: list[tuple[int, str, int, int]], anns: list[dict], cats=None) -> Path:
    for _, name, w, h in images:
        _image(tmp_path / "imgs" / name, w, h)
    cats = cats or [{"id": 1, "name": "person"}, {"id": 5, "name": "bus"}, {"id": 90, "name": "toothbrush"}]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({
        "images": [{"id": i, "file_name": n, "width": w, "height": h} for i, n, w, h in images],
        "annotations": [{"id": k, "iscrowd": 0, **a} for k, a in enumerate(anns, 1)], "categories": cats}))
    return path


def test_coco_ids_to_contiguous_classes_crowd_left_out_mapping_written(tmp_path, capsys):
    js = _coco(tmp_path, [(7, "a.jpg", 100, 50), (8, "b.jpg", 100, 50)], [
        {"image_id": 7, "category_id": 90, "bbox": [10, 5, 20, 10]},
        {"image_id": 7, "category_id": 5, "bbox": [0, 0, 100, 50]},
        {"image_id": 7, "category_id": 1, "bbox": [0, 0, 50, 50], "iscrowd": 1},
        {"image_id": 7, "category_id": 1, "bbox": [90, 40, 30, 30]},  # clipped to 90..100, 40..50
        {"image_id": 7, "category_id": 1, "bbox": [100, 10, 5, 5]},  # outside: dropped
    ])
    data = convert_coco(js, tmp_path / "imgs", tmp_path / "out", val_fraction=0)
    out = capsys.readouterr().out
    assert "1 iscrowd" in out and "1 clipped" in out and "1 dropped" in out
    np.testing.assert_allclose(_rows(tmp_path / "out" / "labels" / "train" / "a.txt"),
                               [[2, 0.2, 0.2, 0.2, 0.2], [1, 0.5, 0.5, 1, 1], [0, 0.95, 0.9, 0.1, 0.2]])
    assert (tmp_path / "out" / "labels" / "train" / "b.txt").read_text() == ""  # no annotations: no boxes
    mapping = json.loads((tmp_path / "out" / "categories.json").read_text())["classes"]
    assert [(m["class"], m["category_id"], m["name"]) for m in mapping] == [(0, 1, "person"), (1, 5, "bus"),
                                                                            (2, 90, "toothbrush")]
    assert (tmp_path / "out" / "out.names").read_text() == "person\nbus\ntoothbrush\n"
    assert "valid=train.txt" in data.read_text()


def test_coco_valid_json_gives_the_valid_split_and_sizes_are_checked(tmp_path, caplog):
    js = _coco(tmp_path, [(1, "a.jpg", 100, 50)], [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 50, 25]}])
    (tmp_path / "val").mkdir()
    _image(tmp_path / "val" / "v.jpg", 40, 40)
    val = tmp_path / "val.json"
    val.write_text(json.dumps({"images": [{"id": 2, "file_name": "v.jpg", "width": 80, "height": 40}],
                               "annotations": [{"id": 9, "image_id": 2, "category_id": 5, "bbox": [0, 0, 20, 20]}],
                               "categories": json.loads(js.read_text())["categories"]}))
    with caplog.at_level(logging.WARNING, logger="utils.convert"):
        convert_coco(js, tmp_path / "imgs", tmp_path / "out", valid_json=val, valid_images_dir=tmp_path / "val",
                     verbose=False)
    assert "says 80x40" in caplog.text and "v.jpg is 40x40" in caplog.text
    np.testing.assert_allclose(_rows(tmp_path / "out" / "labels" / "valid" / "v.txt"), [[1, 0.25, 0.25, 0.5, 0.5]])
    assert (tmp_path / "out" / "valid.txt").read_text() == "./images/valid/v.jpg\n"
    bad = json.loads(val.read_text())
    bad["categories"] = bad["categories"][:2]
    val.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="categories differ"):
        convert_coco(js, tmp_path / "imgs", tmp_path / "out2", valid_json=val, valid_images_dir=tmp_path / "val")


def test_importing_prints_and_writes_nothing(repo_root, tmp_path):
    env = {"PYTHONPATH": str(repo_root), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", "import utils.convert"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0 and done.stdout == done.stderr == "" and not list(tmp_path.iterdir())


def test_cli_help_says_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["voc", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "default: drop them, as Darknet's voc_label.py did" in text and "one-based (default" in text


# ------------------------------------------------------------------------------------------- the real sets
def test_raccoon_converts_to_the_authors_split_and_checks(tmp_path, capsys):
    if not (RACCOON / "annotations").is_dir():
        pytest.skip(f"raccoon not found at {RACCOON}")
    data = convert_voc(RACCOON / "annotations", RACCOON / "images", tmp_path / "raccoon",
                       split_lists=(RACCOON / "train_labels.csv", RACCOON / "test_labels.csv"))
    out = capsys.readouterr().out
    assert "train: 160 images, 173 boxes" in out and "valid: 40 images, 44 boxes" in out
    assert "0 clipped" in out and "0 dropped" in out
    assert datasets_main(["check", str(data)]) == 0
    out = capsys.readouterr().out
    assert "train + valid: 200 images, 217 boxes (160 train, 40 valid, 0 in both)" in out
    assert not list(Path(__file__).resolve().parents[1].rglob("raccoon-1.jpg"))  # nothing copied into the repo


def test_coco128_json_agrees_with_the_shipped_labels(coco128_dir, tmp_path):
    convert_coco(coco128_dir / "annotations" / "instances_train2017.json", coco128_dir / "images" / "train2017",
                 tmp_path / "c128", val_fraction=0, verbose=False, workers=2)
    ours_dir, ref_dir = tmp_path / "c128" / "labels" / "train", coco128_dir / "labels" / "train2017"
    assert len(list(ours_dir.iterdir())) == 128
    n_boxes = 0
    for ref in sorted(ref_dir.iterdir()):
        a, b = _rows(ours_dir / ref.name), _rows(ref)
        assert len(a) == len(b), ref.name
        for row in b:  # every shipped box has one of ours of the same class within rounding (6 decimals)
            same = a[a[:, 0] == row[0]]
            assert len(same) and np.abs(same[:, 1:] - row[1:]).max(1).min() < 1e-5, (ref.name, row)
        n_boxes += len(a)
    assert n_boxes == 929
    for stem in ("000000000250", "000000000508"):  # no annotations in COCO: empty label files here
        assert (ours_dir / f"{stem}.txt").read_text() == ""
    names = (tmp_path / "c128" / "c128.names").read_text().splitlines()
    assert names == (coco128_dir / "coco128.names").read_text().splitlines()

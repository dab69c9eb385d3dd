"""test.py, utils/evaluate.py, utils/coco.py: the CLI, the metrics against pycocotools on coco128 boxes, a tiny run."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import utils.coco as coco
import utils.evaluate as evaluation
from utils.boxes import xywh2xyxy

REPO = Path(__file__).resolve().parents[1]


def test_help_lists_every_flag(test_cli, capsys):
    with pytest.raises(SystemExit) as e:
        test_cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    flags = (
        "--cfg --data --weights --batch-size --img-size --conf-thres --iou-thres --save-json --coco-json "
        "--single-cls --device --task --save-dir --workers --half --verbose"
    )
    for flag in flags.split():
        assert flag in out, flag


def test_perfect_and_empty_detections():
    labels = [torch.tensor([[0, 10.0, 10.0, 50.0, 50.0], [2, 60.0, 60.0, 90.0, 100.0]]), torch.zeros(0, 5)]
    preds = [torch.tensor([[10.0, 10.0, 50.0, 50.0, 0.9, 0], [60.0, 60.0, 90.0, 100.0, 0.8, 2]]), torch.zeros(0, 6)]
    m = evaluation.evaluate_detections(preds, labels, nc=3)
    # a perfect detector: P = R = 1 and AP 0.995 (the curve is closed at recall 1 with precision 0)
    assert (m.mp, m.mr) == (1.0, 1.0)
    assert m.map50 == pytest.approx(0.995) and m.map == pytest.approx(0.995)
    assert m.ap_class.tolist() == [0, 2] and m.nt.tolist() == [1, 0, 1]
    none = evaluation.evaluate_detections([torch.zeros(0, 6)] * 2, labels, nc=3)
    assert none.map50 == 0.0 and none.mp == 0.0
    empty = evaluation.evaluate_detections([torch.zeros(0, 6)], [torch.zeros(0, 5)], nc=3)
    assert empty.map == 0.0 and empty.nt.tolist() == [0, 0, 0]


def coco128_detections(coco128_dir: Path, seed: int = 0):
    """Ground-truth boxes of coco128 in original-image pixels and a jittered detection set with false positives."""
    anno = json.loads((coco128_dir / "annotations" / "instances_train2017.json").read_text())
    sizes = {im["id"]: (im["width"], im["height"]) for im in anno["images"]}
    rng = np.random.default_rng(seed)
    ids, preds, labels = [], [], []
    for img_id in sorted(sizes):
        w, h = sizes[img_id]
        label_file = coco128_dir / "labels" / "train2017" / f"{img_id:012d}.txt"
        rows = np.loadtxt(label_file, ndmin=2) if label_file.is_file() else np.zeros((0, 5))
        xyxy = xywh2xyxy(rows[:, 1:5]) * [w, h, w, h]
        gt = np.concatenate((rows[:, :1], xyxy), 1)
        dets = []
        for c, x1, y1, x2, y2 in gt:
            if rng.random() < 0.1:  # missed
                continue
            bw, bh = x2 - x1, y2 - y1
            box = np.array([x1, y1, x2, y2]) + rng.normal(0, 0.06, 4) * [bw, bh, bw, bh]
            cls = c if rng.random() > 0.05 else rng.integers(80)
            dets.append([*box, rng.uniform(0.05, 1.0), cls])
        for _ in range(rng.integers(0, 6)):  # false positives anywhere, any class
            x1, y1 = rng.uniform(0, w - 20), rng.uniform(0, h - 20)
            x2, y2 = x1 + rng.uniform(10, w / 3), y1 + rng.uniform(10, h / 3)
            dets.append([x1, y1, x2, y2, rng.uniform(0.01, 0.7), rng.integers(80)])
        det = torch.tensor(dets, dtype=torch.float32).view(-1, 6)
        det[:, [0, 2]] = det[:, [0, 2]].clamp(0, w)
        det[:, [1, 3]] = det[:, [1, 3]].clamp(0, h)
        det = det[det[:, 4].argsort(descending=True)][:100]  # pycocotools scores 100 per image
        ids.append(img_id)
        preds.append(det)
        labels.append(torch.tensor(gt, dtype=torch.float32).view(-1, 5))
    return ids, preds, labels


def test_coco80_to_91_matches_coco128_categories(coco128_dir):
    anno = json.loads((coco128_dir / "annotations" / "instances_train2017.json").read_text())
    assert list(coco.COCO80_TO_91) == sorted(c["id"] for c in anno["categories"])
    assert coco.find_coco_json([str(coco128_dir / "images" / "train2017" / "000000000009.jpg")]) == (
        coco128_dir / "annotations" / "instances_train2017.json"
    )


def test_coco128_map_matches_pycocotools(coco128_dir, tmp_path, capsys):
    pytest.importorskip("pycocotools")
    ids, preds, labels = coco128_detections(coco128_dir)
    ours = evaluation.evaluate_detections(preds, labels, nc=80)
    rows = [r for img_id, det in zip(ids, preds) for r in coco.coco_json_rows(det, img_id, nc=80)]
    pred_json = tmp_path / "detections.json"
    pred_json.write_text(json.dumps(rows))
    anno = coco128_dir / "annotations" / "instances_train2017.json"
    coco_map, coco_map50 = coco.run_cocoeval(anno, pred_json, ids)
    with capsys.disabled():
        print(
            f"\ncoco128 jittered detections: ours mAP@0.5 {ours.map50:.4f} mAP@0.5:0.95 {ours.map:.4f} | "
            f"pycocotools mAP@0.5 {coco_map50:.4f} mAP@0.5:0.95 {coco_map:.4f}"
        )
    assert 0.3 < ours.map < ours.map50 < 0.95  # a meaningful, non-trivial detection set
    assert abs(ours.map50 - coco_map50) < 0.01
    assert abs(ours.map - coco_map) < 0.01


def write_tiny_dataset(root: Path, n: int = 4, size: int = 64) -> Path:
    """n coloured squares on grey, one label each (class 0 or 1), with a .data and .names file."""
    img_dir, lab_dir = root / "images" / "val", root / "labels" / "val"
    img_dir.mkdir(parents=True)
    lab_dir.mkdir(parents=True)
    for i in range(n):
        img = np.full((size, size + 16 * (i % 2), 3), 114, np.uint8)
        cv2.rectangle(img, (10 + i, 12), (40 + i, 44), (0, 0, 255) if i % 2 else (255, 0, 0), -1)
        cv2.imwrite(str(img_dir / f"{i:06d}.jpg"), img)
        h, w = img.shape[:2]
        (lab_dir / f"{i:06d}.txt").write_text(f"{i % 2} {(25 + i) / w:.6f} {28 / h:.6f} {30 / w:.6f} {32 / h:.6f}\n")
    (root / "tiny.names").write_text("blue\nred\n")
    data = root / "tiny.data"
    data.write_text(f"classes=2\ntrain={img_dir}\nvalid={img_dir}\nnames=tiny.names\n")
    return data


def test_end_to_end_tiny_model(test_cli, tmp_path, capsys):
    pytest.importorskip("utils.datasets")
    data = write_tiny_dataset(tmp_path / "tiny")
    cfg = REPO / "cfg" / "yolov3-tiny.cfg"
    models = pytest.importorskip("models")
    torch.manual_seed(0)
    model = models.Darknet(cfg, img_size=(64, 64), nc=2)
    weights = tmp_path / "w.pt"
    torch.save({"model": model.state_dict()}, weights)

    save_dir = tmp_path / "run"
    hyp = {"giou": 3.54, "cls": 37.4, "cls_pw": 1.0, "obj": 64.3, "obj_pw": 1.0, "iou_t": 0.2, "fl_gamma": 0.0}
    results, maps = evaluation.test(
        str(cfg), str(data), str(weights), batch_size=2, img_size=64, save_json=True, device="cpu",
        save_dir=save_dir, hyp=hyp, workers=0,
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "mAP@0.5:0.95" in out and "Speed:" in out and "all" in out
    assert len(results) == 8 and maps.shape == (2,)
    assert all(np.isfinite(results)) and results[6] > 0  # validation objectness loss
    assert (save_dir / "test_batch0_gt.jpg").is_file() and (save_dir / "test_batch0_pred.jpg").is_file()
    rows = json.loads((save_dir / "detections.json").read_text())
    assert all(r["image_id"] in range(4) and r["category_id"] in (0, 1) for r in rows)

    # the same model passed in (the trainer's way) gives the same metrics; its train mode is restored
    model.train()
    again, _ = evaluation.test(None, str(data), batch_size=2, img_size=64, model=model.fuse(), hyp=hyp, workers=0)
    assert model.training
    np.testing.assert_allclose(again[:5], results[:5], atol=1e-6)

    # weights that do not fit the cfg: the CLI names both and exits 1
    bad = tmp_path / "bad.pt"
    torch.save({"model": models.Darknet(cfg, img_size=(64, 64), nc=5).state_dict()}, bad)
    code = test_cli.main(["--cfg", str(cfg), "--data", str(data), "--weights", str(bad), "--img-size", "64",
                         "--device", "cpu", "--save-dir", str(tmp_path / "bad_run")])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert "bad.pt" in err and "yolov3-tiny.cfg" in err


class OracleModel(torch.nn.Module):
    """Returns each batch's labels as perfect eval-mode detections (it walks a twin loader in lockstep)."""

    def __init__(self, loader, nc: int):
        super().__init__()
        self.batches = iter(loader)
        self.nc = nc
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # test() reads the device from the parameters

    def forward(self, imgs):
        _, targets, _, _ = next(self.batches)
        bs, _, h, w = imgs.shape
        n = max(int((targets[:, 0] == i).sum()) for i in range(bs)) or 1
        out = torch.zeros(bs, n, 5 + self.nc)
        for i in range(bs):
            t = targets[targets[:, 0] == i]
            out[i, : len(t), :4] = t[:, 2:6] * torch.tensor([w, h, w, h])
            out[i, : len(t), 4] = 1.0
            out[i, torch.arange(len(t)), 5 + t[:, 1].long()] = 1.0
        return out, []


@pytest.mark.slow
def test_save_json_maps_back_to_original_images(coco128_dir, tmp_path, capsys):
    """Perfect detections through test(): the json boxes, ids and categories must score ~1 in pycocotools."""
    pytest.importorskip("pycocotools")
    valid = str(coco128_dir / "images" / "train2017")
    names = (coco128_dir / "coco128.names").read_text().split("\n")[:80]
    loader = evaluation.make_dataloader(valid, 256, 32, single_cls=False, nc=80, workers=0)
    twin = evaluation.make_dataloader(valid, 256, 32, single_cls=False, nc=80, workers=0)
    results, _ = evaluation.test(
        None, None, model=OracleModel(twin, 80), dataloader=loader, names=names, save_json=True,
        save_dir=tmp_path, plots=False, verbose=False,
    )  # fmt: skip
    out = capsys.readouterr().out
    coco_line = next(line for line in out.splitlines() if line.startswith("pycocotools:"))
    coco_map50 = float(coco_line.split("mAP@0.5 ")[1])
    with capsys.disabled():
        print(f"\noracle detections through test(): ours mAP@0.5 {results[2]:.4f} | {coco_line}")
    assert results[2] > 0.95  # boxes under 2 pixels at 256 are dropped by NMS; 0.995 is a perfect score here
    assert coco_map50 > 0.95 and abs(coco_map50 - results[2]) < 0.02


def test_coco_image_ids_from_file_names():
    assert coco.coco_image_id("images/val2014/COCO_val2014_000000000139.jpg") == 139
    assert coco.coco_image_id(Path("coco/images/val2017/000000000009.jpg")) == 9
    assert coco.coco_image_id("frame_12.png") == 12
    for bad in ("my/images/dog.jpg", "my/images/img_0001a.jpg", "x/COCO_val2014_.jpg"):
        with pytest.raises(ValueError, match="rename the images") as e:
            coco.coco_image_id(bad)
        assert bad in str(e.value)


class GridModel(torch.nn.Module):
    """Eval-mode output of 225 disjoint 3x3-pixel boxes per image, each scoring 0.5 for both of 2 classes."""

    def __init__(self):
        super().__init__()
        self.nc = 2
        self.weight = torch.nn.Parameter(torch.zeros(1))  # test() reads the device from the parameters
        self.calls = 0

    def forward(self, imgs):
        self.calls += 1
        gy, gx = torch.meshgrid(torch.arange(15.0), torch.arange(15.0), indexing="ij")
        xy = torch.stack((gx, gy), -1).view(-1, 2) * 4 + 3
        rows = torch.cat((xy, torch.full((225, 2), 3.0), torch.full((225, 3), 0.5)), 1)  # wh 3, obj, 2 classes
        return rows.expand(imgs.shape[0], -1, -1).clone(), []


def test_evaluation_keeps_every_detection_and_json_ids(tmp_path, capsys):
    """No per-image cap in test(): 450 detections per image (225 boxes x 2 classes) all reach the json."""
    data = write_tiny_dataset(tmp_path / "tiny")
    loader = evaluation.make_dataloader(str(tmp_path / "tiny" / "images" / "val"), 64, 2, False, 2, workers=0)
    evaluation.test(
        None, None, model=GridModel(), dataloader=loader, names=["blue", "red"], save_json=True,
        save_dir=tmp_path / "run", plots=False,
    )  # fmt: skip
    rows = json.loads((tmp_path / "run" / "detections.json").read_text())
    per_image = {i: sum(r["image_id"] == i for r in rows) for i in range(4)}
    assert per_image == {0: 450, 1: 450, 2: 450, 3: 450}
    assert "per 64x64 image at batch-size 2" in capsys.readouterr().out
    # a cap only when asked for (detect.py's way)
    evaluation.test(None, str(data), model=GridModel(), img_size=64, batch_size=2, max_det=300, save_json=True,
                 save_dir=tmp_path / "capped", plots=False, workers=0)  # fmt: skip
    rows = json.loads((tmp_path / "capped" / "detections.json").read_text())
    assert len(rows) == 4 * 300


def test_save_json_names_without_ids_fail_before_the_run(tmp_path):
    write_tiny_dataset(tmp_path / "tiny")
    img_dir = tmp_path / "tiny" / "images" / "val"
    (img_dir / "000001.jpg").rename(img_dir / "cat.jpg")
    loader = evaluation.make_dataloader(str(img_dir), 64, 2, False, 2, workers=0)
    model = GridModel()
    with pytest.raises(ValueError, match=r"cat\.jpg.*rename the images"):
        evaluation.test(None, None, model=model, dataloader=loader, names=["a", "b"], save_json=True, save_dir=tmp_path)
    assert model.calls == 0


def test_pycocotools_failures_are_one_line_errors(test_cli, tmp_path, capsys):
    pytest.importorskip("pycocotools")
    write_tiny_dataset(tmp_path / "tiny")
    img_files = sorted(str(p) for p in (tmp_path / "tiny" / "images" / "val").glob("*.jpg"))
    anno = {
        "images": [{"id": i, "width": 64, "height": 64, "file_name": f"{i:06d}.jpg"} for i in range(3)],
        "annotations": [{"id": 1, "image_id": 0, "category_id": 1, "bbox": [10, 12, 30, 32], "area": 960,
                         "iscrowd": 0}],
        "categories": [{"id": 0, "name": "blue"}, {"id": 1, "name": "red"}],
    }  # fmt: skip
    anno_json = tmp_path / "instances_val.json"
    anno_json.write_text(json.dumps(anno))
    with pytest.raises(ValueError, match="has no image id 3") as e:  # 000003.jpg is not in the file
        coco.load_coco_gt(anno_json, img_files)
    assert str(anno_json) in str(e.value) and "\n" not in str(e.value)
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(ValueError, match="not a readable COCO annotation file"):
        coco.load_coco_gt(broken, img_files)
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([{"image_id": 7, "category_id": 1, "bbox": [10, 12, 30, 32], "score": 0.9}]))
    with pytest.raises(ValueError, match="pycocotools could not score") as e:
        coco.run_cocoeval(anno_json, dets, [7])
    assert str(dets) in str(e.value) and "\n" not in str(e.value)
    # through the CLI: exit 1 with one line naming the annotation file, before any evaluation
    data = tmp_path / "tiny" / "tiny.data"
    code = test_cli.main(["--cfg", str(REPO / "cfg" / "yolov3-tiny.cfg"), "--data", str(data), "--img-size", "64",
                         "--device", "cpu", "--save-json", "--coco-json", str(anno_json), "--workers", "0",
                         "--save-dir", str(tmp_path / "cli")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.count("\n") == 0 and "has no image id 3" in err and str(anno_json) in err
    assert not (tmp_path / "cli" / "detections.json").exists()


def test_validation_losses_use_the_given_gr_and_no_model_attributes(tmp_path):
    models = pytest.importorskip("models")
    data = write_tiny_dataset(tmp_path / "tiny")
    torch.manual_seed(0)
    model = models.Darknet(REPO / "cfg" / "yolov3-tiny.cfg", img_size=(64, 64), nc=2)
    hyp = {"giou": 3.54, "cls": 37.4, "cls_pw": 1.0, "obj": 64.3, "obj_pw": 1.0, "iou_t": 0.2, "fl_gamma": 0.0}
    run = {"batch_size": 2, "img_size": 64, "model": model, "plots": False, "verbose": False, "workers": 0}
    gr1, _ = evaluation.test(None, str(data), hyp=hyp, **run)
    gr0, _ = evaluation.test(None, str(data), hyp=hyp, gr=0.0, **run)
    default, _ = evaluation.test(None, str(data), hyp=hyp, gr=1.0, **run)
    assert gr1[5:] == default[5:] and gr1[5] == gr0[5] and gr1[6] != gr0[6]  # gr changes only the obj target
    model.hyp, model.gr = hyp, 0.0  # the reference's attributes: not read
    none, _ = evaluation.test(None, str(data), **run)
    assert none[5:] == (0.0, 0.0, 0.0)
    again, _ = evaluation.test(None, str(data), hyp=hyp, **run)
    assert again[5:] == gr1[5:]


def test_importing_the_evaluation_modules_prints_and_writes_nothing(tmp_path):
    code = "import utils.evaluate, utils.coco, utils.weights, models"
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""
    assert list(tmp_path.iterdir()) == []

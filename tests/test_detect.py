"""detect.py and utils/sources.py: outputs per image, labels equal to NMS of the same model, video, bad inputs."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detect import (
    detect,
    display_available,
    increment_path,
    load_model,
    load_names,
    main,
    parse_args,
    summarize,
    yolo_label_lines,
)
from models import Darknet
from utils.augmentations import letterbox
from utils.boxes import scale_coords
from utils.nms import non_max_suppression
from utils.shapes import CLASS_NAMES, make_shapes_image
from utils.sources import LoadImages, LoadStreams, is_stream, list_source_files
from utils.torch_utils import fold_bn_into_conv_, fuse_conv_and_bn
from utils.weights import save_weights

REPO = Path(__file__).resolve().parents[1]
TINY_CFG = REPO / "cfg" / "yolov3-tiny.cfg"
IMG_SIZE = 128
CONF = 0.002  # a randomly initialised head scores at most obj 0.011 x best cls 0.25 = 0.0027: below that gets boxes


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A randomly initialised yolov3-tiny for the 3 shapes classes, saved as our checkpoint format (with names)."""
    torch.manual_seed(0)
    model = Darknet(TINY_CFG, nc=len(CLASS_NAMES))
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    torch.save({"epoch": 0, "model": model.state_dict(), "names": list(CLASS_NAMES)}, path)
    return path


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory) -> Path:
    """Three built-in-dataset images: one square, one landscape and one portrait."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    wanted = {(256, 256), (240, 320), (320, 240)}  # (h, w)
    while wanted:
        img, _ = make_shapes_image(rng)
        if img.shape[:2] in wanted:
            wanted.discard(img.shape[:2])
            cv2.imwrite(str(folder / f"shape_{img.shape[0]}x{img.shape[1]}.jpg"), img)
    return folder


@pytest.fixture(scope="module")
def folder_run(tiny_ckpt, shapes_dir, tmp_path_factory):
    """One CLI run over the folder with --save-txt; returns (output folder, stdout)."""
    out = tmp_path_factory.mktemp("runs") / "exp"
    argv = ["--cfg", str(TINY_CFG), "--weights", str(tiny_ckpt), "--source", str(shapes_dir), "--output", str(out)]
    argv += ["--img-size", str(IMG_SIZE), "--conf-thres", str(CONF), "--save-txt", "--device", "cpu"]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(argv) == 0
    return out, stdout.getvalue()


def reference_detections(ckpt: Path, img0: np.ndarray) -> torch.Tensor:
    """letterbox -> fused eval model -> non_max_suppression -> scale_coords, written out independently of detect.py."""
    model = Darknet(TINY_CFG, nc=len(CLASS_NAMES))
    model.load_state_dict(torch.load(ckpt, weights_only=True)["model"])
    model.fuse().eval()
    img, ratio, pad = letterbox(img0, IMG_SIZE, auto=True)
    x = torch.from_numpy(np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1))).float()[None] / 255
    with torch.no_grad():
        det = non_max_suppression(model(x)[0], CONF, 0.6, multi_label=False)[0]
    det[:, :4] = scale_coords(x.shape[2:], det[:, :4], img0.shape, ratio_pad=(ratio, pad)).round()
    return det


def test_folder_writes_one_image_and_label_per_image(folder_run, shapes_dir):
    out, stdout = folder_run
    images = sorted(p.name for p in shapes_dir.iterdir())
    assert sorted(p.name for p in out.glob("*.jpg")) == images
    assert sorted(p.stem for p in (out / "labels").glob("*.txt")) == [Path(n).stem for n in images]
    lines = stdout.splitlines()
    per_image = [line for line in lines if line.startswith("image ")]
    assert len(per_image) == 3 and per_image[0].startswith(f"image 1/3 {shapes_dir / images[0]}: ")
    assert "Done. (" in per_image[0]
    assert lines[-1].startswith("Done. 3 images") and str(out) in lines[-1]


def test_label_files_match_nms_of_the_same_model(folder_run, shapes_dir, tiny_ckpt):
    out, _ = folder_run
    for image in sorted(shapes_dir.iterdir()):
        img0 = cv2.imread(str(image))
        det = reference_detections(tiny_ckpt, img0)
        assert len(det), "the test needs detections: lower CONF"
        h0, w0 = img0.shape[:2]
        x1, y1, x2, y2 = det[:, :4].T
        expected = torch.stack([det[:, 5], (x1 + x2) / 2 / w0, (y1 + y2) / 2 / h0, (x2 - x1) / w0, (y2 - y1) / h0], 1)
        got = np.loadtxt(out / "labels" / f"{image.stem}.txt", ndmin=2)
        assert got.shape == (len(det), 5)
        np.testing.assert_allclose(got, expected.numpy(), atol=1e-6)


def test_detect_returns_boxes_in_original_pixels(tiny_ckpt, shapes_dir, tmp_path):
    image = sorted(shapes_dir.iterdir())[1]
    res = detect(TINY_CFG, tiny_ckpt, image, output=tmp_path / "exp", img_size=IMG_SIZE, conf_thres=CONF, device="cpu")
    assert res["images"] == 1 and res["output"] == tmp_path / "exp"
    path, frame, det = res["results"][0]
    assert (path, frame) == (str(image), 0)
    torch.testing.assert_close(det, reference_detections(tiny_ckpt, cv2.imread(str(image))))
    assert res["detections"] == len(det)


def test_video_keeps_frame_count_and_size(tiny_ckpt, tmp_path):
    src = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(src), cv2.VideoWriter_fourcc(*"mp4v"), 10, (96, 64))
    rng = np.random.default_rng(0)
    for _ in range(10):
        writer.write(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))
    writer.release()
    res = detect(TINY_CFG, tiny_ckpt, src, output=tmp_path / "out", img_size=32, conf_thres=0.5, device="cpu",
                 save_txt=True)  # fmt: skip
    assert res["images"] == 10 and [r[1] for r in res["results"]] == list(range(10))
    cap = cv2.VideoCapture(str(res["output"] / "clip.mp4"))
    frames = 0
    while cap.read()[0]:
        frames += 1
    size = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    assert (frames, size, fps) == (10, (96, 64), 10)
    assert sorted(p.name for p in (res["output"] / "labels").iterdir()) == sorted(f"clip_{i}.txt" for i in range(10))


def test_corrupt_image_is_skipped_with_a_warning(tiny_ckpt, shapes_dir, tmp_path, caplog):
    folder = tmp_path / "src"
    folder.mkdir()
    good = sorted(shapes_dir.iterdir())[0]
    (folder / good.name).write_bytes(good.read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    with caplog.at_level(logging.WARNING, logger="utils.sources"):
        res = detect(TINY_CFG, tiny_ckpt, folder, output=tmp_path / "o", img_size=IMG_SIZE, conf_thres=0.5)
    assert res["images"] == 1
    assert any("broken.jpg" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert [p.name for p in res["output"].iterdir()] == [good.name]


def test_single_unreadable_file_raises(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    with pytest.raises(ValueError, match="bad.png"):
        list(LoadImages(bad, 64))


def test_missing_source_names_it(tmp_path, tiny_ckpt, capsys):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        LoadImages(missing)
    argv = ["--cfg", str(TINY_CFG), "--weights", str(tiny_ckpt), "--source", str(missing), "--output", str(tmp_path)]
    assert main(argv) == 1
    assert "no_such_folder" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="no images or videos"):
        LoadImages(tmp_path)  # exists, but holds no image or video
    with pytest.raises(FileNotFoundError, match="glob"):
        LoadImages(tmp_path / "*.jpg")


def test_glob_and_folder_listing(shapes_dir):
    (shapes_dir / "notes.txt").write_text("not an image")
    try:
        assert list_source_files(shapes_dir) == sorted(shapes_dir.glob("*.jpg"))
        assert list_source_files(shapes_dir / "*256x256.jpg") == [shapes_dir / "shape_256x256.jpg"]
    finally:
        (shapes_dir / "notes.txt").unlink()


def test_load_images_letterboxes_rgb_chw_like_testing(shapes_dir):
    dataset = LoadImages(shapes_dir, img_size=IMG_SIZE)
    items = list(dataset)
    assert len(items) == len(dataset) == 3
    for _path, img, img0, cap, frame in items:
        assert cap is None and frame == 0 and img.dtype == np.uint8 and img.flags.c_contiguous
        assert img.shape[0] == 3 and img.shape[1] % 32 == 0 and img.shape[2] % 32 == 0
        assert max(img.shape[1:]) == IMG_SIZE
        expected = letterbox(img0, IMG_SIZE, auto=True)[0]
        np.testing.assert_array_equal(img, expected[:, :, ::-1].transpose(2, 0, 1))
    portrait = next(img for path, img, *_ in items if "320x240" in path)
    assert portrait.shape[1:] == (128, 96)


@pytest.mark.parametrize(
    "h0, w0, new_shape, auto, scaleup",
    [
        (100, 60, (160, 256), False, False),  # small portrait in a landscape canvas, no enlarging
        (50, 80, 416, True, False),  # small landscape, no enlarging, auto padding
        (300, 120, (256, 320), False, True),  # portrait enlarged into a landscape canvas
        (640, 360, 416, True, True),  # portrait, rectangular inference
        (480, 640, 416, True, True),  # landscape, rectangular inference
    ],
)
def test_scale_coords_inverts_letterbox(h0, w0, new_shape, auto, scaleup):
    x1, y1, x2, y2 = round(w0 * 0.2), round(h0 * 0.3), round(w0 * 0.7), round(h0 * 0.9)
    img0 = np.zeros((h0, w0, 3), np.uint8)
    img0[y1:y2, x1:x2] = 255
    img, ratio, pad = letterbox(img0, new_shape, color=(0, 0, 0), auto=auto, scaleup=scaleup)
    ys, xs = np.nonzero(img[:, :, 0] > 127)
    found = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
    back = scale_coords(img.shape[:2], found.clone(), img0.shape, ratio_pad=(ratio, pad))
    tol = 1.0 / ratio[0] + 1.0  # one letterboxed pixel of edge blur plus the pad's sub-pixel rounding
    torch.testing.assert_close(back, torch.tensor([[x1, y1, x2, y2]], dtype=torch.float32), atol=tol, rtol=0)
    exact = torch.tensor([[x1, y1, x2, y2]], dtype=torch.float64) * ratio[0]
    exact[:, [0, 2]] += pad[0]
    exact[:, [1, 3]] += pad[1]
    back = scale_coords(img.shape[:2], exact, img0.shape, ratio_pad=(ratio, pad))
    torch.testing.assert_close(back, torch.tensor([[x1, y1, x2, y2]], dtype=torch.float64))


def test_load_images_ratio_pad_is_the_letterbox_of_the_frame(tmp_path):
    img0 = np.full((60, 100, 3), 50, np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), img0)
    dataset = LoadImages(tmp_path / "a.png", img_size=160)
    _, img, *_ = next(iter(dataset))
    _, ratio, pad = letterbox(img0, 160, auto=True)
    assert dataset.ratio_pad == (ratio, pad) and img.shape == (3, 96, 160)


def test_yolo_label_lines_are_normalised_to_the_original_image():
    det = torch.tensor([[10.0, 20.0, 50.0, 60.0, 0.75, 2.0], [0.0, 0.0, 200.0, 100.0, 0.5, 0.0]])
    assert yolo_label_lines(det, (100, 200, 3)) == [
        "2 0.150000 0.400000 0.200000 0.400000",
        "0 0.500000 0.500000 1.000000 1.000000",
    ]
    assert yolo_label_lines(det, (100, 200), save_conf=True)[0].endswith(" 0.750000")
    assert yolo_label_lines(torch.zeros(0, 6), (100, 200)) == []


def test_summarize_counts_per_class():
    det = torch.tensor([[0, 0, 1, 1, 0.9, 0], [0, 0, 1, 1, 0.8, 0], [0, 0, 1, 1, 0.7, 1]], dtype=torch.float32)
    assert summarize(det, CLASS_NAMES) == "2 circles, 1 square, "
    assert summarize(torch.zeros(0, 6), CLASS_NAMES) == ""


def test_names_from_names_and_data_files(tmp_path):
    assert load_names(REPO / "data" / "shapes.data") == list(CLASS_NAMES)
    (tmp_path / "x.names").write_text("cat\n\ndog\n")
    assert load_names(tmp_path / "x.names") == ["cat", "dog"]
    (tmp_path / "x.data").write_text("classes=2\nnames=missing.names\n")
    with pytest.raises(FileNotFoundError, match="missing.names"):
        load_names(tmp_path / "x.data")


def test_names_that_do_not_fit_the_weights(tiny_ckpt, shapes_dir, tmp_path):
    with pytest.raises(ValueError, match="nc=3"):
        detect(TINY_CFG, tiny_ckpt, shapes_dir, names=["a", "b"], output=tmp_path / "o", device="cpu")


def test_weights_that_do_not_fit_the_cfg(tiny_ckpt, shapes_dir, tmp_path):
    sd = torch.load(tiny_ckpt, weights_only=True)["model"]
    sd["module_list.0.Conv2d.weight"] = torch.zeros(8, 3, 3, 3)
    bad = tmp_path / "bad.pt"
    torch.save(sd, bad)
    with pytest.raises(ValueError, match="module_list.0.Conv2d.weight"):
        detect(TINY_CFG, bad, shapes_dir, output=tmp_path / "o", device="cpu")


def test_raw_state_dict_without_names_uses_numbers(tiny_ckpt, shapes_dir, tmp_path, caplog):
    raw = tmp_path / "raw.pt"
    torch.save(torch.load(tiny_ckpt, weights_only=True)["model"], raw)
    image = sorted(shapes_dir.iterdir())[0]
    with caplog.at_level(logging.WARNING, logger="detect"), contextlib.redirect_stdout(io.StringIO()) as stdout:
        res = detect(TINY_CFG, raw, image, output=tmp_path / "o", img_size=IMG_SIZE, conf_thres=0.001, classes=[2])
    assert any("shown as numbers" in r.getMessage() for r in caplog.records)
    det = res["results"][0][2]
    assert len(det) > 1 and (det[:, 5] == 2).all()
    assert f" {len(det)} 2s, Done." in stdout.getvalue().splitlines()[0]


def test_format2_checkpoint_detect_and_test_load_the_same_scored_weights(tmp_path):
    """Format 2 (utils.checkpoint): 'model' holds the EMA, 'model_raw' the raw weights; detect.py and test.py both
    read the checkpoint through utils.weights and run the EMA."""
    import utils.evaluate as evaluation
    from utils.checkpoint import make_checkpoint
    from utils.weights import read_checkpoint_info

    torch.manual_seed(2)
    ema, raw = Darknet(TINY_CFG, nc=len(CLASS_NAMES)), Darknet(TINY_CFG, nc=len(CLASS_NAMES))
    path = tmp_path / "best.pt"
    torch.save(make_checkpoint(epoch=0, best_fitness=0.0, training_results="", model=ema, model_raw=raw,
                               names=list(CLASS_NAMES)), path)  # fmt: skip
    state_dict, ema_sd, names = read_checkpoint_info(path)
    assert ema_sd is None and names == list(CLASS_NAMES) and state_dict.keys() == ema.state_dict().keys()
    detect_model, _ = load_model(TINY_CFG, path, torch.device("cpu"))
    test_model = evaluation.load_model(TINY_CFG, path, len(CLASS_NAMES), IMG_SIZE, torch.device("cpu"))
    head = f"module_list.{detect_model.yolo_layers[0] - 1}.Conv2d.weight"  # no BatchNorm: fuse() keeps it
    assert torch.equal(detect_model.state_dict()[head], ema.state_dict()[head])
    assert not torch.equal(detect_model.state_dict()[head], raw.state_dict()[head])
    for k, v in test_model.state_dict().items():
        assert torch.equal(v, detect_model.state_dict()[k]), k


def test_checkpoint_with_ema_and_rng_state_detects_with_the_ema(tiny_ckpt, tmp_path):
    torch.manual_seed(1)
    ema = Darknet(TINY_CFG, nc=len(CLASS_NAMES)).state_dict()
    ckpt = torch.load(tiny_ckpt, weights_only=True)
    ckpt.update(ema=ema, rng={"numpy": np.random.default_rng(0).bit_generator.state, "legacy": np.random.get_state()})
    path = tmp_path / "last.pt"
    torch.save(ckpt, path)
    model, names = load_model(TINY_CFG, path, torch.device("cpu"))
    assert names == list(CLASS_NAMES)
    head = f"module_list.{model.yolo_layers[0] - 1}.Conv2d.weight"  # no BatchNorm, so fuse() leaves it as is
    torch.testing.assert_close(model.state_dict()[head], ema[head])


def test_darknet_weights_take_the_class_count_from_names(tiny_ckpt, shapes_dir, tmp_path):
    model = Darknet(TINY_CFG, nc=len(CLASS_NAMES))
    model.load_state_dict(torch.load(tiny_ckpt, weights_only=True)["model"])
    darknet = tmp_path / "tiny-shapes.weights"
    save_weights(model, darknet)
    image = sorted(shapes_dir.iterdir())[0]
    kwargs = {"img_size": IMG_SIZE, "conf_thres": CONF, "device": "cpu"}
    res = detect(TINY_CFG, darknet, image, names=REPO / "data" / "shapes.data", output=tmp_path / "a", **kwargs)
    torch.testing.assert_close(res["results"][0][2], reference_detections(tiny_ckpt, cv2.imread(str(image))))
    with pytest.raises(ValueError, match="pass --names"):
        detect(TINY_CFG, darknet, image, output=tmp_path / "b", **kwargs)


def test_80_class_darknet_weights_without_names_use_the_coco_names(tmp_path, caplog):
    """An 80-class model without names (the official Darknet weights) shows COCO names, as the reference's
    default --names data/coco.names did; it says so in one line."""
    torch.manual_seed(0)
    darknet = tmp_path / "tiny-coco.weights"
    save_weights(Darknet(TINY_CFG), darknet)  # the cfg's own 80 classes
    coco = (REPO / "data" / "coco128.names").read_text().splitlines()
    with caplog.at_level(logging.INFO, logger="detect"):
        _, names = load_model(TINY_CFG, darknet, torch.device("cpu"))
    assert names == coco and names[0] == "person" and len(names) == 80
    said = [r.getMessage() for r in caplog.records if "COCO" in r.getMessage()]
    assert len(said) == 1 and "coco128.names" in said[0] and "--names" in said[0]
    # another class count keeps the indices, and so does an 80-class model when the names file is gone
    _, names = load_model(TINY_CFG, darknet, torch.device("cpu"), coco_names=tmp_path / "absent.names")
    assert names == [str(i) for i in range(80)]


def test_official_weights_detect_with_coco_names(tmp_path):
    weights = REPO.parent / "shared" / "weights" / "yolov3-tiny.weights"
    image = REPO.parent / "shared" / "datasets" / "coco128" / "images" / "train2017" / "000000000009.jpg"
    if not (weights.is_file() and image.is_file()):
        pytest.skip("needs ../shared (official yolov3-tiny weights and coco128)")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        res = detect(TINY_CFG, weights, image, output=tmp_path / "o", img_size=320, device="cpu")
    line = out.getvalue().splitlines()[0]
    assert res["detections"] > 0 and "bowl" in line, line  # a bowl of broccoli and oranges


def test_a_checkpoint_is_read_once(tiny_ckpt, monkeypatch):
    reads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: reads.append(a[0]) or real_load(*a, **k))
    model, names = load_model(TINY_CFG, tiny_ckpt, torch.device("cpu"))
    assert reads == [tiny_ckpt] and names == list(CLASS_NAMES)
    expected = Darknet(TINY_CFG, nc=len(CLASS_NAMES))
    expected.load_state_dict(real_load(tiny_ckpt, weights_only=True)["model"])
    head = f"module_list.{model.yolo_layers[0] - 1}.Conv2d.weight"  # no BatchNorm: fusing leaves it as loaded
    assert torch.equal(model.state_dict()[head], expected.state_dict()[head])


def test_fusing_leaves_the_source_conv_and_the_rng_alone():
    torch.manual_seed(0)
    conv, bn = torch.nn.Conv2d(4, 6, 3, padding=1, bias=False), torch.nn.BatchNorm2d(6, eps=1e-4)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.2, 3)
    weight = conv.weight.detach().clone()
    state = torch.get_rng_state()
    fused = fuse_conv_and_bn(conv, bn)
    assert torch.equal(torch.get_rng_state(), state)  # no random initialisation of a new conv
    assert torch.equal(conv.weight, weight) and conv.bias is None
    folded = fold_bn_into_conv_(conv, bn)
    assert folded is conv and torch.equal(folded.weight, fused.weight) and torch.equal(folded.bias, fused.bias)
    assert not folded.weight.requires_grad


def test_half_needs_cuda(tiny_ckpt, shapes_dir, tmp_path):
    with pytest.raises(ValueError, match="--half"):
        detect(TINY_CFG, tiny_ckpt, shapes_dir, output=tmp_path / "o", device="cpu", half=True)


def test_bad_arguments(tiny_ckpt, shapes_dir, tmp_path):
    with pytest.raises(ValueError, match="multiple of 32"):
        detect(TINY_CFG, tiny_ckpt, shapes_dir, output=tmp_path / "o", img_size=100)
    with pytest.raises(ValueError, match="--classes"):
        detect(TINY_CFG, tiny_ckpt, shapes_dir, output=tmp_path / "o", classes=[3], device="cpu")


def test_output_folder_is_never_reused(tmp_path):
    assert increment_path(tmp_path / "exp") == tmp_path / "exp"
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp2").mkdir()
    assert increment_path(tmp_path / "exp") == tmp_path / "exp3"


def test_view_img_without_display(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    assert not display_available()


def test_streams(tmp_path):
    assert is_stream("0") and is_stream("rtsp://host/stream") and not is_stream("data/images")
    with pytest.raises(ConnectionError, match="cannot open stream"):
        LoadStreams(str(tmp_path / "absent.mp4"))
    src = tmp_path / "cam.avi"
    writer = cv2.VideoWriter(str(src), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 48))
    for i in range(3):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    frames = list(LoadStreams(str(src), img_size=64))
    assert [f[4] for f in frames] == [0, 1, 2] and frames[0][1].shape == (3, 64, 64)


@pytest.mark.gpu
def test_half_on_cuda(tiny_ckpt, shapes_dir, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    kwargs = {"img_size": IMG_SIZE, "conf_thres": 0.001, "device": "0"}
    full = detect(TINY_CFG, tiny_ckpt, shapes_dir, output=tmp_path / "a", **kwargs)
    half = detect(TINY_CFG, tiny_ckpt, shapes_dir, output=tmp_path / "b", half=True, **kwargs)
    assert half["images"] == full["images"] == 3
    assert abs(half["detections"] - full["detections"]) <= 0.05 * full["detections"] + 3


def test_max_det_caps_the_boxes_per_image_and_zero_means_none(tiny_ckpt, shapes_dir, tmp_path):
    """detect.py keeps at most --max-det boxes (the best), 0 keeps all as the reference; a random head at a low
    threshold yields far more than 3 boxes per image."""
    kwargs = {"img_size": IMG_SIZE, "conf_thres": 0.0005, "device": "cpu", "save_img": False}
    image = sorted(shapes_dir.iterdir())[0]
    every = detect(TINY_CFG, tiny_ckpt, image, output=tmp_path / "a", max_det=None, **kwargs)["results"][0][2]
    capped = detect(TINY_CFG, tiny_ckpt, image, output=tmp_path / "b", max_det=3, **kwargs)["results"][0][2]
    assert len(every) > 3 and len(capped) == 3
    torch.testing.assert_close(capped, every[:3])
    assert parse_args(["--weights", "w.pt", "--source", "x"]).max_det == 300

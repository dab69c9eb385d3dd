"""test(): the official yolov3-tiny Darknet weights on coco128 give the reference trainer's figures.

The reference's own test.py with the same file and cfg (batch 16, conf 0.001, iou 0.6, rect batches) measured
these (``../shared/weights/README.md``). A departure in data loading (decoding, resizing, rect shapes,
letterbox), the network, NMS or the metrics moves them by more than the tolerances.
"""

from pathlib import Path

import pytest

import utils.evaluate as evaluation

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO.parent / "shared" / "weights" / "yolov3-tiny.weights"

# img-size: (P, R, mAP@0.5, F1) of the reference
REFERENCE = {416: (0.378, 0.441, 0.424, 0.375), 320: (0.377, 0.395, 0.395, 0.350)}


@pytest.mark.slow
@pytest.mark.parametrize("img_size", [416, 320])
def test_official_yolov3_tiny_on_coco128_equals_reference(coco128_dir, tmp_path, img_size, capsys):
    if not WEIGHTS.is_file():
        pytest.skip(f"official weights not found at {WEIGHTS}")
    from utils.parse_config import parse_model_cfg

    cfg = REPO / "cfg" / "yolov3-tiny.cfg"
    masks = [b["mask"] for b in parse_model_cfg(cfg) if b["type"] == "yolo"]
    assert [list(m) for m in masks] == [[3, 4, 5], [1, 2, 3]]  # the official file's masks (weights/README.md)
    data = tmp_path / "coco128.data"
    images = coco128_dir / "images" / "train2017"
    data.write_text(f"classes=80\ntrain={images}\nvalid={images}\nnames={coco128_dir / 'coco128.names'}\n")
    results, _ = evaluation.test(
        str(cfg), str(data), str(WEIGHTS), batch_size=16, img_size=img_size, conf_thres=0.001, iou_thres=0.6,
        device="cpu", plots=False, verbose=False,
    )  # fmt: skip
    p, r, map50, _, f1 = results[:5]
    ref_p, ref_r, ref_map50, ref_f1 = REFERENCE[img_size]
    with capsys.disabled():
        print(f"\nofficial yolov3-tiny, coco128 @{img_size}: P {p:.4f} R {r:.4f} mAP@0.5 {map50:.4f} F1 {f1:.4f} "
              f"(reference {ref_p} / {ref_r} / {ref_map50} / {ref_f1})")  # fmt: skip
    assert abs(map50 - ref_map50) <= 0.002
    assert abs(p - ref_p) <= 0.003 and abs(r - ref_r) <= 0.003
    assert abs(f1 - ref_f1) <= 0.003

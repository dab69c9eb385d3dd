"""utils.nms: against a brute-force per-class greedy NMS, the merge step, filters, caps and time limit."""

import logging

import torch
import torchvision

from utils.nms import non_max_suppression


def random_prediction(bs=2, n=200, nc=4, seed=0) -> torch.Tensor:
    """(bs, n, 5 + nc) eval-mode rows: xywh pixels in a 320x320 image, obj and class scores in 0..1."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(bs, n, 2, generator=g) * 320
    wh = torch.rand(bs, n, 2, generator=g) * 80 + 1  # a few below the 2-pixel minimum
    scores = torch.rand(bs, n, 1 + nc, generator=g)
    return torch.cat((xy, wh, scores), 2)


def iou_one(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def brute_force_nms(x: torch.Tensor, conf_thres: float, iou_thres: float, multi_label: bool) -> list[tuple]:
    """Plain python: candidate rules of the reference, then greedy NMS per class; rows sorted by score."""
    cands = []
    for row in x.tolist():
        cx, cy, w, h, obj = row[:5]
        if not (obj > conf_thres and 2 < w < 4096 and 2 < h < 4096):
            continue
        box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
        cls_scores = [s * obj for s in row[5:]]
        if multi_label:
            cands += [(box, s, c) for c, s in enumerate(cls_scores) if s > conf_thres]
        else:
            c = max(range(len(cls_scores)), key=lambda k: cls_scores[k])
            cands.append((box, cls_scores[c], c))
    kept = []
    for c in {k for _, _, k in cands}:
        rows = sorted((r for r in cands if r[2] == c), key=lambda r: -r[1])
        chosen = []
        for r in rows:
            if all(iou_one(r[0], k[0]) <= iou_thres for k in chosen):
                chosen.append(r)
        kept += chosen
    return sorted(((*r[0], r[1], float(r[2])) for r in kept), key=lambda r: -r[4])


def test_plain_nms_matches_brute_force():
    pred = random_prediction()
    for multi_label in (True, False):
        out = non_max_suppression(pred, conf_thres=0.3, iou_thres=0.45, multi_label=multi_label, merge=False)
        for xi in range(pred.shape[0]):
            expected = torch.tensor(brute_force_nms(pred[xi], 0.3, 0.45, multi_label))
            assert out[xi].shape == expected.shape and out[xi].shape[0] > 10
            assert torch.allclose(out[xi], expected, atol=1e-4)


def test_input_not_modified_and_empty_outputs():
    pred = random_prediction(bs=3)
    pred[1, :, 4] = 0.0  # no objectness: no detections
    before = pred.clone()
    out = non_max_suppression(pred, conf_thres=0.2)
    assert torch.equal(pred, before)
    assert len(out) == 3 and out[1].shape == (0, 6) and out[0].shape[1] == 6


def test_merge_is_score_weighted_mean_of_overlaps():
    # three boxes of class 0: two overlap strongly (IoU > 0.6), one is far away
    boxes = torch.tensor([[50.0, 50.0, 20.0, 20.0], [52.0, 50.0, 20.0, 20.0], [200.0, 200.0, 30.0, 30.0]])
    obj = torch.tensor([[0.9], [0.6], [0.8]])
    cls = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    pred = torch.cat((boxes, obj, cls), 1)[None]
    out = non_max_suppression(pred, conf_thres=0.1, iou_thres=0.6)[0]
    assert out.shape == (2, 6)
    w = torch.tensor([0.9, 0.6])
    xyxy = torch.tensor([[40.0, 40.0, 60.0, 60.0], [42.0, 40.0, 62.0, 60.0]])
    assert torch.allclose(out[0, :4], (w[:, None] * xyxy).sum(0) / w.sum())
    assert torch.allclose(out[0, 4:], torch.tensor([0.9, 0.0]))
    assert torch.allclose(out[1, :4], torch.tensor([185.0, 185.0, 215.0, 215.0]))
    plain = non_max_suppression(pred, conf_thres=0.1, iou_thres=0.6, merge=False)[0]
    assert torch.allclose(plain[0, :4], xyxy[0])


def test_filters_classes_agnostic_size_nonfinite_and_cap():
    boxes = torch.tensor(
        [[50.0, 50.0, 20.0, 20.0], [51.0, 50.0, 20.0, 20.0], [100.0, 100.0, 1.5, 20.0], [150.0, 150.0, 20.0, 20.0]]
    )
    obj = torch.tensor([[0.9], [0.8], [0.9], [0.9]])
    cls = torch.tensor([[0.9, 0.05], [0.05, 0.9], [0.9, 0.05], [0.9, 0.05]])
    pred = torch.cat((boxes, obj, cls), 1)[None]
    out = non_max_suppression(pred, conf_thres=0.1, iou_thres=0.5, multi_label=False, merge=False)[0]
    assert out[:, 5].tolist() == [0.0, 0.0, 1.0]  # the 1.5-pixel-wide box is gone; classes kept apart
    agn = non_max_suppression(pred, conf_thres=0.1, iou_thres=0.5, multi_label=False, agnostic=True)[0]
    assert agn.shape[0] == 2
    only1 = non_max_suppression(pred, conf_thres=0.1, multi_label=False, classes=[1])[0]
    assert only1[:, 5].tolist() == [1.0]
    capped = non_max_suppression(pred, conf_thres=0.1, multi_label=False, max_det=2)[0]
    assert capped.shape[0] == 2 and capped[0, 4] >= capped[1, 4]
    bad = pred.clone()
    bad[0, 3, 0] = float("inf")
    assert non_max_suppression(bad, conf_thres=0.1, multi_label=False, merge=False)[0].shape[0] == 2


def test_time_limit_warns_and_stops(caplog):
    pred = random_prediction(bs=3)
    with caplog.at_level(logging.WARNING):
        out = non_max_suppression(pred, conf_thres=0.2, time_limit=0.0)
    assert "time limit" in caplog.text
    assert out[0].shape[0] > 0 and out[1].shape == (0, 6) and out[2].shape == (0, 6)


def test_many_candidates_low_conf_is_fast_and_capped():
    pred = random_prediction(bs=1, n=3000, nc=20, seed=1)
    out = non_max_suppression(pred, conf_thres=0.001, iou_thres=0.6, max_nms=5000)
    assert out[0].shape[0] <= 300 and torch.isfinite(out[0]).all()


def test_class_by_class_path_equals_one_nms_call():
    from utils.nms import PER_CLASS_FROM, _nms_offset_boxes

    g = torch.Generator().manual_seed(2)
    n = PER_CLASS_FROM + 1000
    xy = torch.rand(n, 2, generator=g) * 400
    boxes = torch.cat((xy, xy + torch.rand(n, 2, generator=g) * 60 + 3), 1)
    cls = torch.randint(0, 20, (n,), generator=g).float()
    scores = torch.rand(n, generator=g)
    offset = boxes + cls[:, None] * 4096
    expected = torchvision.ops.nms(offset, scores, 0.5)
    assert torch.equal(_nms_offset_boxes(offset, scores, cls, 0.5), expected)

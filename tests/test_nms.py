"""utils.nms against a brute-force per-class greedy NMS and a reference-rule oracle, bit for bit.

Also the merge step, the candidate filters (best class, nc == 1, classes, agnostic), caps and time limit."""

import logging

import pytest
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
    """Plain python: candidate rules of the reference, then greedy NMS per class; rows sorted by score.

    The reference's rules: objectness > conf_thres and 2 < w, h < 4096; with multi_label (and nc > 1) every
    class whose obj * cls > conf_thres, otherwise the best class when its obj * cls > conf_thres.
    """
    cands = []
    for row in x.tolist():
        cx, cy, w, h, obj = row[:5]
        if not (obj > conf_thres and 2 < w < 4096 and 2 < h < 4096):
            continue
        box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
        cls_scores = [s * obj for s in row[5:]]
        if multi_label and len(cls_scores) > 1:
            cands += [(box, s, c) for c, s in enumerate(cls_scores) if s > conf_thres]
        else:
            c = max(range(len(cls_scores)), key=lambda k: cls_scores[k])
            if cls_scores[c] > conf_thres:
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


def reference_rules_nms(prediction, conf_thres, iou_thres, multi_label=True, classes=None, agnostic=False):
    """The reference's NMS written from its documented rules: one torchvision call on class-offset boxes, no
    caps, merge with the weights normalised before the matrix product. Rows per image, by descending score."""
    out = []
    for x in prediction:
        x = x[(x[:, 4] > conf_thres) & ((x[:, 2:4] > 2) & (x[:, 2:4] < 4096)).all(1)].clone()
        x[:, 5:] *= x[:, 4:5]
        box = torch.cat((x[:, :2] - x[:, 2:4] / 2, x[:, :2] + x[:, 2:4] / 2), 1)
        if multi_label and x.shape[1] > 6:
            i, j = (x[:, 5:] > conf_thres).nonzero().T
            x = torch.cat((box[i], x[i, j + 5].unsqueeze(1), j.float().unsqueeze(1)), 1)
        else:
            conf, j = x[:, 5:].max(1)
            x = torch.cat((box, conf.unsqueeze(1), j.float().unsqueeze(1)), 1)[conf > conf_thres]
        if classes:
            x = x[(x[:, 5:6] == torch.tensor(classes).float()).any(1)]
        n = x.shape[0]
        if not n:
            out.append(torch.zeros(0, 6))
            continue
        boxes = x[:, :4] + x[:, 5:6] * (0 if agnostic else 4096)
        scores = x[:, 4]
        i = torchvision.ops.nms(boxes, scores, iou_thres)
        if 1 < n < 3000:
            weights = (torchvision.ops.box_iou(boxes[i], boxes) > iou_thres) * scores[None]
            x[i, :4] = torch.mm(weights / weights.sum(1, keepdim=True), x[:, :4])
        out.append(x[i])
    return out


def test_plain_nms_matches_brute_force():
    pred = random_prediction()
    for multi_label in (True, False):
        out = non_max_suppression(pred, conf_thres=0.3, iou_thres=0.45, multi_label=multi_label, merge=False)
        for xi in range(pred.shape[0]):
            expected = torch.tensor(brute_force_nms(pred[xi], 0.3, 0.45, multi_label))
            assert out[xi].shape == expected.shape and out[xi].shape[0] > 10
            assert torch.allclose(out[xi], expected, atol=1e-4)


def test_merge_nms_equals_reference_rules_bit_for_bit():
    """Crowded, overlapping boxes (merge has work to do) in every mode: the same rows and the same floats."""
    g = torch.Generator().manual_seed(3)
    centres = torch.rand(2, 30, 2, generator=g) * 300
    xy = centres.repeat_interleave(20, 1) + torch.randn(2, 600, 2, generator=g) * 4
    wh = torch.rand(2, 30, 2, generator=g).repeat_interleave(20, 1) * 60 + 8 + torch.randn(2, 600, 2, generator=g)
    pred = torch.cat((xy, wh, torch.rand(2, 600, 1 + 6, generator=g)), 2)
    settings = [
        {"multi_label": True},
        {"multi_label": False},
        {"multi_label": False, "classes": [1, 4]},
        {"multi_label": True, "classes": [2]},
        {"multi_label": True, "agnostic": True},
    ]
    for kw in settings:
        for conf in (0.001, 0.05, 0.3):  # 0.001: over 3000 candidates, merge off; 0.05, 0.3: merge on
            expected = reference_rules_nms(pred, conf, 0.6, **kw)
            out = non_max_suppression(pred, conf_thres=conf, iou_thres=0.6, **kw)
            for o, e in zip(out, expected):
                assert o.shape[0] > 5, kw
                assert torch.equal(o, e), (kw, conf)


def test_best_class_path_drops_scores_at_or_below_conf():
    # obj 0.8 * cls 0.25 = 0.20 must not survive conf 0.3; obj 0.8 * cls 0.5 = 0.4 does; 0.6 * 0.5 = 0.3 is not > 0.3
    boxes = torch.tensor([[50.0, 50.0, 20.0, 20.0], [150.0, 150.0, 20.0, 20.0], [250.0, 250.0, 20.0, 20.0]])
    obj = torch.tensor([[0.8], [0.8], [0.6]])
    cls = torch.tensor([[0.25, 0.1], [0.1, 0.5], [0.5, 0.0]])
    pred = torch.cat((boxes, obj, cls), 1)[None]
    out = non_max_suppression(pred, conf_thres=0.3, iou_thres=0.6, multi_label=False)[0]
    assert out.shape == (1, 6)
    assert out[0, 4].item() == pytest.approx(0.4) and out[0, 5].item() == 1.0
    assert torch.allclose(out[0, :4], torch.tensor([140.0, 140.0, 160.0, 160.0]))
    # the classes filter reads each kept row's own class, after the score filter
    assert non_max_suppression(pred, conf_thres=0.3, multi_label=False, classes=[0])[0].shape == (0, 6)
    only1 = non_max_suppression(pred, conf_thres=0.3, multi_label=False, classes=[1])[0]
    assert torch.equal(only1, out)


def test_single_class_always_takes_the_filtered_best_class_path():
    # nc == 1: multi_label is ignored, and obj * cls must exceed conf_thres as on the best-class path
    boxes = torch.tensor([[50.0, 50.0, 20.0, 20.0], [150.0, 150.0, 20.0, 20.0]])
    scores = torch.tensor([[0.9, 0.2], [0.9, 0.9]])  # obj, cls: 0.18 and 0.81
    pred = torch.cat((boxes, scores), 1)[None]
    for multi_label in (True, False):
        out = non_max_suppression(pred, conf_thres=0.3, iou_thres=0.6, multi_label=multi_label)[0]
        assert out.shape == (1, 6) and out[0, 4].item() == pytest.approx(0.81) and out[0, 5].item() == 0.0


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
    for bad_cap in ({"max_det": 0}, {"max_nms": -1}):
        with pytest.raises(ValueError, match="positive count or None"):
            non_max_suppression(pred, conf_thres=0.1, **bad_cap)
    bad = pred.clone()
    bad[0, 3, 0] = float("inf")
    assert non_max_suppression(bad, conf_thres=0.1, multi_label=False, merge=False)[0].shape[0] == 2


def test_time_limit_warns_and_stops(caplog):
    pred = random_prediction(bs=3)
    with caplog.at_level(logging.WARNING):
        out = non_max_suppression(pred, conf_thres=0.2, time_limit=0.0)
    assert "time limit" in caplog.text
    assert out[0].shape[0] > 0 and out[1].shape == (0, 6) and out[2].shape == (0, 6)


def test_no_cap_by_default_keeps_every_detection():
    """80 classes, multi-label, low confidence: thousands of boxes survive, as in the reference (COCOeval
    applies its own maxDets); a cap is only there when asked for."""
    g = torch.Generator().manual_seed(4)
    gy, gx = torch.meshgrid(torch.arange(24.0), torch.arange(24.0), indexing="ij")
    xy = torch.stack((gx, gy), -1).view(-1, 2) * 40 + 20  # 576 disjoint 30x30 boxes
    cls = torch.zeros(576, 80)
    for row in cls:  # five classes per box above the threshold: 2880 candidates, merge still on
        row[torch.randperm(80, generator=g)[:5]] = torch.rand(5, generator=g) * 0.5 + 0.01
    pred = torch.cat((xy, torch.full((576, 2), 30.0), torch.full((576, 1), 0.9), cls), 1)[None]
    out = non_max_suppression(pred, conf_thres=0.001, iou_thres=0.6)[0]
    assert out.shape[0] == 2880
    assert torch.equal(out, reference_rules_nms(pred, 0.001, 0.6)[0])
    capped = non_max_suppression(pred, conf_thres=0.001, iou_thres=0.6, max_det=300)[0]
    assert torch.equal(capped, out[:300])


def test_many_candidates_low_conf_capped_when_asked():
    pred = random_prediction(bs=1, n=3000, nc=20, seed=1)
    out = non_max_suppression(pred, conf_thres=0.001, iou_thres=0.6, max_nms=5000, max_det=300)
    assert out[0].shape[0] == 300 and torch.isfinite(out[0]).all()


def offset_boxes(
    seed: int, n: int, span: float, size: float, min_size: float, nc: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(offset boxes (n, 4), scores (n,), classes (n,))``: random xyxy boxes with corners in 0..span, sides
    min_size..min_size + size, random classes below nc, each box shifted by ``class * 4096`` as NMS does."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * span
    boxes = torch.cat((xy, xy + torch.rand(n, 2, generator=g) * size + min_size), 1)
    cls = torch.randint(0, nc, (n,), generator=g).float()
    scores = torch.rand(n, generator=g)
    return boxes + cls[:, None] * 4096, scores, cls


def test_class_by_class_path_equals_one_nms_call():
    from utils.nms import PER_CLASS_FROM, _nms_offset_boxes

    offset, scores, cls = offset_boxes(seed=2, n=PER_CLASS_FROM + 1000, span=400, size=60, min_size=3, nc=20)
    expected = torchvision.ops.nms(offset, scores, 0.5)
    assert torch.equal(_nms_offset_boxes(offset, scores, cls, 0.5), expected)


def test_boxes_wider_than_the_class_offset_take_one_nms_call():
    """Boxes spanning more than 4096 pixels overlap other classes' offset boxes; the class-by-class shortcut
    would miss those suppressions, so the result must still equal one torchvision call."""
    from utils.nms import PER_CLASS_FROM, _nms_offset_boxes

    offset, scores, cls = offset_boxes(seed=5, n=PER_CLASS_FROM + 500, span=9000, size=4000, min_size=100, nc=3)
    expected = torchvision.ops.nms(offset, scores, 0.5)
    per_class = torch.cat([torchvision.ops.nms(offset[cls == c], scores[cls == c], 0.5) for c in range(3)])
    assert per_class.numel() != expected.numel()  # the shortcut would give another answer here
    assert torch.equal(_nms_offset_boxes(offset, scores, cls, 0.5), expected)

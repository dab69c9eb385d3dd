"""utils.loss: target assignment by hand, loss values, gradients, focal loss and the DDP denominators."""

import math

import pytest
import torch
import torchvision.ops as tvops
from torch import nn

from utils.hyp import DEFAULT_HYP
from utils.loss import FocalLoss, build_targets, compute_loss, loss_counts, smooth_BCE

HYP = dict(DEFAULT_HYP)  # the loss reads giou, obj, cls, their pw, iou_t, fl_gamma, xy and wh; it ignores the rest


class FakeYOLOLayer(nn.Module):
    """Stands in for models.YOLOLayer: only anchor_vec (grid units) is read by the loss."""

    def __init__(self, anchor_vec):
        super().__init__()
        self.register_buffer("anchor_vec", torch.tensor(anchor_vec, dtype=torch.float32), persistent=False)


class FakeDarknet(nn.Module):
    """Two YOLO layers (4x4 and 8x8 grids in the tests) at module_list indices 1 and 3."""

    def __init__(self, nc=3):
        super().__init__()
        layer0 = FakeYOLOLayer([[1.0, 1.0], [2.0, 2.0], [4.0, 4.0]])
        layer1 = FakeYOLOLayer([[0.5, 0.5], [1.0, 2.0], [2.0, 1.0]])
        self.module_list = nn.ModuleList([nn.Identity(), layer0, nn.Identity(), layer1])
        self.yolo_layers = [1, 3]
        self.nc = nc


class Wrapper(nn.Module):
    """Like DistributedDataParallel: the real model sits in .module."""

    def __init__(self, module):
        super().__init__()
        self.module = module


def make_p(bs=2, nc=3, grids=((4, 4), (8, 8)), seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, 3, ny, nx, 5 + nc, generator=g) * 0.5).requires_grad_(requires_grad) for ny, nx in grids]


def test_smooth_bce():
    assert smooth_BCE(0.0) == (1.0, 0.0)
    assert smooth_BCE(0.1) == pytest.approx((0.95, 0.05))


def test_build_targets_cell_border_and_tiny_box():
    model = FakeDarknet()
    p = make_p(grids=((4, 4),))
    model.yolo_layers = [1]
    # on a cell border: x = y = 0.5 -> grid (2.0, 2.0); a tiny box matching no anchor
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.25, 0.25], [1, 2, 0.3, 0.3, 0.01, 0.01]])
    tcls, tbox, indices, anch = build_targets(p, targets, model, HYP)
    b, a, gj, gi = indices[0]
    # wh (1, 1) vs anchors (1, 1), (2, 2), (4, 4): IoU 1, 0.25, 1/16 -> anchors 0 and 1 (iou_t 0.2)
    assert a.tolist() == [0, 1] and b.tolist() == [0, 0] and tcls[0].tolist() == [1, 1]
    assert gi.tolist() == [2, 2] and gj.tolist() == [2, 2]
    assert torch.allclose(tbox[0], torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2))
    assert torch.allclose(anch[0], torch.tensor([[1.0, 1.0], [2.0, 2.0]]))


def test_build_targets_anchor_major_order_several_in_one_cell():
    model = FakeDarknet()
    model.yolo_layers = [1]
    p = make_p(grids=((4, 4),))
    # both in cell (1, 1): A wh (1, 1) matches anchors 0, 1; B wh (2, 2) matches anchors 0, 1, 2
    targets = torch.tensor([[0, 0, 0.3, 0.3, 0.25, 0.25], [0, 2, 0.35, 0.35, 0.5, 0.5]])
    tcls, tbox, indices, _ = build_targets(p, targets, model, HYP)
    b, a, gj, gi = indices[0]
    assert a.tolist() == [0, 0, 1, 1, 2]
    assert tcls[0].tolist() == [0, 2, 0, 2, 2]
    assert gi.tolist() == [1] * 5 and gj.tolist() == [1] * 5
    assert torch.allclose(tbox[0][:, :2], torch.tensor([[0.2, 0.2], [0.4, 0.4], [0.2, 0.2], [0.4, 0.4], [0.4, 0.4]]))


def test_build_targets_clamps_x_equal_one_and_uses_both_layers():
    model = FakeDarknet()
    p = make_p(grids=((4, 4), (8, 8)))
    targets = torch.tensor([[1, 0, 1.0, 0.999, 0.25, 0.25]])
    tcls, tbox, indices, _ = build_targets(p, targets, model, HYP)
    b, a, gj, gi = indices[0]
    assert gi.tolist() == [3, 3] and gj.tolist() == [3, 3]
    assert torch.allclose(tbox[0][:, 0], torch.tensor([1.0, 1.0]))  # offset from the clamped cell
    assert torch.allclose(tbox[0][:, 1], torch.tensor([0.996, 0.996]), atol=1e-5)
    # 8x8 layer: wh (2, 2) vs (0.5, 0.5), (1, 2), (2, 1): IoU 1/16, 0.5, 0.5 -> anchors 1 and 2
    b1, a1, gj1, gi1 = indices[1]
    assert a1.tolist() == [1, 2] and gi1.tolist() == [7, 7] and gj1.tolist() == [7, 7] and b1.tolist() == [1, 1]


def test_build_targets_empty_and_bad_class():
    model = FakeDarknet()
    p = make_p()
    tcls, tbox, indices, anch = build_targets(p, torch.zeros(0, 6), model, HYP)
    for i in range(2):
        assert tcls[i].numel() == 0 and tbox[i].shape == (0, 4) and anch[i].shape == (0, 2)
        assert all(x.numel() == 0 and x.dtype == torch.long for x in indices[i])
    with pytest.raises(ValueError, match=r"class 5 .*nc=3"):
        build_targets(p, torch.tensor([[0, 5, 0.5, 0.5, 0.2, 0.2]]), model, HYP)


def test_empty_targets_loss():
    model = FakeDarknet()
    p = make_p(requires_grad=True)
    loss, items = compute_loss(p, torch.zeros(0, 6), model, HYP, 1.0)
    assert loss.shape == (1,) and items.shape == (4,)
    assert items[0].item() == 0.0 and items[2].item() == 0.0
    assert math.isfinite(items[1].item()) and items[1].item() > 0
    loss.backward()
    assert all(torch.isfinite(pi.grad).all() for pi in p)


def test_compute_loss_by_hand_single_match():
    """One target, one layer, one matching anchor: every term recomputed from first principles."""
    model = FakeDarknet(nc=3)
    model.yolo_layers = [1]
    p = make_p(bs=1, grids=((4, 4),), seed=3)
    targets = torch.tensor([[0, 2, 0.6, 0.4, 0.15, 0.15]])  # grid (2.4, 1.6) wh (0.6, 0.6): anchor 0 only
    gr = 0.7
    loss, items = compute_loss(p, targets, model, HYP, gr)

    pi = p[0]
    ps = pi[0, 0, 1, 2]
    pxy = torch.sigmoid(ps[:2])
    pwh = torch.exp(ps[2:4]) * torch.tensor([1.0, 1.0])
    pred = torch.cat((pxy - pwh / 2, pxy + pwh / 2))[None].double()
    tgt = torch.tensor([[0.4 - 0.3, 0.6 - 0.3, 0.4 + 0.3, 0.6 + 0.3]], dtype=torch.float64)
    giou = tvops.generalized_box_iou(pred, tgt)[0, 0].item()
    lbox = (1 - giou) * HYP["giou"]
    tobj = torch.zeros(1, 3, 4, 4)
    tobj[0, 0, 1, 2] = (1 - gr) + gr * max(giou, 0.0)
    lobj = nn.functional.binary_cross_entropy_with_logits(pi[..., 4], tobj).item() * HYP["obj"]
    tcls = torch.tensor([0.0, 0.0, 1.0])
    lcls = nn.functional.binary_cross_entropy_with_logits(ps[5:], tcls).item() * HYP["cls"]
    expected = torch.tensor([lbox, lobj, lcls, lbox + lobj + lcls], dtype=torch.float32)
    assert torch.allclose(items, expected, rtol=1e-5, atol=1e-5)
    assert torch.allclose(loss, expected[3:], rtol=1e-5)


def test_single_class_has_no_class_loss_and_no_model_attribute_fallbacks():
    model = FakeDarknet(nc=1)
    p = make_p(nc=1)
    targets = torch.tensor([[0, 0, 0.5, 0.5, 0.3, 0.3]])
    _, items = compute_loss(p, targets, model, HYP, 1.0)
    assert items[2].item() == 0.0 and items[0].item() > 0
    # hyp and gr are required; attributes set on the model (the reference's model.hyp / model.gr) are ignored
    with pytest.raises(TypeError):
        compute_loss(p, targets, model)
    with pytest.raises(TypeError):
        compute_loss(p, targets, model, HYP)
    with pytest.raises(TypeError):
        build_targets(p, targets, model)
    model.hyp, model.gr = dict(HYP, obj=1.0, iou_t=0.9), 0.0
    _, items_attr = compute_loss(p, targets, model, HYP, 1.0)
    assert torch.equal(items_attr, items)
    _, items_gr0 = compute_loss(p, targets, model, HYP, 0.0)
    assert not torch.equal(items_gr0, items)
    with pytest.raises(ValueError, match="hyp"):
        compute_loss(p, targets, model, None, 1.0)
    with pytest.raises(ValueError, match=r"\['giou'\] missing"):
        compute_loss(p, targets, model, {k: v for k, v in HYP.items() if k != "giou"}, 1.0)


def test_ddp_wrapped_model_gives_same_loss():
    model = FakeDarknet()
    p = make_p()
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.3], [1, 2, 0.2, 0.7, 0.1, 0.2]])
    plain = compute_loss(p, targets, model, HYP, 1.0)[1]
    assert torch.equal(plain, compute_loss(p, targets, Wrapper(model), HYP, 1.0)[1])


def test_gradient_reaches_every_layer_at_target_cells():
    model = FakeDarknet()
    p = make_p(requires_grad=True)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.3], [1, 2, 0.2, 0.7, 0.1, 0.2]])
    loss, _ = compute_loss(p, targets, model, HYP, 1.0)
    loss.backward()
    _, _, indices, _ = build_targets(p, targets, model, HYP)
    for pi, (b, a, gj, gi) in zip(p, indices):
        assert b.numel() > 0
        g = pi.grad[b, a, gj, gi]  # (nb, 5 + nc): box, objectness and class channels all receive gradient
        assert (g[:, :4].abs().sum(1) > 0).all()
        assert (g[:, 4] != 0).all()
        assert (g[:, 5:].abs().sum(1) > 0).all()


def test_real_yolov3_tiny_gradients(repo_root):
    models = pytest.importorskip("models")
    model = models.Darknet(repo_root / "cfg" / "yolov3-tiny.cfg", img_size=(64, 64), nc=3)
    model.train()
    p = model(torch.zeros(1, 3, 64, 64))
    # 64 px box: anchor 81x82 of the stride-32 layer; 19 px box: anchor 23x27 of the stride-16 layer
    targets = torch.tensor([[0, 1, 0.5, 0.5, 1.0, 1.0], [0, 2, 0.3, 0.3, 0.3, 0.3]])
    for pi in p:
        pi.retain_grad()
    loss, items = compute_loss(p, targets, model, HYP, 1.0)
    assert torch.isfinite(items).all()
    loss.backward()
    _, _, indices, _ = build_targets(p, targets, model, HYP)
    for pi, (b, a, gj, gi) in zip(p, indices):
        assert b.numel() > 0
        assert (pi.grad[b, a, gj, gi].abs().sum(1) > 0).all()


def test_focal_loss_gamma0_alpha_half_is_half_bce():
    pred = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    true = (torch.rand(20, 4, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    for red in ("mean", "sum", "none"):
        bce = nn.BCEWithLogitsLoss(reduction=red)(pred, true)
        focal = FocalLoss(nn.BCEWithLogitsLoss(reduction=red), gamma=0.0, alpha=0.5)(pred, true)
        assert torch.allclose(focal, 0.5 * bce)
    # gamma > 0 down-weights easy examples
    f = FocalLoss(nn.BCEWithLogitsLoss(), gamma=1.5)(pred, true)
    assert 0 < f < nn.BCEWithLogitsLoss()(pred, true)


def test_xywh_loss_perfect_prediction_and_obj_target():
    model = FakeDarknet(nc=3)
    model.yolo_layers = [1]
    p = make_p(bs=1, grids=((4, 4),))
    targets = torch.tensor([[0, 1, 0.6, 0.4, 0.15, 0.15]])  # grid (2.4, 1.6), wh (0.6, 0.6), anchor 0
    with torch.no_grad():
        p[0][0, 0, 1, 2, :2] = torch.logit(torch.tensor([0.4, 0.6]))
        p[0][0, 0, 1, 2, 2:4] = torch.log(torch.tensor([0.6, 0.6]))
    _, items = compute_loss(p, targets, model, HYP, 1.0, xywh=True)
    assert items[0].item() == pytest.approx(0.0, abs=1e-10)
    tobj = torch.zeros(1, 3, 4, 4)
    tobj[0, 0, 1, 2] = 1.0
    lobj = nn.functional.binary_cross_entropy_with_logits(p[0][..., 4], tobj).item() * HYP["obj"]
    assert items[1].item() == pytest.approx(lobj, rel=1e-5)
    # a wrong xy costs hyp['xy'] * MSE (mean over the 2 coordinates)
    with torch.no_grad():
        p[0][0, 0, 1, 2, :2] = 0.0  # sigmoid 0.5 vs (0.4, 0.6)
    _, items = compute_loss(p, targets, model, HYP, 1.0, xywh=True)
    assert items[0].item() == pytest.approx(HYP["xy"] * 0.01, rel=1e-5)


@pytest.mark.parametrize("fl_gamma, xywh", [(0.0, False), (1.5, False), (0.0, True)])
def test_denominators_local_counts_equal_plain_mean(fl_gamma, xywh):
    hyp = dict(HYP, fl_gamma=fl_gamma)
    model = FakeDarknet()
    p = make_p(bs=4, seed=5)
    targets = torch.tensor(
        [
            [0, 1, 0.5, 0.5, 0.3, 0.3],
            [1, 2, 0.2, 0.7, 0.1, 0.2],
            [2, 0, 0.8, 0.1, 0.05, 0.3],
            [3, 1, 0.4, 0.6, 0.6, 0.5],
        ]
    )
    counts = loss_counts(p, targets, model, hyp)
    assert counts[0][2] == 4 * 3 * 4 * 4 and counts[1][2] == 4 * 3 * 8 * 8
    assert all(c[1] == c[0] * 3 for c in counts)
    plain, plain_items = compute_loss(p, targets, model, hyp, 1.0, xywh=xywh)
    den, den_items = compute_loss(p, targets, model, hyp, 1.0, xywh=xywh, denominators=counts)
    assert torch.allclose(plain_items, den_items, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fl_gamma", [0.0, 1.5])
def test_denominators_split_batch_sums_to_whole(fl_gamma):
    hyp = dict(HYP, fl_gamma=fl_gamma)
    model = FakeDarknet()
    p = make_p(bs=4, seed=6, requires_grad=True)
    targets = torch.tensor(
        [
            [0, 1, 0.5, 0.5, 0.3, 0.3],
            [1, 2, 0.2, 0.7, 0.1, 0.2],
            [3, 0, 0.8, 0.1, 0.05, 0.3],
            [3, 1, 0.4, 0.6, 0.6, 0.5],
        ]
    )
    whole, whole_items = compute_loss(p, targets, model, hyp, 1.0)
    halves = []
    for lo, hi in ((0, 2), (2, 4)):
        t = targets[(targets[:, 0] >= lo) & (targets[:, 0] < hi)].clone()
        t[:, 0] -= lo
        halves.append(([pi[lo:hi] for pi in p], t))
    local = [loss_counts(ph, th, model, hyp) for ph, th in halves]
    global_counts = [tuple(a + b for a, b in zip(c0, c1)) for c0, c1 in zip(*local)]
    parts = [compute_loss(ph, th, model, hyp, 1.0, denominators=global_counts) for ph, th in halves]
    total_items = parts[0][1] + parts[1][1]
    assert torch.allclose(total_items, whole_items, rtol=1e-6, atol=1e-6)
    # gradients agree as well
    g_whole = torch.autograd.grad(whole, p)
    g_split = torch.autograd.grad(parts[0][0] + parts[1][0], p)
    for a, b in zip(g_whole, g_split):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-8)

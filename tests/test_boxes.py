"""utils.boxes: conversions, clipping, rescaling and IoU variants against torchvision.ops as oracle."""

import numpy as np
import pytest
import torch
import torchvision.ops as tvops

from utils.boxes import (
    bbox_iou,
    box_iou,
    clip_coords,
    scale_coords,
    wh_iou,
    xywh2xyxy,
    xywhn2xyxy,
    xyxy2xywh,
    xyxy2xywhn,
)


def random_xyxy(n: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=dtype) * 100
    wh = torch.rand(n, 2, generator=g, dtype=dtype) * 60 + 1
    return torch.cat((xy, xy + wh), 1)


def test_xyxy_xywh_round_trip_tensor_and_ndarray():
    b = random_xyxy(20, 0)
    w = xyxy2xywh(b)
    assert torch.allclose(w[:, 0], (b[:, 0] + b[:, 2]) / 2)
    assert torch.allclose(w[:, 3], b[:, 3] - b[:, 1])
    assert torch.allclose(xywh2xyxy(w), b)
    a = b.numpy().copy()
    a_in = a.copy()
    out = xywh2xyxy(xyxy2xywh(a))
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, a_in)
    np.testing.assert_array_equal(a, a_in)  # input untouched


def test_conversions_return_copies():
    b = torch.tensor([[10.0, 20.0, 4.0, 6.0, 0.9, 3.0]])
    y = xywh2xyxy(b)
    assert y is not b and torch.equal(b, torch.tensor([[10.0, 20.0, 4.0, 6.0, 0.9, 3.0]]))
    assert torch.equal(y, torch.tensor([[8.0, 17.0, 12.0, 23.0, 0.9, 3.0]]))


def random_xywhn(n: int, seed: int) -> np.ndarray:
    """(n, 5) float32 label rows ``class, x, y, w, h`` normalised, as a label file gives them."""
    rng = np.random.default_rng(seed)
    wh = rng.uniform(0.01, 0.6, (n, 2))
    xy = wh / 2 + rng.uniform(0, 1, (n, 2)) * (1 - wh)
    return np.concatenate((rng.integers(0, 80, (n, 1)), xy, wh), 1).astype(np.float32)


def test_xywhn2xyxy_is_the_letterbox_formula_to_the_bit():
    x = random_xywhn(50, 0)
    ratio, (w, h), pad = (0.8125, 0.8125), (333, 500), (12.5, 0.0)
    want = np.empty_like(x)  # the letterboxed label rows as written out before this function existed
    want[:, 0] = x[:, 0]
    want[:, 1] = ratio[0] * w * (x[:, 1] - x[:, 3] / 2) + pad[0]
    want[:, 2] = ratio[1] * h * (x[:, 2] - x[:, 4] / 2) + pad[1]
    want[:, 3] = ratio[0] * w * (x[:, 1] + x[:, 3] / 2) + pad[0]
    want[:, 4] = ratio[1] * h * (x[:, 2] + x[:, 4] / 2) + pad[1]
    got = np.concatenate((x[:, :1], xywhn2xyxy(x[:, 1:], ratio[0] * w, ratio[1] * h, pad[0], pad[1])), 1)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


def test_xywhn2xyxy_takes_one_size_and_offset_per_box():
    x = random_xywhn(12, 1)
    geo = np.random.default_rng(2).uniform(50, 600, (12, 4)).astype(np.float32)  # per box: w, h, x offset, y offset
    half = x[:, 3:5] / 2
    want = np.empty((12, 4), np.float32)  # the mosaic's vectorised form
    want[:, 0:2] = geo[:, :2] * (x[:, 1:3] - half) + geo[:, 2:]
    want[:, 2:4] = geo[:, :2] * (x[:, 1:3] + half) + geo[:, 2:]
    np.testing.assert_array_equal(xywhn2xyxy(x[:, 1:5], geo[:, 0], geo[:, 1], geo[:, 2], geo[:, 3]), want)


def test_xywhn2xyxy_tensor_without_padding_equals_scaling_xywh2xyxy():
    t = torch.from_numpy(random_xywhn(30, 3)[:, 1:])
    whwh = torch.tensor([416, 320, 416, 320])
    assert torch.equal(xywhn2xyxy(t, 416, 320), xywh2xyxy(t) * whwh)
    assert torch.equal(xywhn2xyxy(t, 1, 1), xywh2xyxy(t))


def test_xyxy2xywhn_is_dividing_xyxy2xywh_by_the_size_to_the_bit():
    b = random_xyxy(40, 4, dtype=torch.float32)
    scale = torch.tensor([640, 480, 640, 480])
    assert torch.equal(xyxy2xywhn(b, 640, 480), xyxy2xywh(b) / scale)
    a = b.numpy().copy()
    a_in = a.copy()
    got = xyxy2xywhn(a, 640, 480)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    np.testing.assert_array_equal(got, xyxy2xywh(a) / np.array([640, 480, 640, 480], dtype=np.float32))
    np.testing.assert_array_equal(a, a_in)  # input untouched


def test_xywhn_round_trip_and_extra_columns():
    x = torch.from_numpy(random_xywhn(25, 5)).double()[:, [1, 2, 3, 4, 0]]  # class moved to the end: kept as is
    y = xywhn2xyxy(x, 500, 375)
    assert torch.equal(y[:, 4], x[:, 4]) and y is not x
    assert ((y[:, 2] > y[:, 0]) & (y[:, 3] > y[:, 1])).all() and y[:, :4].min() >= 0 and y[:, 2].max() <= 500
    back = xyxy2xywhn(y, 500, 375)
    assert torch.allclose(back, x, atol=1e-12) and torch.equal(back[:, 4], x[:, 4])
    assert torch.equal(xywhn2xyxy(torch.tensor([[0.5, 0.5, 0.5, 0.25]]), 100, 200, 10, 20),
                       torch.tensor([[35.0, 95.0, 85.0, 145.0]]))


@pytest.mark.parametrize(
    "kind, oracle",
    [
        ("iou", tvops.box_iou),
        ("GIoU", tvops.generalized_box_iou),
        ("DIoU", tvops.distance_box_iou),
        ("CIoU", tvops.complete_box_iou),
    ],
)
@pytest.mark.parametrize("x1y1x2y2", [True, False])
def test_bbox_iou_matches_torchvision(kind, oracle, x1y1x2y2):
    b1, b2 = random_xyxy(64, 1), random_xyxy(64, 2)
    b2[:8] = b1[:8] + 0.5  # some heavy overlaps, the rest mostly partial or disjoint
    expected = torch.diagonal(oracle(b1, b2))
    flags = {k: kind == k for k in ("GIoU", "DIoU", "CIoU")}
    a1, a2 = (b1, b2) if x1y1x2y2 else (xyxy2xywh(b1), xyxy2xywh(b2))
    got = bbox_iou(a1.t(), a2, x1y1x2y2=x1y1x2y2, **flags)
    assert got.shape == (64,)
    assert torch.allclose(got, expected, atol=1e-5)


def test_bbox_iou_single_box_broadcast_and_eps():
    box = torch.tensor([0.0, 0.0, 10.0, 10.0])
    others = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    iou = bbox_iou(box, others)
    assert torch.allclose(iou, torch.tensor([1.0, 50 / 150, 0.0]))
    # zero-area boxes stay finite thanks to the 1e-16 terms
    z = torch.zeros(1, 4)
    assert torch.isfinite(bbox_iou(z[0], z, GIoU=True)).all()
    assert torch.isfinite(bbox_iou(z[0], z, DIoU=True)).all()


def test_ciou_alpha_has_no_gradient_path():
    b1 = torch.tensor([[5.0], [5.0], [4.0], [6.0]], requires_grad=True)
    b2 = torch.tensor([[6.0, 5.5, 5.0, 5.0]])
    bbox_iou(b1, b2, x1y1x2y2=False, CIoU=True).sum().backward()
    assert torch.isfinite(b1.grad).all() and b1.grad.abs().sum() > 0


def test_box_iou_and_wh_iou():
    b1, b2 = random_xyxy(7, 3), random_xyxy(5, 4)
    assert torch.allclose(box_iou(b1, b2), tvops.box_iou(b1, b2))
    wh1 = torch.tensor([[2.0, 2.0], [4.0, 1.0]])
    wh2 = torch.tensor([[1.0, 1.0], [2.0, 2.0], [1.0, 4.0]])
    expected = torch.tensor([[1 / 4, 1.0, 2 / 6], [1 / 4, 2 / 6, 1 / 7]])
    assert torch.allclose(wh_iou(wh1, wh2), expected)


def test_clip_coords_in_place_tensor_and_ndarray():
    b = torch.tensor([[-5.0, -1.0, 700.0, 500.0]])
    out = clip_coords(b, (480, 640))
    assert out is b and b.tolist() == [[0.0, 0.0, 640.0, 480.0]]
    a = np.array([[-5.0, 10.0, 700.0, 500.0]])
    clip_coords(a, (480, 640, 3))
    assert a.tolist() == [[0.0, 10.0, 640.0, 480.0]]


def test_scale_coords_inverts_letterbox():
    # 640x480 image letterboxed to 416x416: gain 0.65, image 416x312, pad 52 top and bottom
    h0, w0 = 480, 640
    box0 = torch.tensor([[100.0, 50.0, 300.0, 400.0]])
    gain, pad = 0.65, (0.0, 52.0)
    box1 = box0.clone()
    box1[:, [0, 2]] = box1[:, [0, 2]] * gain + pad[0]
    box1[:, [1, 3]] = box1[:, [1, 3]] * gain + pad[1]
    assert torch.allclose(scale_coords((416, 416), box1.clone(), (h0, w0)), box0, atol=1e-4)
    # explicit ratio_pad as recorded by the loader (rect batches may pad differently)
    ratio_pad = ((gain, gain), (0.0, 20.0))
    box2 = box0 * gain + torch.tensor([0.0, 20.0, 0.0, 20.0])
    assert torch.allclose(scale_coords((352, 416), box2, (h0, w0, 3), ratio_pad), box0, atol=1e-4)
    # result clipped to the original image
    far = torch.tensor([[-10.0, -10.0, 500.0, 500.0]])
    out = scale_coords((416, 416), far, (h0, w0))
    assert out.min() >= 0 and out[0, 2] <= w0 and out[0, 3] <= h0

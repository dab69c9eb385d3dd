"""utils.boxes: conversions, clipping, rescaling and IoU variants against torchvision.ops as oracle."""

import numpy as np
import pytest
import torch
import torchvision.ops as tvops

from utils.boxes import bbox_iou, box_iou, clip_coords, scale_coords, wh_iou, xywh2xyxy, xyxy2xywh


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

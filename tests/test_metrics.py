"""utils.metrics: AP on hand-made arrays, greedy matching against a literal loop, fitness."""

import numpy as np
import pytest
import torch

from utils.boxes import box_iou
from utils.metrics import ap_per_class, compute_ap, fitness, match_predictions, trapezoid

IOUV = torch.linspace(0.5, 0.95, 10)


def test_compute_ap_hand_values():
    # recall 1/3, 1/3, 2/3, 1 with precision 1, 1/2, 2/3, 3/4 -> envelope 1 up to recall 1/3, then 3/4;
    # sampled at 0, 0.01, .., 1: f = 1 for k <= 33, 0.75 for 34..99 and 0 at k = 100 (the padded end point)
    # trapezoid: 0.01 * (1/2 + 33 * 1 + 66 * 0.75 + 0) = 0.83
    ap = compute_ap(np.array([1 / 3, 1 / 3, 2 / 3, 1.0]), np.array([1.0, 0.5, 2 / 3, 0.75]))
    assert ap == pytest.approx(0.83)
    # a perfect detector scores 0.995, not 1: the curve is closed at recall 1 with precision 0 (reference)
    assert compute_ap(np.array([0.5, 1.0]), np.array([1.0, 1.0])) == pytest.approx(0.995)
    assert isinstance(ap, float)


def test_trapezoid_equals_numpys_bit_for_bit():
    """compute_ap integrates without np.trapezoid (numpy >= 2 only), with numpy's own arithmetic."""
    numpy_trapezoid = getattr(np, "trapezoid", None) or np.trapz
    rng = np.random.default_rng(0)
    x = np.linspace(0, 1, 101)
    for _ in range(50):
        y = np.flip(np.maximum.accumulate(np.flip(rng.random(101))))
        assert trapezoid(y, x) == float(numpy_trapezoid(y, x))
    assert trapezoid(np.array([0.0, 2.0, 2.0]), np.array([0.0, 1.0, 3.0])) == 5.0


def test_ap_per_class_hand_made():
    # class 0: 3 labels, predictions (conf, tp) = (0.9, 1) (0.8, 0) (0.7, 1) (0.6, 1) given out of order
    # class 1: 2 labels, no predictions -> zeros; class 7 predicted but not labelled -> ignored
    conf = np.array([0.7, 0.9, 0.6, 0.8, 0.95])
    pred_cls = np.array([0, 0, 0, 0, 7])
    tp = np.array([[1, 1], [1, 0], [1, 1], [0, 0], [1, 1]], dtype=bool)  # two IoU columns
    target_cls = np.array([0, 0, 0, 1, 1])
    p, r, ap, f1, classes = ap_per_class(tp, conf, pred_cls, target_cls)
    assert classes.tolist() == [0, 1] and classes.dtype == np.int32
    assert p.shape == r.shape == ap.shape == f1.shape == (2, 2)
    # at conf 0.1 (below every prediction) the curves' last points: precision 3/4, recall 1 (column 0),
    # and that one value fills the whole row (reference behaviour)
    assert p[0].tolist() == [0.75, 0.75] and r[0].tolist() == [1.0, 1.0]
    assert ap[0, 0] == pytest.approx(0.83)
    # column 1: tp 0, 0, 1, 1 -> recall 0, 0, 1/3, 2/3; precision 0, 0, 1/3, 1/2 -> envelope 1/2 up to 2/3
    # samples: k = 0..66 -> 0.5, k >= 67 lies past the padded end (2/3 + 1e-3, 0) -> 0
    # trapezoid: 0.01 * (1/2 * 0.5 + 65 * 0.5 + 1/2 * 0.5) + 0.01 * (0.5 + 0) / 2 = 0.3325
    assert ap[0, 1] == pytest.approx(0.3325)
    assert f1[0, 0] == pytest.approx(2 * 0.75 / 1.75)
    assert np.all(p[1] == 0) and np.all(ap[1] == 0) and np.all(f1[1] == 0)


def reference_matching(pred: torch.Tensor, labels: torch.Tensor, iouv: torch.Tensor) -> torch.Tensor:
    """The reference's per-class loop, written literally (the oracle for the vectorised version)."""
    correct = torch.zeros(pred.shape[0], iouv.numel(), dtype=torch.bool)
    detected = []
    tcls = labels[:, 0]
    for cls in torch.unique(tcls):
        ti = (cls == tcls).nonzero().view(-1)
        pi = (cls == pred[:, 5]).nonzero().view(-1)
        if pi.shape[0]:
            ious, i = box_iou(pred[pi, :4], labels[ti, 1:5]).max(1)
            for j in (ious > iouv[0]).nonzero():
                d = ti[i[j]]
                if d not in detected:
                    detected.append(d)
                    correct[pi[j]] = ious[j] > iouv
                    if len(detected) == labels.shape[0]:
                        break
    return correct


def test_match_predictions_hand_cases():
    labels = torch.tensor([[0, 0.0, 0.0, 10.0, 10.0], [0, 20.0, 0.0, 30.0, 10.0], [1, 0.0, 20.0, 10.0, 30.0]])
    pred = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0, 0.9, 0],  # exact hit on label 0
            [0.0, 0.0, 10.0, 9.0, 0.8, 0],  # also best on label 0, already taken -> false
            [20.0, 0.0, 30.0, 7.0, 0.7, 0],  # IoU 0.7 with label 1: correct at 0.50 .. 0.65
            [0.0, 20.0, 10.0, 30.0, 0.6, 0],  # right box, wrong class
        ]
    )
    correct = match_predictions(pred, labels, IOUV)
    assert correct.dtype == torch.bool and correct.shape == (4, 10)
    assert correct[0].all() and not correct[1].any() and not correct[3].any()
    assert correct[2].tolist() == [True] * 4 + [False] * 6
    assert torch.equal(correct, reference_matching(pred, labels, IOUV))
    # no labels or no predictions
    assert not match_predictions(pred, labels[:0], IOUV).any()
    assert match_predictions(pred[:0], labels, IOUV).shape == (0, 10)


def test_match_predictions_no_fallback_to_second_best_label():
    labels = torch.tensor([[0, 0.0, 0.0, 10.0, 10.0], [0, 4.0, 0.0, 14.0, 10.0]])
    pred = torch.tensor([[0.0, 0.0, 10.0, 10.0, 0.9, 0], [1.0, 0.0, 11.0, 10.0, 0.8, 0]])
    # the second prediction's best label (0) is taken; its IoU 0.6 with label 1 does not count
    correct = match_predictions(pred, labels, IOUV)
    assert correct[0].all() and not correct[1].any()
    assert torch.equal(correct, reference_matching(pred, labels, IOUV))


@pytest.mark.parametrize("seed", range(5))
def test_match_predictions_equals_reference_loop_random(seed):
    g = torch.Generator().manual_seed(seed)
    m, n = 12, 40
    lxy = torch.rand(m, 2, generator=g) * 100
    labels = torch.cat((torch.randint(0, 3, (m, 1), generator=g).float(), lxy, lxy + 20), 1)
    src = torch.randint(0, m, (n,), generator=g)
    jitter = torch.randn(n, 4, generator=g) * 3
    boxes = labels[src, 1:5] + jitter
    cls = torch.where(torch.rand(n, generator=g) < 0.8, labels[src, 0], torch.randint(0, 3, (n,), generator=g).float())
    pred = torch.cat((boxes, torch.rand(n, 1, generator=g), cls[:, None]), 1)
    pred = pred[pred[:, 4].argsort(descending=True)]
    correct = match_predictions(pred, labels, IOUV)
    assert correct.any()
    assert torch.equal(correct, reference_matching(pred, labels, IOUV))


def test_fitness_weights():
    row = np.array([0.1, 0.2, 0.6, 0.3, 0.4, 1.0, 2.0, 3.0])
    assert fitness(row) == pytest.approx(0.01 * 0.2 + 0.99 * 0.6)  # the reference's weights: R and mAP@0.5 only
    rows = np.stack([row, row * 0.5])
    np.testing.assert_allclose(fitness(rows), [0.596, 0.298])

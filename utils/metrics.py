"""Detection metrics: greedy prediction-to-label matching, per-class P/R/AP/F1 and the fitness score.

Results order used by ``fitness``, ``test()`` and ``results.txt``:
``(P, R, mAP@0.5, mAP@0.5:0.95, F1, val_box, val_obj, val_cls)``.
"""

from __future__ import annotations

import numpy as np
import torch

from utils.boxes import box_iou

# Weights of (P, R, mAP@0.5, mAP@0.5:0.95, F1) in the fitness score: the seed's mAP@0.5 and F1 combination.
FITNESS_WEIGHTS = np.array([0.0, 0.01, 0.99, 0.0, 0.0])  # the reference's: 0.01 R + 0.99 mAP@0.5


def compute_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under one precision-recall curve (COCO-style 101-point interpolation).

    Args:
        recall: (n,) increasing recall at each prediction (sorted by descending confidence).
        precision: (n,) precision at each prediction.

    Returns:
        AP: recall padded with 0 in front and ``min(recall[-1] + 1e-3, 1)`` at the end, precision with 0 at
        both ends and made monotone from the right, interpolated at 101 recall points in [0, 1] and
        integrated with the trapezoid rule.
    """
    mrec = np.concatenate(([0.0], recall, [min(recall[-1] + 1e-3, 1.0)]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    x = np.linspace(0, 1, 101)
    return trapezoid(np.interp(x, mrec, mpre), x)


def trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    """Trapezoid-rule integral of ``y`` (n,) over ``x`` (n,): the arithmetic of numpy's ``trapezoid`` (``trapz``
    before numpy 2), operation for operation, so it gives the same float on every numpy the project allows."""
    return float((np.diff(x) * (y[1:] + y[:-1]) / 2.0).sum())


def ap_per_class(
    tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, AP and F1 per class present in the targets.

    Args:
        tp: (n, niou) true-positive flags (bool or 0/1) of each prediction at each IoU threshold.
        conf: (n,) prediction scores.
        pred_cls: (n,) predicted classes.
        target_cls: (m,) classes of all labels.

    Returns:
        p, r, ap, f1: (nc_present, niou) each. As in the reference, P and R are read at confidence 0.1 on
        the first IoU column's curves (linear interpolation) and that one value fills the whole row; ap has
        one AP per IoU column; f1 = 2pr / (p + r + 1e-16). Classes with no predictions get zeros.
        unique_classes: (nc_present,) int32, the sorted classes of ``target_cls``.
    """
    tp = np.asarray(tp, dtype=np.float64)
    if tp.ndim == 1:
        tp = tp[:, None]
    conf = np.asarray(conf)
    pred_cls = np.asarray(pred_cls)
    target_cls = np.asarray(target_cls)
    i = np.argsort(-conf)
    tp, conf, pred_cls = tp[i], conf[i], pred_cls[i]

    unique_classes = np.unique(target_cls)
    pr_score = 0.1  # confidence at which P and R are read
    s = (unique_classes.shape[0], tp.shape[1])
    ap, p, r = np.zeros(s), np.zeros(s), np.zeros(s)
    for ci, c in enumerate(unique_classes):
        i = pred_cls == c
        n_gt = (target_cls == c).sum()
        n_p = i.sum()
        if n_p == 0 or n_gt == 0:
            continue
        fpc = (1 - tp[i]).cumsum(0)
        tpc = tp[i].cumsum(0)
        recall = tpc / (n_gt + 1e-16)
        r[ci] = np.interp(-pr_score, -conf[i], recall[:, 0])
        precision = tpc / (tpc + fpc)
        p[ci] = np.interp(-pr_score, -conf[i], precision[:, 0])
        for j in range(tp.shape[1]):
            ap[ci, j] = compute_ap(recall[:, j], precision[:, j])
    f1 = 2 * p * r / (p + r + 1e-16)
    return p, r, ap, f1, unique_classes.astype("int32")


def match_predictions(pred: torch.Tensor, labels: torch.Tensor, iouv: torch.Tensor) -> torch.Tensor:
    """Mark each prediction as a true positive or not at each IoU threshold (reference greedy matching).

    Each prediction looks at its best-IoU label of the same class. Going through predictions in their given
    order (descending score after NMS), a prediction whose best IoU exceeds ``iouv[0]`` claims that label if
    no earlier prediction has; it is then correct at every threshold its IoU exceeds. Everything else is
    incorrect. (A prediction does not fall back to its second-best label, as in the reference.)

    Args:
        pred: (n, 6) ``x1, y1, x2, y2, score, class``, xyxy pixels.
        labels: (m, 5) ``class, x1, y1, x2, y2``, xyxy pixels.
        iouv: (niou,) increasing IoU thresholds, e.g. ``torch.linspace(0.5, 0.95, 10)``.

    Returns:
        correct: (n, niou) bool.
    """
    n, m = pred.shape[0], labels.shape[0]
    correct = torch.zeros(n, iouv.numel(), dtype=torch.bool, device=pred.device)
    if not n or not m:
        return correct
    iou = box_iou(pred[:, :4], labels[:, 1:5])  # (n, m)
    same_cls = pred[:, 5:6] == labels[None, :, 0]
    iou = torch.where(same_cls, iou, torch.full_like(iou, -1.0))  # other classes never match
    best_iou, best = iou.max(1)  # first maximum on ties, as max over one class's labels in order
    cand = (best_iou > iouv[0]).nonzero().view(-1)  # in prediction order
    if not cand.numel():
        return correct
    # the first candidate (in prediction order) to name a label claims it
    first = torch.full((m,), n, dtype=torch.long, device=pred.device)
    first = first.scatter_reduce(0, best[cand], cand, reduce="amin")
    winners = first[first < n]
    correct[winners] = best_iou[winners, None] > iouv.to(best_iou.device)
    return correct


def fitness(x: np.ndarray) -> np.ndarray | float:
    """Model fitness ``0.01 * R + 0.99 * mAP@0.5`` (the reference's, for best.pt and --evolve) of results rows
    (n, >=5) or one row (>=5,).

    Columns are in results order (P, R, mAP@0.5, mAP@0.5:0.95, F1, ...); weights in ``FITNESS_WEIGHTS``.
    Returns (n,) for 2-D input, a float for 1-D input.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        return float((x[:5] * FITNESS_WEIGHTS).sum())
    return (x[:, :5] * FITNESS_WEIGHTS).sum(1)

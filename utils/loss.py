"""YOLO training loss: target assignment (``build_targets``) and the box/objectness/class loss.

Shapes and units:
    p: list with one raw train-mode output per YOLO layer, (bs, na, ny, nx, 5 + nc), in cfg order.
    targets: (nt, 6) rows ``(image, class, x, y, w, h)``, xywh normalised to 0..1.
    Grid units: one unit is one cell of that layer's grid (pixels / stride).

Glossary: nc classes, na anchors per layer, nt targets, nb matches in a layer, gr the GIoU ratio of the
objectness target, tbox/tcls the matched target boxes/classes.

Where settings come from: ``hyp`` (a dict with at least giou, cls, cls_pw, obj, obj_pw, iou_t, fl_gamma; xy
and wh for the MSE box loss) and ``gr`` are required arguments: no state reaches the loss through model
attributes (the reference read ``model.hyp`` and ``model.gr``, so its validation losses used whatever ``gr``
was last set). Only the network's own structure is read from the model: ``nc``, ``yolo_layers`` and the
anchors. A DDP-wrapped model is unwrapped through its ``module`` attribute.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from utils.boxes import bbox_iou, wh_iou

LOSS_HYP_KEYS = ("giou", "cls", "cls_pw", "obj", "obj_pw", "iou_t", "fl_gamma")


def smooth_BCE(eps: float = 0.1) -> tuple[float, float]:
    """Label-smoothing targets for BCE: (positive, negative) = (1 - eps / 2, eps / 2)."""
    return 1.0 - 0.5 * eps, 0.5 * eps


class FocalLoss(nn.Module):
    """Focal loss wrapper around an elementwise BCE-with-logits loss.

    ``loss = bce * alpha_factor * (1 - p_t) ** gamma`` with ``p_t`` the predicted probability of the true
    label and ``alpha_factor = alpha`` for positives, ``1 - alpha`` for negatives. The reduction (mean, sum
    or none) is taken from ``loss_fcn``, which is switched to elementwise output.
    """

    def __init__(self, loss_fcn: nn.BCEWithLogitsLoss, gamma: float = 1.5, alpha: float = 0.25):
        super().__init__()
        self.loss_fcn = loss_fcn
        self.gamma = gamma
        self.alpha = alpha
        self.reduction = loss_fcn.reduction
        self.loss_fcn.reduction = "none"

    def forward(self, pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        loss = self.loss_fcn(pred, true)
        pred_prob = torch.sigmoid(pred)
        p_t = true * pred_prob + (1 - true) * (1 - pred_prob)
        alpha_factor = true * self.alpha + (1 - true) * (1 - self.alpha)
        loss = loss * (alpha_factor * (1.0 - p_t) ** self.gamma)
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def _check_hyp(hyp: dict, xywh: bool = False) -> dict:
    """``hyp`` itself, after checking it holds the keys the loss needs."""
    if hyp is None:
        raise ValueError("loss: hyp is None; pass the loss hyperparameters (see utils/hyp.py DEFAULT_HYP)")
    needed = LOSS_HYP_KEYS + (("xy", "wh") if xywh else ())
    missing = [k for k in needed if k not in hyp]
    if missing:
        raise ValueError(f"loss: hyperparameters {missing} missing from hyp; add them (see utils/hyp.py DEFAULT_HYP)")
    return hyp


def build_targets(
    p: Sequence[torch.Tensor], targets: torch.Tensor, model: nn.Module, hyp: dict
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple[torch.Tensor, ...]], list[torch.Tensor]]:
    """Assign targets to anchors and grid cells of every YOLO layer.

    A target is matched to every anchor of a layer whose width-height IoU with it exceeds ``hyp['iou_t']``;
    the matched rows are kept anchor-major (all matches of anchor 0, then anchor 1, ...), which decides the
    winner when two targets land on the same cell and anchor. Cell indices are clamped to the grid (a
    target centred at x = 1.0 goes to the last column) and the in-cell offsets are taken from the clamped
    cell.

    Args:
        p: per-layer raw outputs (bs, na, ny, nx, 5 + nc); only their shapes are used.
        targets: (nt, 6) ``(image, class, x, y, w, h)``, xywh normalised.
        model: Darknet (or DDP-wrapped) with ``yolo_layers``, ``module_list[j].anchor_vec`` (na, 2) grid
            units and ``nc``.
        hyp: dict with ``iou_t``.

    Returns:
        Per-layer lists: tcls (nb,) long; tbox (nb, 4) xywh in grid units with xy relative to the cell
        (0..1); indices (b, a, gj, gi) each (nb,) long (image, anchor, grid row, grid column); anch (nb, 2)
        matched anchors in grid units.

    Raises:
        ValueError: a target class outside ``0 .. nc - 1``.
    """
    m = _unwrap(model)
    if hyp is None or "iou_t" not in hyp:
        raise ValueError("build_targets: no hyp['iou_t']; pass the loss hyperparameters (see utils/hyp.py)")
    iou_t = hyp["iou_t"]
    nt = targets.shape[0]
    device = targets.device
    if nt:
        cls = targets[:, 1]
        bad = (cls < 0) | (cls >= m.nc)
        if bad.any():
            raise ValueError(
                f"build_targets: target class {int(cls[bad][0].item())} is outside 0..{m.nc - 1} (nc={m.nc}); "
                "fix the labels or the 'classes' of the cfg/.data"
            )

    tcls, tbox, indices, anch = [], [], [], []
    for i, j in enumerate(m.yolo_layers):
        anchors = m.module_list[j].anchor_vec.to(device)
        na = anchors.shape[0]
        ny, nx = p[i].shape[2], p[i].shape[3]
        gain = targets.new_tensor([1, 1, nx, ny, nx, ny])
        t = targets * gain
        if nt:
            match = wh_iou(anchors, t[:, 4:6]) > iou_t  # (na, nt)
            a = torch.arange(na, device=device).view(na, 1).repeat(1, nt)[match]
            t = t.repeat(na, 1, 1)[match]
        else:
            a = torch.zeros(0, dtype=torch.long, device=device)
        b, c = t[:, :2].long().T
        gxy = t[:, 2:4]
        gwh = t[:, 4:6]
        gij = gxy.long()
        gi = gij[:, 0].clamp(0, nx - 1)
        gj = gij[:, 1].clamp(0, ny - 1)
        gij = torch.stack((gi, gj), 1)
        indices.append((b, a, gj, gi))
        tbox.append(torch.cat((gxy - gij, gwh), 1))
        anch.append(anchors[a])
        tcls.append(c)
    return tcls, tbox, indices, anch


def loss_counts(
    p: Sequence[torch.Tensor], targets: torch.Tensor, model: nn.Module, hyp: dict
) -> list[tuple[int, int, int]]:
    """Local element counts behind each mean in ``compute_loss``, one ``(n_box, n_cls, n_obj)`` per layer.

    n_box = matches, n_cls = matches * nc when nc > 1 else 0, n_obj = cells (bs * na * ny * nx). Summed over
    DDP ranks they are the ``denominators`` that make the per-rank losses add up to the global-batch loss.
    """
    m = _unwrap(model)
    _, _, indices, _ = build_targets(p, targets, m, hyp=hyp)
    counts = []
    for pi, (b, _, _, _) in zip(p, indices):
        nb = int(b.shape[0])
        counts.append((nb, nb * m.nc if m.nc > 1 else 0, int(pi[..., 0].numel())))
    return counts


def _criteria(h: dict, device: torch.device, reduction: str) -> tuple[nn.Module, nn.Module, nn.Module]:
    """The class and objectness BCEs (focal when ``fl_gamma > 0``) and the MSE of the xywh box loss."""
    BCEcls = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([h["cls_pw"]], device=device), reduction=reduction)
    BCEobj = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([h["obj_pw"]], device=device), reduction=reduction)
    if h["fl_gamma"] > 0:
        BCEcls, BCEobj = FocalLoss(BCEcls, h["fl_gamma"]), FocalLoss(BCEobj, h["fl_gamma"])
    return BCEcls, BCEobj, nn.MSELoss(reduction=reduction)


def _matched_box_loss(ps: torch.Tensor, tbox: torch.Tensor, anchors: torch.Tensor, h: dict, gr: float, xywh: bool,
                      mse: nn.Module, per: Callable[[torch.Tensor, int], torch.Tensor], n_box: int, mean: bool,
                      dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | float]:
    """One layer's box term over its matched cells (``ps`` (nb, 5 + nc), ``tbox`` and ``anchors`` in grid units)
    and their objectness target: GIoU-weighted by ``gr``, or 1.0 with the MSE ``xywh`` loss."""
    pxy = ps[:, :2].sigmoid()
    if xywh:
        twh = torch.log(tbox[:, 2:4] / anchors)
        lxy = per(mse(pxy, tbox[:, :2]), 2 * n_box)
        lwh = per(mse(ps[:, 2:4], twh), 2 * n_box)
        return h["xy"] * lxy + h["wh"] * lwh, 1.0
    pwh = ps[:, 2:4].exp().clamp(max=1e3) * anchors
    pbox = torch.cat((pxy, pwh), 1)
    giou = bbox_iou(pbox.t(), tbox, x1y1x2y2=False, GIoU=True)
    box = (1.0 - giou).mean() if mean else (1.0 - giou).sum() / n_box
    return box, (1.0 - gr) + gr * giou.detach().clamp(0).type(dtype)


def compute_loss(
    p: Sequence[torch.Tensor],
    targets: torch.Tensor,
    model: nn.Module,
    hyp: dict,
    gr: float,
    xywh: bool = False,
    denominators: Sequence[tuple[int, int, int]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """YOLO loss of raw train-mode outputs against normalised targets.

    - box: ``1 - GIoU`` of the decoded prediction (sigmoid xy, exp(wh) clamped to 1e3 times the anchor)
      against the matched target, mean over matches, summed over layers, times ``hyp['giou']``.
      With ``xywh=True`` (the seed's ``--xywh`` option) it is instead ``hyp['xy'] * MSE(sigmoid xy, target
      xy) + hyp['wh'] * MSE(raw wh, log(target wh / anchor))`` per layer and ``hyp['giou']`` is not applied.
    - objectness: BCE-with-logits (pos_weight ``obj_pw``) over all cells of every layer; target
      ``(1 - gr) + gr * GIoU.detach().clamp(0)`` at matched cells (1 with ``xywh``), 0 elsewhere; times
      ``hyp['obj']``.
    - class: BCE-with-logits (pos_weight ``cls_pw``) on matched cells when nc > 1, targets from
      ``smooth_BCE(0.0)``; times ``hyp['cls']``. Both BCEs become focal losses when ``hyp['fl_gamma'] > 0``.

    The trainer, not this function, scales the loss by batch_size / 64.

    Args:
        p: per-layer raw outputs (bs, na, ny, nx, 5 + nc).
        targets: (nt, 6) ``(image, class, x, y, w, h)`` normalised.
        model: Darknet or DDP-wrapped Darknet (``nc``, ``yolo_layers``, anchors).
        hyp: loss hyperparameters.
        gr: GIoU ratio of the objectness target (the trainer ramps it from 0 to 1 during burn-in; 1.0 after).
        xywh: use the MSE box loss.
        denominators: None for plain means (reference numerics). Otherwise one ``(n_box, n_cls, n_obj)`` per
            layer of global counts (see ``loss_counts``); each term becomes ``sum / denominator``.

    Returns:
        loss (1,) and loss_items (4,) detached: (box, obj, cls, total).
    """
    m = _unwrap(model)
    h = _check_hyp(hyp, xywh)
    nc = m.nc
    if denominators is not None and len(denominators) != len(p):
        raise ValueError(f"compute_loss: {len(denominators)} denominators for {len(p)} YOLO layers")
    device = p[0].device
    lcls, lbox, lobj = (torch.zeros(1, device=device) for _ in range(3))
    tcls, tbox, indices, anchors = build_targets(p, targets, m, hyp=h)
    BCEcls, BCEobj, MSE = _criteria(h, device, "mean" if denominators is None else "sum")
    cp, cn = smooth_BCE(eps=0.0)

    def per(reduced: torch.Tensor, n: int) -> torch.Tensor:
        """A mean-reduced term as is; a sum-reduced term divided by its global count."""
        return reduced if denominators is None else reduced / n

    for i, pi in enumerate(p):
        b, a, gj, gi = indices[i]
        n_box, n_cls, n_obj = (1, 1, 1) if denominators is None else denominators[i]
        tobj = torch.zeros_like(pi[..., 0])
        nb = b.shape[0]
        if nb:
            if nb > n_box and denominators is not None:
                raise ValueError(f"compute_loss: layer {i} has {nb} local matches but a global n_box of {n_box}")
            ps = pi[b, a, gj, gi]  # (nb, 5 + nc) predictions at the matched cells
            box, tobj[b, a, gj, gi] = _matched_box_loss(ps, tbox[i], anchors[i], h, gr, xywh, MSE, per, n_box,
                                                        denominators is None, tobj.dtype)
            lbox += box
            if nc > 1:
                t = torch.full_like(ps[:, 5:], cn)
                t[torch.arange(nb, device=device), tcls[i]] = cp
                lcls += per(BCEcls(ps[:, 5:], t), n_cls)
        lobj += per(BCEobj(pi[..., 4], tobj), n_obj)

    if not xywh:
        lbox *= h["giou"]
    lobj *= h["obj"]
    lcls *= h["cls"]
    loss = lbox + lobj + lcls
    return loss, torch.cat((lbox, lobj, lcls, loss)).detach()

"""Training hyperparameters: defaults, file loading, derived loss gains and evolution limits.

One ordered dict carries every hyperparameter, with the key names ultralytics/yolov3 users know. It is read
once at start (``load_hyp``), printed (``format_hyp``) and stored in every checkpoint; values derived from it
(``derive_loss_hyp``) get a new dict so the stored one stays what the user asked for.

Keys and meaning:

============ ================================================================================
giou         box loss gain (GIoU loss)
cls          class loss gain (for 80 classes; see ``derive_loss_hyp``)
cls_pw       BCEWithLogits positive weight of the class loss
obj          objectness loss gain
obj_pw       BCEWithLogits positive weight of the objectness loss
iou_t        anchor-target IoU threshold of ``build_targets`` (width/height IoU)
lr0          initial learning rate (SGD; Adam users usually lower it)
lrf          kept for hyp files; unused, as in the reference (the cosine ends at 0.05 * lr0)
momentum     SGD momentum (Nesterov) / Adam beta1
weight_decay optimizer weight decay, conv weights only
fl_gamma     focal loss gamma; 0 disables focal loss
hsv_h        image HSV hue augmentation (fraction)
hsv_s        image HSV saturation augmentation (fraction)
hsv_v        image HSV value augmentation (fraction)
degrees      image rotation (+/- degrees)
translate    image translation (+/- fraction)
scale        image scale (+/- gain)
shear        image shear (+/- degrees)
xy           xy MSE loss gain, only used with ``--xywh``
wh           wh MSE loss gain, only used with ``--xywh``
============ ================================================================================

File formats accepted by ``load_hyp``:

- YAML (``.yaml``/``.yml``): a mapping of any subset of the keys above; missing keys keep their defaults.
- Text (``.txt``, ultralytics-style ``hyp*.txt``): one row of 18 numbers in ``HYP_KEYS_TXT`` order
  (``giou`` ... ``shear``), or 20 numbers with ``xy`` and ``wh`` appended. Commas or whitespace separate
  values; lines starting with ``#`` are comments.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "DEFAULT_HYP",
    "HYP_KEYS_TXT",
    "HYP_LIMITS",
    "HYP_GAINS",
    "load_hyp",
    "derive_loss_hyp",
    "format_hyp",
]

DEFAULT_HYP: dict[str, float] = {
    "giou": 3.54,
    "cls": 37.4,
    "cls_pw": 1.0,
    "obj": 64.3,
    "obj_pw": 1.0,
    "iou_t": 0.20,
    "lr0": 0.01,
    "lrf": 0.0005,
    "momentum": 0.937,
    "weight_decay": 0.0005,
    "fl_gamma": 0.0,
    "hsv_h": 0.0138,
    "hsv_s": 0.678,
    "hsv_v": 0.36,
    "degrees": 0.0,
    "translate": 0.0,
    "scale": 0.0,
    "shear": 0.0,
    "xy": 4.062,
    "wh": 0.1845,
}
"""The reference trainer's final hyperparameters, evolved for the 2020 loss this project implements
(GIoU box loss, BCE objectness with the GIoU ratio ``gr``, BCE classes). ``degrees``, ``translate``, ``scale``
and ``shear`` are 0 because mosaic augmentation already varies position and scale. ``xy`` and ``wh`` are the
gains of the seed's era for the older MSE xy/wh box loss, used only with ``--xywh``. Never mutate this dict;
``load_hyp`` returns an updated copy."""

HYP_KEYS_TXT: tuple[str, ...] = tuple(k for k in DEFAULT_HYP if k not in ("xy", "wh"))
"""Positional order of the 18 values in an ultralytics-style ``hyp*.txt`` row; 20 values append xy, wh."""

HYP_LIMITS: dict[str, tuple[float, float]] = {
    "giou": (0.1, 20.0),
    "cls": (1.0, 200.0),
    "cls_pw": (0.5, 2.0),
    "obj": (1.0, 300.0),
    "obj_pw": (0.5, 2.0),
    "iou_t": (0.1, 0.7),
    "lr0": (1e-5, 0.02),
    "lrf": (1e-5, 1.0),
    "momentum": (0.6, 0.98),
    "weight_decay": (0.0, 0.001),
    "fl_gamma": (0.0, 3.0),
    "hsv_h": (0.0, 0.1),
    "hsv_s": (0.0, 0.9),
    "hsv_v": (0.0, 0.9),
    "degrees": (0.0, 45.0),
    "translate": (0.0, 0.9),
    "scale": (0.0, 0.9),
    "shear": (0.0, 10.0),
    "xy": (0.1, 20.0),
    "wh": (0.01, 2.0),
}
"""Inclusive (low, high) clip limits applied after each ``--evolve`` mutation. Every default lies inside.
They keep the optimiser stable (lr0, momentum) and augmentations sane; loss gains get a wide range."""

HYP_GAINS: dict[str, float] = {
    "giou": 1.0,
    "cls": 1.0,
    "cls_pw": 1.0,
    "obj": 1.0,
    "obj_pw": 1.0,
    "iou_t": 1.0,
    "lr0": 1.0,
    "lrf": 0.0,
    "momentum": 0.1,
    "weight_decay": 1.0,
    "fl_gamma": 0.0,
    "hsv_h": 1.0,
    "hsv_s": 1.0,
    "hsv_v": 1.0,
    "degrees": 1.0,
    "translate": 1.0,
    "scale": 1.0,
    "shear": 1.0,
    "xy": 0.0,
    "wh": 0.0,
}
"""Per-key mutation gains for ``--evolve`` (scale of the multiplicative Gaussian; 0 = not evolved).

``lrf`` is not used and ``fl_gamma`` switches the loss type, so neither is evolved by default;
momentum moves ten times less because small changes near 1 matter a lot. ``xy``/``wh`` are only used with
``--xywh``: a trainer evolving with ``--xywh`` should pass ``{**HYP_GAINS, 'xy': 1.0, 'wh': 1.0}``.
Multiplicative mutation cannot move a value that is 0 (degrees, translate, scale, shear by default)."""

_NUMBER_SEP = re.compile(r"[,\s]+")


def _as_float(value: Any, where: str, key: str) -> float:
    """A finite float from a YAML/text value, or ValueError naming where it came from."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{where}: hyperparameter '{key}' must be a number, got {value!r}")
    try:
        out = float(value)
    except ValueError as e:
        raise ValueError(f"{where}: hyperparameter '{key}' must be a number, got {value!r}") from e
    if not math.isfinite(out):
        raise ValueError(f"{where}: hyperparameter '{key}' must be finite, got {value!r}")
    return out


def _load_yaml(path: Path) -> dict[str, float]:
    text = path.read_text()
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e}); fix: write 'key: value' lines") from e
    if data is None:
        return {}
    if not isinstance(data, dict) or not isinstance(root, yaml.MappingNode):
        raise ValueError(f"{path}: expected a mapping of hyperparameter names to numbers, got {type(data).__name__}")
    lines = {str(k.value): k.start_mark.line + 1 for k, _ in root.value}
    out: dict[str, float] = {}
    for key, value in data.items():
        where = f"{path}:{lines.get(str(key), '?')}"
        if key not in DEFAULT_HYP:
            raise ValueError(f"{where}: unknown hyperparameter '{key}'; valid keys: {', '.join(DEFAULT_HYP)}")
        out[key] = _as_float(value, where, key)
    return out


def _load_txt(path: Path) -> dict[str, float]:
    rows = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.split("#", 1)[0].strip()
        if stripped:
            rows.append((line_no, stripped))
    if len(rows) != 1:
        raise ValueError(
            f"{path}: expected exactly one row of numbers, found {len(rows)} rows; "
            f"fix: keep one row of {len(HYP_KEYS_TXT)} values in the order {' '.join(HYP_KEYS_TXT)}"
        )
    line_no, row = rows[0]
    values = _NUMBER_SEP.split(row)
    n_txt = len(HYP_KEYS_TXT)
    if len(values) == n_txt:
        keys: tuple[str, ...] = HYP_KEYS_TXT
    elif len(values) == n_txt + 2:
        keys = (*HYP_KEYS_TXT, "xy", "wh")
    else:
        raise ValueError(
            f"{path}:{line_no}: found {len(values)} values, expected {n_txt} ({' '.join(HYP_KEYS_TXT)}) "
            f"or {n_txt + 2} (the same followed by xy wh); an evolve.txt row starts with results columns, "
            f"copy only its hyperparameters"
        )
    return {k: _as_float(v, f"{path}:{line_no}", k) for k, v in zip(keys, values)}


def load_hyp(path: str | Path) -> dict[str, float]:
    """Read hyperparameters from ``path`` on top of ``DEFAULT_HYP``.

    Args:
        path: ``.yaml``/``.yml`` (by key, any subset) or ``.txt`` (one row by position, see the module doc).

    Returns:
        A new dict in ``DEFAULT_HYP`` key order with float values.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unknown key, non-numeric value, wrong number of values or unsupported suffix; the message
            names the file (and line where known) and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"hyperparameter file {path} not found (resolved: {path.resolve()})")
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        update = _load_yaml(path)
    elif suffix == ".txt":
        update = _load_txt(path)
    else:
        raise ValueError(f"{path}: unsupported hyperparameter file type '{suffix}'; fix: use .yaml, .yml or .txt")
    return {k: update.get(k, v) for k, v in DEFAULT_HYP.items()}


def derive_loss_hyp(hyp: dict[str, float], nc: int) -> dict[str, float]:
    """The hyperparameters the loss uses for a dataset with ``nc`` classes (a new dict; ``hyp`` is untouched).

    ``cls`` is multiplied by ``nc / 80``: the class term is a BCE mean over ``nc`` outputs per matched anchor,
    so with fewer classes each class output would get a larger share of the gain that was evolved on the
    80 COCO classes. Scaling by ``nc / 80`` keeps the gradient per class output what it was on COCO.
    """
    if isinstance(nc, bool) or not isinstance(nc, int) or nc < 1:
        raise ValueError(f"number of classes must be a positive int, got nc={nc!r}")
    if "cls" not in hyp:
        raise ValueError(f"hyperparameters have no 'cls' key; keys: {', '.join(hyp)}")
    derived = dict(hyp)
    derived["cls"] = hyp["cls"] * nc / 80
    return derived


def format_hyp(hyp: dict[str, float]) -> str:
    """One line ``Hyperparameters: giou=3.54, cls=37.4, ...`` (``%g`` values) for the start of a run."""
    return "Hyperparameters: " + ", ".join(f"{k}={v:g}" for k, v in hyp.items())

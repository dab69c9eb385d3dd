"""Readers for Darknet model cfg files (``.cfg``) and dataset description files (``.data``).

``parse_model_cfg`` turns a cfg file into a list of typed block dicts (element 0 is the ``[net]`` block)
and checks it: unknown sections or keys, malformed values, route/shortcut references that point nowhere and
``[yolo]`` blocks whose mask, anchors or classes do not fit the convolution feeding them are reported as
``ValueError("file:line: ...")``. ``adapt_nc`` rewrites a parsed cfg for another number of classes.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

ACTIVATIONS = ("leaky", "linear", "relu", "mish", "swish", "logistic")

# [net] keys whose values this trainer takes from the command line or the hyperparameters instead.
NET_KEYS_OVERRIDDEN = (
    "batch", "subdivisions", "width", "height", "learning_rate", "momentum", "decay", "burn_in",
    "max_batches", "policy", "steps", "scales", "angle", "saturation", "exposure", "hue",
)  # fmt: skip

# The [net] training values of the official Darknet cfgs shipped in cfg/ (yolov3.cfg and yolov3-spp.cfg share one).
# A cfg copied from one of them carries these values without its user having chosen them, so they are not worth a
# warning; a value that differs from the nearest of these was written by the user.
_DARKNET_NET = {
    "batch": 64, "subdivisions": 16, "width": 608, "height": 608, "momentum": 0.9, "decay": 0.0005, "angle": 0.0,
    "saturation": 1.5, "exposure": 1.5, "hue": 0.1, "learning_rate": 0.001, "burn_in": 1000, "max_batches": 500200,
    "policy": "steps", "steps": [400000, 450000], "scales": [0.1, 0.1],
}  # fmt: skip
SHIPPED_NET: dict[str, dict[str, Any]] = {
    "yolov3": dict(_DARKNET_NET),
    "yolov3-spp": dict(_DARKNET_NET),
    "yolov3-tiny": {**_DARKNET_NET, "subdivisions": 2, "width": 416, "height": 416},
}


def net_values_used(
    batch_size: int, accumulate: int, img_size: int, hyp: Mapping[str, float], burn_in: int, schedule: str = "cos"
) -> dict[str, tuple[Any, str]]:
    """What the trainer uses in place of each ``[net]`` key, in the cfg's units: ``key -> (value, where it comes
    from)``; value None where the trainer has no comparable number (it schedules by epochs, and its HSV gains are
    parametrised differently from Darknet's), so any value written for that key is unused.

    Darknet's ``batch`` is the images per optimizer step (``--batch-size * --accumulate``) and ``subdivisions`` the
    forward passes per step (``--accumulate``); ``width``/``height`` are the training ``--img-size``; ``burn_in`` is
    compared with the trainer's burn-in batches.
    """
    cos = schedule == "cos"
    steps_from = "the cosine schedule (--schedule cos)" if cos else "MultiStep x0.1 at 80% and 90% of --epochs"
    return {
        "batch": (batch_size * accumulate, f"--batch-size {batch_size} x --accumulate {accumulate} images per step"),
        "subdivisions": (accumulate, f"--accumulate {accumulate}"),
        "width": (img_size, f"--img-size {img_size}"),
        "height": (img_size, f"--img-size {img_size}"),
        "learning_rate": (hyp["lr0"], f"hyp lr0={hyp['lr0']:g}"),
        "momentum": (hyp["momentum"], f"hyp momentum={hyp['momentum']:g}"),
        "decay": (hyp["weight_decay"], f"hyp weight_decay={hyp['weight_decay']:g}"),
        "burn_in": (burn_in, f"{burn_in} burn-in batches (--burn-in)"),
        "angle": (hyp["degrees"], f"hyp degrees={hyp['degrees']:g}"),
        "max_batches": (None, "--epochs"),
        "policy": (None if cos else "steps", steps_from),
        "steps": (None, steps_from),
        "scales": (None if cos else [0.1, 0.1], steps_from),
        "saturation": (None, f"hyp hsv_s={hyp.get('hsv_s', 0):g}"),
        "exposure": (None, f"hyp hsv_v={hyp.get('hsv_v', 0):g}"),
        "hue": (None, f"hyp hsv_h={hyp.get('hsv_h', 0):g}"),
    }


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b) and all(
            _same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def unused_net_values(
    net: Mapping[str, Any], used: Mapping[str, tuple[Any, str]] | None = None
) -> list[tuple[str, Any, str]]:
    """The ``[net]`` values a user wrote that the trainer does not use: ``(key, value, what the trainer uses)``.

    A key counts when the cfg sets it (one of ``NET_KEYS_OVERRIDDEN``), its value differs from the nearest shipped
    Darknet ``[net]`` block (``SHIPPED_NET``, the one with the fewest differing keys: copied values were not chosen)
    and from the trainer's equivalent in ``used`` (``net_values_used``; a None value, or ``used`` None, means no
    equivalent, so a user-written value is always reported).
    """
    keys = [k for k in NET_KEYS_OVERRIDDEN if k in net]
    nearest = min(SHIPPED_NET.values(), key=lambda ref: sum(not _same(net[k], ref.get(k)) for k in keys))
    out = []
    for k in keys:
        if _same(net[k], nearest.get(k)):
            continue
        value, source = (used or {}).get(k, (None, "the command line and hyperparameters"))
        if value is None or not _same(net[k], value):
            out.append((k, net[k], source))
    return out


def _int(text: str) -> int:
    return int(text)


def _float(text: str) -> float:
    return float(text)


def _str(text: str) -> str:
    if not text:
        raise ValueError("empty")
    return text


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def _activation(text: str) -> str:
    if text not in ACTIVATIONS:
        raise ValueError(text)
    return text


def _anchors(text: str) -> np.ndarray:
    values = [float(v) for v in text.split(",") if v.strip()]
    if not values or len(values) % 2:
        raise ValueError(text)
    return np.array(values, dtype=np.float32).reshape(-1, 2)


_EXPECTED = {
    _int: "an integer",
    _float: "a number",
    _str: "a word",
    _ints: "comma-separated integers",
    _floats: "comma-separated numbers",
    _activation: f"one of {', '.join(ACTIVATIONS)}",
    _anchors: "comma-separated pairs of numbers (w,h in pixels)",
}

# Known keys per section and how to read them. Keys Darknet uses that we accept without acting on are listed
# too, so that official cfgs parse.
_SCHEMA: dict[str, dict[str, Callable]] = {
    "net": {
        "batch": _int, "subdivisions": _int, "width": _int, "height": _int, "channels": _int,
        "momentum": _float, "decay": _float, "angle": _float, "saturation": _float, "exposure": _float,
        "hue": _float, "learning_rate": _float, "burn_in": _int, "max_batches": _int, "policy": _str,
        "steps": _ints, "scales": _floats, "power": _float, "gamma": _float, "step": _int, "flip": _int,
        "mosaic": _int, "mixup": _int, "letter_box": _int, "max_crop": _int, "min_crop": _int,
        "aspect": _float, "jitter": _float, "blur": _int, "max_chart_loss": _float,
    },
    "convolutional": {
        "batch_normalize": _int, "filters": _int, "size": _int, "stride": _int, "pad": _int,
        "padding": _int, "groups": _int, "activation": _activation,
    },
    "maxpool": {"size": _int, "stride": _int},
    "upsample": {"stride": _int},
    "route": {"layers": _ints, "groups": _int, "group_id": _int},
    "shortcut": {"from": _ints, "activation": _activation},
    "yolo": {
        "mask": _ints, "anchors": _anchors, "classes": _int, "num": _int, "jitter": _float,
        "ignore_thresh": _float, "truth_thresh": _float, "random": _int, "iou_thresh": _float,
        "max_delta": _float, "counters_per_class": _ints, "label_smooth_eps": _float,
    },
}  # fmt: skip
_SCHEMA["network"] = _SCHEMA["net"]

_DEFAULTS = {
    "convolutional": {"batch_normalize": 0, "stride": 1, "pad": 0, "groups": 1, "size": 1, "activation": "linear"},
    "shortcut": {"activation": "linear"},
    "upsample": {"stride": 2},
    "maxpool": {"stride": 1},
    "route": {"groups": 1, "group_id": 0},
}
_REQUIRED = {"convolutional": ("filters",), "route": ("layers",), "shortcut": ("from",), "yolo": ("anchors", "classes")}
_POSITIVE = {"filters", "size", "stride", "groups", "classes", "num", "batch", "subdivisions", "width", "height"}


def parse_model_cfg(
    path: str | Path, nc: int | None = None, warn: bool = True, net_used: Mapping[str, tuple[Any, str]] | None = None
) -> list[dict]:
    """Read a Darknet model cfg file into typed block dicts.

    Args:
        path: the ``.cfg`` file.
        nc: when given, the ``[yolo]`` classes and the filters of the convolution feeding each ``[yolo]`` are
            rewritten for ``nc`` classes before the checks (see ``adapt_nc``).
        warn: log one warning naming the ``[net]`` values the user wrote that the trainer does not use
            (``unused_net_values``: not on a shipped cfg, nor where the value equals the trainer's).
        net_used: the trainer's values (``net_values_used``); without them every user-written value is named.

    Returns:
        ``[net_block, block_0, block_1, ...]``; each dict has ``'type'`` (section name, ``network`` read as
        ``net``) and its typed values: ints, floats, lists of ints (``layers``, ``mask``, ``from``, ``steps``),
        ``anchors`` as a float32 ``(n, 2)`` array in pixels. ``[convolutional]`` defaults are filled in
        (batch_normalize=0, stride=1, pad=0, groups=1, size=1, activation='linear'); a ``[yolo]`` without
        ``mask`` uses all its anchors.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: ``"path:line: ..."`` for unknown sections or keys, malformed values, references to blocks
            that do not exist and ``[yolo]`` blocks that do not fit their convolution.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model cfg not found: {path} (the shipped ones are in cfg/, e.g. cfg/yolov3-tiny.cfg)")
    blocks, lines, key_lines, net_lines = _read_blocks(path)
    if nc is not None:
        blocks = adapt_nc(blocks, nc)
    _check(blocks, lines, key_lines, path)
    if warn:
        unused = unused_net_values(blocks[0], net_used)
        if unused:
            listed = "; ".join(f"{k}={_show(v)} (line {net_lines[k]}; the trainer uses {src})" for k, v, src in unused)
            logger.warning("%s: [net] values read but not used: %s. This trainer takes them from the command line "
                           "and the hyperparameters (--hyp); the cfg's values do not act", path, listed)
    return blocks


def _show(value: Any) -> str:
    """A [net] value as a cfg would write it."""
    if isinstance(value, list):
        return ",".join(_show(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _read_blocks(path: Path) -> tuple[list[dict], list[int], list[dict[str, int]], dict[str, int]]:
    """Tokenise the file into typed blocks.

    Also returns, for the blocks after [net], each header's line number and each key's line number (1-based), and
    the [net] block's key line numbers.
    """
    blocks: list[dict] = []
    lines: list[int] = []
    key_lines: list[dict[str, int]] = []
    for line_no, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            kind = _section_kind(line, first=not blocks, where=f"{path}:{line_no}")
            blocks.append({"type": kind, **copy.deepcopy(_DEFAULTS.get(kind, {}))})
            key_lines.append({})
            lines.append(line_no)
            continue
        if not blocks:
            raise ValueError(f"{path}:{line_no}: {line!r} before any section: expected a '[net]' header first")
        key, value = _key_value(line, blocks[-1]["type"], key_lines[-1], where=f"{path}:{line_no}")
        blocks[-1][key] = value
        key_lines[-1][key] = line_no
    if not blocks:
        raise ValueError(f"{path}:1: no sections found: expected a Darknet cfg starting with [net]")
    _complete_blocks(blocks, lines, key_lines, path)
    return blocks, lines[1:], key_lines[1:], key_lines[0]


def _section_kind(line: str, first: bool, where: str) -> str:
    """The section name of a ``[name]`` header line (``network`` read as ``net``); `first`: no block before it.
    Raises ``ValueError("where: ...")`` for a malformed header, an unknown section or [net] out of place."""
    if not line.endswith("]"):
        raise ValueError(f"{where}: malformed section header {line!r}: expected '[name]'")
    kind = line[1:-1].strip().lower()
    if kind not in _SCHEMA:
        known = ", ".join(sorted(k for k in _SCHEMA if k != "network"))
        raise ValueError(f"{where}: unknown section [{kind}]: expected one of {known}")
    if kind == "network":
        kind = "net"
    if (kind == "net") != first:
        order = "must come first" if kind == "net" else "must be preceded by a [net] block"
        raise ValueError(f"{where}: [{kind}] {order}: expected the file to start with [net]")
    return kind


def _key_value(line: str, kind: str, seen: Mapping[str, int], where: str) -> tuple[str, Any]:
    """The key and typed value of a ``key=value`` line in a [kind] block whose keys so far are `seen`.
    Raises ``ValueError("where: ...")`` for a malformed line, an unknown or repeated key or a bad value."""
    if "=" not in line:
        raise ValueError(f"{where}: malformed line {line!r}: expected 'key=value'")
    key, text = (s.strip() for s in line.split("=", 1))
    reader = _SCHEMA[kind].get(key)
    if reader is None:
        raise ValueError(f"{where}: unknown key {key!r} in [{kind}]: expected one of {', '.join(_SCHEMA[kind])}")
    if key in seen:
        raise ValueError(f"{where}: key {key!r} given twice in this [{kind}] block: expected it once")
    try:
        value = reader(text)
    except ValueError as e:
        raise ValueError(f"{where}: value {text!r} for {key!r} in [{kind}]: expected {_EXPECTED[reader]}") from e
    if key in _POSITIVE and value <= 0:
        raise ValueError(f"{where}: value {text!r} for {key!r} in [{kind}]: expected a positive integer")
    return key, value


def _complete_blocks(blocks: list[dict], lines: list[int], key_lines: list[dict[str, int]], path: Path) -> None:
    """Check every block has its required keys, and fill in the defaults that depend on other keys (a [maxpool]'s
    size is its stride, a [yolo] without mask uses all its anchors), in place."""
    for block, line_no, keys in zip(blocks, lines, key_lines):
        missing = [k for k in _REQUIRED.get(block["type"], ()) if k not in keys]
        if missing:
            raise ValueError(f"{path}:{line_no}: [{block['type']}] lacks {', '.join(missing)}: expected it to be set")
        if block["type"] == "maxpool":
            block.setdefault("size", block["stride"])
        if block["type"] == "yolo" and "mask" not in block:
            block["mask"] = list(range(len(block["anchors"])))


def adapt_nc(blocks: list[dict], nc: int) -> list[dict]:
    """Return a copy of parsed blocks rewritten for ``nc`` classes.

    Every ``[yolo]`` gets ``classes=nc`` and the ``[convolutional]`` right before it ``filters=len(mask)*(5+nc)``.
    ``blocks`` may include the ``[net]`` block or not; it is not modified.
    """
    if nc < 1:
        raise ValueError(f"nc={nc}: expected a positive number of classes")
    out = [dict(b) for b in blocks]
    for i, block in enumerate(out):
        if block["type"] == "yolo":
            block["classes"] = nc
            if i > 0 and out[i - 1]["type"] == "convolutional":
                out[i - 1]["filters"] = len(block["mask"]) * (5 + nc)
    return out


def _check(blocks: list[dict], lines: list[int], key_lines: list[dict[str, int]], path: Path) -> None:
    """Check references and [yolo] consistency of parsed blocks (``blocks[0]`` is [net]; lines are the rest's)."""
    defs = blocks[1:]
    for i, (block, line_no, keys) in enumerate(zip(defs, lines, key_lines)):
        kind = block["type"]
        if kind in ("route", "shortcut"):
            key = "layers" if kind == "route" else "from"
            for ref in block[key]:
                j = i + ref if ref < 0 else ref
                if not 0 <= j < i:
                    raise ValueError(
                        f"{path}:{keys[key]}: [{kind}] {key}={ref} of block {i} points to block {j}: expected an "
                        f"earlier block (negative: relative to this block, else absolute 0..{i - 1})"
                    )
            gid, groups = block.get("group_id"), block.get("groups")
            if kind == "route" and not 0 <= gid < groups:
                at = keys.get("group_id", line_no)
                raise ValueError(f"{path}:{at}: [route] group_id={gid}: expected 0..{groups - 1} (groups={groups})")
        elif kind == "yolo":
            n_anchors = len(block["anchors"])
            if "num" in block and block["num"] != n_anchors:
                raise ValueError(f"{path}:{line_no}: [yolo] num={block['num']} but anchors lists {n_anchors} pairs: "
                                 f"expected num={n_anchors}")  # fmt: skip
            bad = [m for m in block["mask"] if not 0 <= m < n_anchors]
            if bad:
                raise ValueError(
                    f"{path}:{line_no}: [yolo] mask {block['mask']} indexes anchors {bad} that do not exist: "
                    f"expected indices 0..{n_anchors - 1}"
                )
            prev = defs[i - 1] if i > 0 else None
            if prev is None or prev["type"] != "convolutional":
                raise ValueError(f"{path}:{line_no}: [yolo] block {i} must follow a [convolutional] block")
            expected = len(block["mask"]) * (5 + block["classes"])
            if prev["filters"] != expected:
                raise ValueError(
                    f"{path}:{line_no}: [yolo] with {len(block['mask'])} anchors in mask and classes="
                    f"{block['classes']} needs filters={expected} in the [convolutional] before it "
                    f"(len(mask)*(5+classes)), found filters={prev['filters']}; fix the cfg or pass nc= to Darknet"
                )
    classes = {b["classes"] for b in defs if b["type"] == "yolo"}
    if len(classes) > 1:
        raise ValueError(f"{path}: [yolo] blocks disagree on classes {sorted(classes)}: expected one value")


def parse_data_cfg(path: str | Path) -> dict[str, str | int]:
    """Read a ``.data`` file: ``key=value`` lines, ``#`` comments.

    Returns the raw values as strings (paths are not resolved here), except ``classes`` which is an int.

    Raises:
        FileNotFoundError: naming the path.
        ValueError: ``"path:line: ..."`` for a line that is not ``key=value`` or a non-integer ``classes``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data cfg not found: {path}")
    options: dict[str, str | int] = {}
    for line_no, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, sep, value = (s.strip() for s in line.partition("="))
        if not sep or not key:
            raise ValueError(f"{path}:{line_no}: malformed line {line!r}: expected 'key=value'")
        if key == "classes":
            try:
                options[key] = int(value)
            except ValueError as e:
                raise ValueError(f"{path}:{line_no}: classes={value!r}: expected an integer") from e
        else:
            options[key] = value
    return options

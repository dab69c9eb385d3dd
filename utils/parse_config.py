"""Readers for Darknet model cfg files (``.cfg``) and dataset description files (``.data``).

``parse_model_cfg`` turns a cfg file into a list of typed block dicts (element 0 is the ``[net]`` block)
and checks it: unknown sections or keys, malformed values, route/shortcut references that point nowhere and
``[yolo]`` blocks whose mask, anchors or classes do not fit the convolution feeding them are reported as
``ValueError("file:line: ...")``. ``adapt_nc`` rewrites a parsed cfg for another number of classes.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

ACTIVATIONS = ("leaky", "linear", "relu", "mish", "swish", "logistic")

# [net] keys whose values this trainer takes from the command line or the hyperparameters instead.
NET_KEYS_OVERRIDDEN = (
    "batch", "subdivisions", "width", "height", "learning_rate", "momentum", "decay", "burn_in",
    "max_batches", "policy", "steps", "scales", "angle", "saturation", "exposure", "hue",
)  # fmt: skip


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


def parse_model_cfg(path: str | Path, nc: int | None = None, warn: bool = True) -> list[dict]:
    """Read a Darknet model cfg file into typed block dicts.

    Args:
        path: the ``.cfg`` file.
        nc: when given, the ``[yolo]`` classes and the filters of the convolution feeding each ``[yolo]`` are
            rewritten for ``nc`` classes before the checks (see ``adapt_nc``).
        warn: log one warning listing the ``[net]`` keys whose values the CLI/hyperparameters override.

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
    blocks, lines, key_lines = _read_blocks(path)
    if nc is not None:
        blocks = adapt_nc(blocks, nc)
    _check(blocks, lines, key_lines, path)
    if warn:
        ignored = [k for k in NET_KEYS_OVERRIDDEN if k in blocks[0]]
        if ignored:
            logger.warning(
                "%s: [net] keys %s are read but not used; the command line and hyperparameters set these "
                "(--img-size, --batch-size, --accumulate, --epochs, hyp lr0/momentum/weight_decay/hsv_*/degrees)",
                path, ", ".join(ignored),
            )  # fmt: skip
    return blocks


def _read_blocks(path: Path) -> tuple[list[dict], list[int], list[dict[str, int]]]:
    """Tokenise the file into typed blocks.

    Also returns, for the blocks after [net], each header's line number and each key's line number (1-based).
    """
    blocks: list[dict] = []
    lines: list[int] = []
    key_lines: list[dict[str, int]] = []
    for line_no, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise ValueError(f"{path}:{line_no}: malformed section header {line!r}: expected '[name]'")
            kind = line[1:-1].strip().lower()
            if kind not in _SCHEMA:
                known = ", ".join(sorted(k for k in _SCHEMA if k != "network"))
                raise ValueError(f"{path}:{line_no}: unknown section [{kind}]: expected one of {known}")
            if kind == "network":
                kind = "net"
            if (kind == "net") != (not blocks):
                where = "must come first" if kind == "net" else "must be preceded by a [net] block"
                raise ValueError(f"{path}:{line_no}: [{kind}] {where}: expected the file to start with [net]")
            blocks.append({"type": kind, **copy.deepcopy(_DEFAULTS.get(kind, {}))})
            key_lines.append({})
            lines.append(line_no)
            continue
        if not blocks:
            raise ValueError(f"{path}:{line_no}: {line!r} before any section: expected a '[net]' header first")
        if "=" not in line:
            raise ValueError(f"{path}:{line_no}: malformed line {line!r}: expected 'key=value'")
        key, text = (s.strip() for s in line.split("=", 1))
        block = blocks[-1]
        kind = block["type"]
        reader = _SCHEMA[kind].get(key)
        if reader is None:
            raise ValueError(
                f"{path}:{line_no}: unknown key {key!r} in [{kind}]: expected one of {', '.join(_SCHEMA[kind])}"
            )
        if key in key_lines[-1]:
            raise ValueError(f"{path}:{line_no}: key {key!r} given twice in this [{kind}] block: expected it once")
        try:
            value = reader(text)
        except ValueError as e:
            raise ValueError(
                f"{path}:{line_no}: value {text!r} for {key!r} in [{kind}]: expected {_EXPECTED[reader]}"
            ) from e
        if key in _POSITIVE and value <= 0:
            raise ValueError(f"{path}:{line_no}: value {text!r} for {key!r} in [{kind}]: expected a positive integer")
        block[key] = value
        key_lines[-1][key] = line_no
    if not blocks:
        raise ValueError(f"{path}:1: no sections found: expected a Darknet cfg starting with [net]")
    for block, line_no, keys in zip(blocks, lines, key_lines):
        missing = [k for k in _REQUIRED.get(block["type"], ()) if k not in keys]
        if missing:
            raise ValueError(f"{path}:{line_no}: [{block['type']}] lacks {', '.join(missing)}: expected it to be set")
        if block["type"] == "maxpool":
            block.setdefault("size", block["stride"])
        if block["type"] == "yolo" and "mask" not in block:
            block["mask"] = list(range(len(block["anchors"])))
    return blocks, lines[1:], key_lines[1:]


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

"""Weights file I/O: Darknet ``.weights`` read and write, PyTorch checkpoints loaded strictly or where they fit.

Darknet files hold float32 values block by block in cfg order (``load_darknet_weights``); ``.pt`` files are our
checkpoints (``utils.checkpoint``), ultralytics ones or raw state_dicts (``checkpoint_state_dict``). State-dict
names follow ultralytics/yolov3 (``module_list.{i}.Conv2d.weight``) so its ``.pt`` files load by name.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models import Darknet, block_shapes
from utils.checkpoint import read_torch_file
from utils.parse_config import adapt_nc, parse_model_cfg
from utils.torch_utils import de_parallel

logger = logging.getLogger(__name__)

CFG_DIR = Path(__file__).resolve().parents[1] / "cfg"
SHIPPED_CFGS = ("yolov3.cfg", "yolov3-spp.cfg", "yolov3-tiny.cfg")


def darknet_value_counts(module_defs: list[dict], in_channels: int = 3) -> list[int]:
    """Number of float32 values each block stores in a Darknet ``.weights`` file (0 for blocks without weights)."""
    ins, _, _ = block_shapes(module_defs, in_channels)
    counts = []
    for mdef, cin in zip(module_defs, ins):
        if mdef["type"] != "convolutional":
            counts.append(0)
            continue
        f, k = mdef["filters"], mdef["size"]
        counts.append(f * (cin // mdef["groups"]) * k * k + (4 * f if mdef["batch_normalize"] else f))
    return counts



def cutoff_from_name(path: str | Path) -> int:
    """Blocks to load for Darknet's partial files: ``darknet53.conv.74`` -> 75, ``name.conv.N`` -> N, else -1 (all).

    ``darknet53.conv.74`` holds the first 74 layers of Darknet's classifier, which are yolov3's first 75 blocks
    (block 74 is a shortcut without weights, so 74 and 75 load the same values).
    """
    name = Path(path).name
    if name == "darknet53.conv.74":
        return 75
    m = re.search(r"\.conv\.(\d+)$", name)
    return int(m.group(1)) if m else -1


def _conv_blocks(model: Darknet, cutoff: int) -> list[tuple[int, dict, nn.Module]]:
    n = len(model.module_defs) if cutoff < 0 else min(cutoff, len(model.module_defs))
    out = []
    for i in range(n):
        mdef = model.module_defs[i]
        if mdef["type"] == "convolutional":
            seq = model.module_list[i]
            if mdef["batch_normalize"] and not hasattr(seq, "BatchNorm2d"):
                raise ValueError(f"block {i} has no BatchNorm2d (fused?): load/save Darknet weights before fuse()")
            out.append((i, mdef, seq))
    return out


def _conv_tensors(mdef: dict, seq: nn.Module) -> list[torch.Tensor]:
    """Tensors of one conv block in Darknet file order."""
    conv = seq.Conv2d
    if mdef["batch_normalize"]:
        bn = seq.BatchNorm2d
        return [bn.bias, bn.weight, bn.running_mean, bn.running_var, conv.weight]
    return [conv.bias, conv.weight]


def _seen_dtype(version: np.ndarray) -> type:
    return np.int64 if int(version[0]) * 10 + int(version[1]) >= 2 else np.int32


def _fit_hint(n_values: int, model: Darknet) -> str:
    """Say which shipped cfg, or how many leading blocks of one, a file of ``n_values`` values would fit."""
    candidates = [(f"{model.cfg} (nc={model.nc})", model.module_defs, model.net_def.get("channels", 3))]
    for name in SHIPPED_CFGS:
        path = CFG_DIR / name
        if path.is_file():
            blocks = parse_model_cfg(path, warn=False)
            candidates.append((f"cfg/{name}", blocks[1:], blocks[0].get("channels", 3)))
    hints = []
    for label, defs, ch in candidates:
        cum = np.cumsum(darknet_value_counts(defs, ch))
        if cum[-1] == n_values:
            hints.append(f"it fits {label} as a whole")
            continue
        hit = np.nonzero(cum == n_values)[0]
        if len(hit):
            k = int(hit[-1]) + 1
            hints.append(f"it fits the first {k} blocks of {label} (pass cutoff={k})")
    if not hints:
        return "it fits none of this cfg or the shipped cfgs, whole or by leading blocks"
    return "; ".join(dict.fromkeys(hints))


def load_darknet_weights(model: Darknet, path: str | Path, cutoff: int = -1) -> dict:
    """Load a Darknet ``.weights`` file into ``model`` in place.

    File layout: int32 major, minor, revision; ``seen`` as int64 when ``major*10+minor >= 2`` else int32; then
    float32 values, for each conv block in order: with BatchNorm bn.bias, bn.weight, running_mean, running_var,
    conv.weight; without: conv.bias, conv.weight.

    Args:
        cutoff: load only blocks ``0..cutoff-1``; -1 takes it from the file name (``darknet53.conv.74`` -> 75,
            ``yolov3-tiny.conv.15`` -> 15) or loads all blocks.

    Returns:
        report dict: path, version, seen, cutoff, blocks_loaded, tensors_loaded, values_loaded, values_unused,
        blocks_skipped_by_cutoff (indices of conv blocks not loaded).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a Darknet file (a PyTorch checkpoint, or a header no Darknet writes), or the file has
            fewer values than the blocks need, or (without cutoff) more, saying which cfg or how many leading
            blocks it would fit.
    """
    model = de_parallel(model)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Darknet weights not found: {path}; nothing is downloaded, put the file in weights/")
    if cutoff == -1:
        cutoff = cutoff_from_name(path)
    with open(path, "rb") as f:
        magic = f.read(4)
        f.seek(0)
        if magic == b"PK\x03\x04" or magic[:1] == b"\x80":  # a zip archive or a pickle: torch.save's formats
            raise ValueError(f"{path}: not a Darknet .weights file but a PyTorch checkpoint; give it the .pt suffix")
        version = np.fromfile(f, dtype=np.int32, count=3)
        if len(version) < 3:
            raise ValueError(f"{path}: {path.stat().st_size} bytes is too short for a Darknet weights header")
        if not (0 <= version[0] < 10 and 0 <= version[1] < 100 and 0 <= version[2] < 1000):
            raise ValueError(
                f"{path}: not a Darknet .weights file: its header reads version {'.'.join(map(str, version))} "
                "(Darknet writes 0.1.x or 0.2.x); pass the Darknet .weights file or a .pt checkpoint of this cfg"
            )
        seen = np.fromfile(f, dtype=_seen_dtype(version), count=1).astype(np.int64)
        header = f.tell()
        weights = np.fromfile(f, dtype=np.float32)
    if len(seen) < 1 or (path.stat().st_size - header) % 4:
        raise ValueError(f"{path}: {path.stat().st_size} bytes is not a Darknet header plus float32 values")

    blocks = _conv_blocks(model, cutoff)
    needed = sum(sum(t.numel() for t in _conv_tensors(m, s)) for _, m, s in blocks)
    found = len(weights)
    what = f"{model.cfg} (nc={model.nc})" + (f" up to block {cutoff}" if cutoff >= 0 else "")
    if found < needed or (found > needed and cutoff < 0):
        problem = "too short" if found < needed else "longer than needed (values left over)"
        raise ValueError(
            f"{path}: {problem}: {what} needs {needed:,} float32 values after the header, the file has {found:,}; "
            f"{_fit_hint(found, model)}"
        )
    ptr, n_tensors = 0, 0
    with torch.no_grad():
        for _, mdef, seq in blocks:
            for t in _conv_tensors(mdef, seq):
                n = t.numel()
                t.copy_(torch.from_numpy(weights[ptr : ptr + n]).view_as(t))
                ptr += n
                n_tensors += 1
    model.version, model.seen = version, seen
    loaded = {i for i, _, _ in blocks}
    skipped = [i for i, m in enumerate(model.module_defs) if m["type"] == "convolutional" and i not in loaded]
    report = {
        "path": str(path), "version": tuple(int(v) for v in version), "seen": int(seen[0]), "cutoff": cutoff,
        "blocks_loaded": len(blocks), "tensors_loaded": n_tensors, "values_loaded": ptr,
        "values_unused": found - ptr, "blocks_skipped_by_cutoff": skipped,
    }  # fmt: skip
    logger.info(
        "%s: loaded %d conv blocks (%d tensors, %d values)%s", path, len(blocks), n_tensors, ptr,
        f", cutoff {cutoff} skipped {len(skipped)} conv blocks" if skipped else "",
    )  # fmt: skip
    return report


def save_weights(model: Darknet, path: str | Path, cutoff: int = -1) -> None:
    """Write ``model`` (blocks ``0..cutoff-1``, all when -1) as a Darknet ``.weights`` file, atomically.

    The header comes from ``model.version`` and ``model.seen`` (defaults 0.2.5 and 0), so loading a file and
    saving it with the same cutoff reproduces it byte for byte.
    """
    model = de_parallel(model)
    path = Path(path)
    version = np.asarray(getattr(model, "version", np.array([0, 2, 5])), dtype=np.int32)
    seen = np.asarray(getattr(model, "seen", np.array([0])), dtype=_seen_dtype(version)).reshape(-1)[:1]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        version.tofile(f)
        seen.tofile(f)
        for _, mdef, seq in _conv_blocks(model, cutoff):
            for t in _conv_tensors(mdef, seq):
                t.detach().to("cpu", torch.float32).numpy().tofile(f)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------------
# PyTorch checkpoints


def _require_file(path: Path) -> None:
    """Raise FileNotFoundError for missing weights, saying where to put them (nothing is downloaded)."""
    if not path.is_file():
        raise FileNotFoundError(
            f"weights not found: {path}; nothing is downloaded: put the file in the weights/ folder "
            "(see weights/README.md) or start from scratch with --weights ''"
        )


def checkpoint_state_dict(ckpt: object, path: Path) -> dict[str, torch.Tensor]:
    """The model state_dict inside a checkpoint: {'model': sd or module, ...}, {'ema': ...} or a raw state_dict.

    ``'model'`` is taken when present (our checkpoints' scored weights: the EMA when the run kept one, see
    ``utils.checkpoint``), else ``'ema'``; a DataParallel/DDP ``module.`` prefix is removed. Raises ValueError
    (naming ``path``) when there is no state_dict.
    """
    sd = ckpt
    if isinstance(ckpt, dict) and ("model" in ckpt or "ema" in ckpt):
        sd = ckpt.get("model")
        if sd is None:
            sd = ckpt.get("ema")
    if isinstance(sd, nn.Module):
        sd = sd.state_dict()
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: not a model checkpoint: expected a state_dict or a dict with a 'model' state_dict")
    if sd and all(k.startswith("module.") for k in sd):  # saved from a DataParallel/DDP wrapper
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def read_checkpoint_info(
    weights: str | Path,
) -> tuple[dict[str, torch.Tensor] | None, dict[str, torch.Tensor] | None, list[str] | None]:
    """Peek into a ``.pt`` weights file: ``(model state_dict, EMA state_dict, class names)``, None where absent.

    The model state_dict is ``checkpoint_state_dict``'s (None when the file holds none: ``load_weights`` then
    reports it); the EMA is the ``'ema'`` entry of a format-1 checkpoint (``utils.checkpoint``: its ``'model'``
    was the raw weights). ``.weights`` (Darknet) files carry none of them. Our own checkpoints hold numpy RNG
    states, which ``weights_only=True`` refuses; they are then loaded with full unpickling (only load files you
    trust). Raises ValueError (one line, naming the file) for an unreadable file.
    """
    weights = Path(weights)
    if weights.suffix not in (".pt", ".pth") or not weights.is_file():
        return None, None, None
    ckpt = read_torch_file(weights)  # a one-line ValueError for a truncated or foreign file
    names = ema = None
    if isinstance(ckpt, dict):
        if isinstance(ckpt.get("names"), (list, tuple)):
            names = [str(n) for n in ckpt["names"]]
        if isinstance(ckpt.get("ema"), dict):
            ema = {k.removeprefix("module."): v for k, v in ckpt["ema"].items()}
    try:
        return checkpoint_state_dict(ckpt, weights), ema, names
    except ValueError:
        return None, ema, names


def nc_from_state_dict(cfg: str | Path, state_dict: dict[str, torch.Tensor]) -> int | None:
    """The class count a state_dict was trained with, read from the convolution feeding the first YOLO layer.

    Returns None when that tensor is missing (load_weights then reports the mismatch with the cfg).
    """
    defs = parse_model_cfg(cfg, warn=False)[1:]
    for i, block in enumerate(defs):
        if block["type"] == "yolo":
            weight = state_dict.get(f"module_list.{i - 1}.Conv2d.weight")
            na = len(block.get("mask", [])) or len(block["anchors"])
            if weight is None or weight.shape[0] % na:
                return None
            return weight.shape[0] // na - 5
    return None


def _nc_hint(model: Darknet, sd: dict[str, torch.Tensor]) -> str:
    """Guess from the checkpoint's YOLO head convs which nc it was trained with."""
    for j in model.yolo_layers:
        w = sd.get(f"module_list.{j - 1}.Conv2d.weight")
        na = model.module_list[j].na
        if w is not None and w.shape[0] % na == 0 and w.shape[0] // na - 5 != model.nc:
            return f"was it trained with nc={w.shape[0] // na - 5} (a .data with classes={w.shape[0] // na - 5})?"
    return f"was it trained with another --cfg than {model.cfg}?"


def _describe_key(k: str, sd: dict, msd: dict) -> str:
    ckpt = f" {tuple(sd[k].shape)} in the file" if k in sd else ""
    model = f" {tuple(msd[k].shape)} in the model" if k in msd else ""
    return k + ckpt + ("," if ckpt and model else "") + model


def load_weights(
    model: Darknet, path: str | Path, map_location: str | torch.device = "cpu", checkpoint: object | None = None
) -> dict:
    """Load Darknet ``.weights`` or a PyTorch ``.pt``/``.pth`` into ``model``, strictly.

    ``.pt`` may be our checkpoint (``{'model': state_dict, ...}``, optionally with ``'ema'``), an ultralytics one
    (``{'model': state_dict or module}``) or a raw state_dict. Other suffixes are read as Darknet files (cutoff
    from the name, see ``load_darknet_weights``). ``checkpoint``: the ``.pt`` file's contents (or its model
    state_dict) when the caller has read it already, so that it is not read again (a second ``torch.load`` of
    a yolov3-spp checkpoint took ~0.9 s of detect.py's start).

    Returns:
        report dict (``format`` 'darknet' or 'pt', tensors_loaded, ...).

    Raises:
        FileNotFoundError: saying where to put the file.
        ValueError: the file is unreadable (truncated, damaged, not a checkpoint: ``read_torch_file``) or names
            or shapes differ, listing up to 5 of each kind and the likely fix; one line naming the file.
    """
    model_ = de_parallel(model)
    path = Path(path)
    _require_file(path)
    if path.suffix not in (".pt", ".pth"):
        return {"format": "darknet", **load_darknet_weights(model_, path)}
    # one-line ValueError for an unreadable file; a caller that already read it passes it in
    ckpt = read_torch_file(path, map_location) if checkpoint is None else checkpoint
    sd = checkpoint_state_dict(ckpt, path)
    msd = model_.state_dict()
    missing = [k for k in msd if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in msd]
    mismatched = [k for k in sd if k in msd and sd[k].shape != msd[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("with other shapes", mismatched)):
            if keys:
                shown = ", ".join(_describe_key(k, sd, msd) for k in keys[:5])
                parts.append(f"{len(keys)} {label}: {shown}{', ...' if len(keys) > 5 else ''}")
        raise ValueError(
            f"{path} does not fit {model_.cfg} (nc={model_.nc}): " + "; ".join(parts) + f". {_nc_hint(model_, sd)} "
            "Build the model with the matching --cfg/nc, or use --transfer to load only the tensors that fit."
        )
    model_.load_state_dict(sd, strict=False)
    report = {"format": "pt", "path": str(path), "tensors_loaded": len(sd)}
    if isinstance(ckpt, dict):
        report.update(epoch=ckpt.get("epoch"), has_ema="ema" in ckpt)
    return report


def load_state_dict_fitting(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> tuple[int, list[tuple[str, str]]]:
    """Load every tensor whose name and shape fit the model (for ``--transfer``); log the others key by key.

    Returns:
        ``(n_loaded, skipped)`` with ``skipped`` a list of ``(name, reason)``.
    """
    model = de_parallel(model)
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    msd = model.state_dict()
    fitting, skipped = {}, []
    for k, v in state_dict.items():
        if k not in msd:
            skipped.append((k, "not in the model"))
        elif v.shape != msd[k].shape:
            skipped.append((k, f"shape {tuple(v.shape)} in the checkpoint, {tuple(msd[k].shape)} in the model"))
        else:
            fitting[k] = v
    skipped += [(k, "not in the checkpoint, keeps its initial value") for k in msd
                if k not in state_dict and not k.endswith("num_batches_tracked")]
    model.load_state_dict(fitting, strict=False)
    for k, reason in skipped:
        logger.info("weights: skipped %s: %s", k, reason)
    return len(fitting), skipped


def darknet_file_nc(model: Darknet, n_values: int) -> int | None:
    """The class count whose output layers make ``model``'s cfg hold exactly ``n_values`` Darknet values, or None.

    A cfg's value count is affine in nc (only the convolutions feeding the YOLO layers depend on it), so two counts
    give the line and ``n_values`` its nc: an 80-class ``yolov3-tiny.weights`` on a model built for nc=3 gives 80.
    """
    ch = model.net_def.get("channels", 3)

    def total(nc: int) -> int:
        return int(sum(darknet_value_counts(adapt_nc(model.module_defs, nc), ch)))

    t1, per_class = total(1), total(2) - total(1)
    if per_class <= 0 or n_values < t1 or (n_values - t1) % per_class:
        return None
    return 1 + (n_values - t1) // per_class


def _darknet_state_dict(model: Darknet, path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors a Darknet file holds, by this model's state_dict names, whatever nc it was trained for.

    The file is read into a donor network of ``model``'s cfg: first with ``model``'s own nc, else with the nc its
    value count implies (``darknet_file_nc``); only the blocks the file covers (its cutoff) are returned.
    """
    try:
        donor = Darknet(model.cfg, nc=model.nc)
        report = load_darknet_weights(donor, path)
    except ValueError as first:
        with open(path, "rb") as f:
            version = np.fromfile(f, dtype=np.int32, count=3)
            header = 12 + np.dtype(_seen_dtype(version)).itemsize if len(version) == 3 else path.stat().st_size
        nc = darknet_file_nc(model, (path.stat().st_size - header) // 4)
        if nc is None or nc == model.nc:
            raise first
        donor = Darknet(model.cfg, nc=nc)
        report = load_darknet_weights(donor, path)
    model.version, model.seen = donor.version, donor.seen
    loaded = tuple(f"module_list.{i}." for i, _, _ in _conv_blocks(donor, report["cutoff"]))
    sd = {k: v for k, v in donor.state_dict().items() if k.startswith(loaded) and not k.endswith("num_batches_tracked")}
    return sd, {**report, "file_nc": donor.nc}


def load_weights_fitting(model: nn.Module, path: str | Path) -> dict:
    """Initial weights for training from any ``.pt`` or Darknet ``.weights`` file, for any class count.

    Every tensor whose name and shape fit ``model`` is loaded; the others keep their fresh initial values (the
    output layers when the file was trained for another nc, everything past a Darknet cutoff such as
    ``yolov3-tiny.conv.15``). Skipped tensors are logged key by key.

    Returns:
        report: ``format`` ('pt' or 'darknet'), ``path``, ``loaded`` (count), ``total`` (tensors in the model's
        state_dict, BatchNorm counters excluded), ``skipped`` (``(name, reason)`` list) and, for Darknet files,
        ``file_nc`` and ``cutoff``.

    Raises:
        FileNotFoundError: saying where to put the file.
        ValueError: not a checkpoint or Darknet file, or no tensor of it fits the model.
    """
    model_ = de_parallel(model)
    path = Path(path)
    _require_file(path)
    if path.suffix in (".pt", ".pth"):
        sd, extra = checkpoint_state_dict(read_torch_file(path, "cpu"), path), {"format": "pt"}
    else:
        sd, extra = _darknet_state_dict(model_, path)
        extra["format"] = "darknet"
    counters = {k for k in model_.state_dict() if k.endswith("num_batches_tracked")}  # BatchNorm's, not weights
    n_loaded, skipped = load_state_dict_fitting(model_, sd)
    n_loaded -= sum(k in counters for k in sd if k not in {name for name, _ in skipped})
    if n_loaded == 0:
        raise ValueError(f"{path}: none of its {len(sd)} tensors fits {model_.cfg} (nc={model_.nc}) by name and "
                         "shape; fix: pass weights trained with this cfg (or one of its backbones)")
    total = len(model_.state_dict()) - len(counters)
    return {**extra, "path": str(path), "loaded": n_loaded, "total": total, "skipped": skipped}


def convert(cfg: str | Path, weights: str | Path, output: str | Path | None = None, nc: int | None = None) -> str:
    """Convert Darknet ``.weights`` to a ``.pt`` checkpoint, or a ``.pt`` to Darknet ``.weights``.

    Args:
        cfg: the model cfg the weights belong to; nc: its number of classes when not the cfg's.
        weights: input file; ``.pt``/``.pth`` converts to Darknet, anything else from Darknet.
        output: output path; default: the input with the other suffix (``x.weights`` <-> ``x.pt``).

    Returns:
        the output path.
    """
    model = Darknet(cfg, nc=nc)
    weights = Path(weights)
    load_weights(model, weights)
    if weights.suffix in (".pt", ".pth"):
        out = Path(output) if output else weights.with_suffix(".weights")
        save_weights(model, out)
    else:
        out = Path(output) if output else (weights.with_suffix(".pt") if weights.suffix == ".weights" else
                                           weights.with_name(weights.name + ".pt"))  # fmt: skip
        ckpt = {"epoch": -1, "best_fitness": None, "training_results": None, "model": model.state_dict(),
                "optimizer": None}  # fmt: skip
        tmp = out.with_name(out.name + ".tmp")
        torch.save(ckpt, tmp)
        os.replace(tmp, out)
    logger.info("converted %s to %s", weights, out)
    return str(out)

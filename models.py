"""Darknet networks built from cfg files and the YOLO output layer (weights files: ``utils.weights``).

State-dict names follow ultralytics/yolov3 (``module_list.{i}.Conv2d.weight``, ``module_list.{i}.BatchNorm2d.*``,
``i`` the block index in the cfg, ``[net]`` not counted) so its ``.pt`` files load by name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from utils.layers import FeatureConcat, Shortcut, make_activation
from utils.parse_config import adapt_nc, parse_model_cfg
from utils.torch_utils import fold_bn_into_conv_, model_info

_PLAIN, _ROUTE, _SHORTCUT, _YOLO = range(4)


class YOLOLayer(nn.Module):
    """Reshapes a head's raw output and, in eval mode, decodes it to boxes in input pixels.

    Args:
        anchors: (na, 2) anchor w, h in input pixels.
        nc: number of classes; each prediction has ``no = nc + 5`` values (x, y, w, h, obj, classes).
        stride: input pixels per grid cell of this layer.

    Holds no parameters and no persistent buffers; ``anchors`` and ``anchor_vec`` (anchors in grid units) are
    non-persistent buffers so they follow ``.to(device)``.
    """

    def __init__(self, anchors: np.ndarray | torch.Tensor, nc: int, stride: int):
        super().__init__()
        anchors = torch.as_tensor(np.asarray(anchors, dtype=np.float32)).view(-1, 2)
        self.na = len(anchors)
        self.nc = nc
        self.no = nc + 5
        self.stride = int(stride)
        self.register_buffer("anchors", anchors, persistent=False)
        self.register_buffer("anchor_vec", anchors / self.stride, persistent=False)
        self._grids: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _grid(self, ny: int, nx: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Cell offsets (1, 1, ny, nx, 2) as (x, y) and anchor sizes (1, na, 1, 1, 2) in grid units, cached."""
        key = (ny, nx, device, dtype)
        cached = self._grids.get(key)
        if cached is None:
            yv, xv = torch.meshgrid(torch.arange(ny, device=device), torch.arange(nx, device=device), indexing="ij")
            grid = torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2).to(dtype)
            cached = (grid, self.anchor_vec.to(device).view(1, self.na, 1, 1, 2))
            self._grids[key] = cached
        return cached

    def forward(self, p: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """p: (bs, na*no, ny, nx) head output.

        Returns (bs, na, ny, nx, no) raw in train mode; in eval mode ``(io, p)`` with ``io`` (bs, na*ny*nx, no):
        xywh in input pixels, sigmoid objectness and class scores, ordered anchor, then row, then column.
        """
        bs, _, ny, nx = p.shape
        if p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous():
            # Channels-last memory is (bs, ny, nx, na, no): view it so, then copy once into (bs, na, ny, nx, no).
            # Same values as the NCHW path below; but the backward pass now hands the head convolution a
            # channels-last gradient with one copy, where the NCHW view cost two (reshape, then channels-last).
            p = p.permute(0, 2, 3, 1).view(bs, ny, nx, self.na, self.no).permute(0, 3, 1, 2, 4).contiguous()
        else:
            p = p.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
        if self.training:
            return p
        grid, anchor_wh = self._grid(ny, nx, p.device, p.dtype)
        xy = (torch.sigmoid(p[..., :2]) + grid) * self.stride
        wh = (torch.exp(p[..., 2:4]) * anchor_wh) * self.stride
        io = torch.cat((xy, wh, torch.sigmoid(p[..., 4:])), -1)
        return io.view(bs, -1, self.no), p

    def extra_repr(self) -> str:
        return f"na={self.na}, nc={self.nc}, stride={self.stride}"


def _layer_refs(i: int, mdef: dict) -> list[int]:
    """Absolute indices of the earlier blocks a route/shortcut block ``i`` reads."""
    refs = mdef["layers"] if mdef["type"] == "route" else mdef["from"]
    return [i + r if r < 0 else r for r in refs]


def block_shapes(module_defs: list[dict], in_channels: int = 3) -> tuple[list[int], list[int], list[int]]:
    """Per block: input channels, output channels and cumulative stride (input pixels per output pixel).

    Raises:
        ValueError: a route joins maps of different strides, an upsample does not divide the stride, or a route's
            channels do not split into its groups.
    """
    ins: list[int] = []
    outs: list[int] = []
    strides: list[int] = []
    ch, stride = in_channels, 1
    for i, mdef in enumerate(module_defs):
        kind = mdef["type"]
        ins.append(ch)
        if kind == "convolutional":
            ch, stride = mdef["filters"], stride * mdef["stride"]
        elif kind == "maxpool":
            stride *= mdef["stride"]
        elif kind == "upsample":
            if stride % mdef["stride"]:
                raise ValueError(f"block {i} [upsample] stride={mdef['stride']} does not divide map stride {stride}")
            stride //= mdef["stride"]
        elif kind in ("route", "shortcut"):
            refs = _layer_refs(i, mdef)
            ref_strides = {strides[j] for j in refs} | ({stride} if kind == "shortcut" else set())
            if len(ref_strides) > 1:
                raise ValueError(f"block {i} [{kind}] joins blocks {refs} of different strides {sorted(ref_strides)}")
            if kind == "route":
                total = sum(outs[j] for j in refs)
                if total % mdef["groups"]:
                    raise ValueError(f"block {i} [route] {total} channels do not split into groups={mdef['groups']}")
                ch, stride = total // mdef["groups"], strides[refs[0]]
        outs.append(ch)
        strides.append(stride)
    return ins, outs, strides


def create_modules(
    module_defs: list[dict], img_size: int | tuple[int, int] = (416, 416), nc: int | None = None, in_channels: int = 3
) -> tuple[nn.ModuleList, list[bool]]:
    """Build the modules of parsed cfg blocks (``[net]`` excluded).

    Args:
        module_defs: blocks from ``parse_model_cfg(path)[1:]``.
        img_size: nominal input size (kept for reference compatibility; any multiple of 32 works at run time).
        nc: when given, the cfg is first adapted to ``nc`` classes (``adapt_nc``).
        in_channels: input image channels.

    Returns:
        ``(module_list, routs)``: ``routs[i]`` is True when block i's output is read by a later route/shortcut
        and so must be kept during forward.
    """
    if nc is not None:
        module_defs = adapt_nc(module_defs, nc)
    ins, _, strides = block_shapes(module_defs, in_channels)
    module_list = nn.ModuleList()
    routs = [False] * len(module_defs)
    for i, mdef in enumerate(module_defs):
        kind = mdef["type"]
        if kind == "convolutional":
            modules = nn.Sequential()
            bn = bool(mdef["batch_normalize"])
            k = mdef["size"]
            padding = (k - 1) // 2 if mdef["pad"] else mdef.get("padding", 0)
            modules.add_module(
                "Conv2d",
                nn.Conv2d(ins[i], mdef["filters"], k, stride=mdef["stride"], padding=padding, groups=mdef["groups"],
                          bias=not bn),
            )  # fmt: skip
            if bn:
                modules.add_module("BatchNorm2d", nn.BatchNorm2d(mdef["filters"], momentum=0.03, eps=1e-4))
            act = make_activation(mdef["activation"])
            if act is not None:
                modules.add_module("activation", act)
        elif kind == "maxpool":
            k, s = mdef["size"], mdef["stride"]
            pool = nn.MaxPool2d(kernel_size=k, stride=s, padding=(k - 1) // 2)
            if k == 2 and s == 1:  # yolov3-tiny: pad right and bottom with zeros so the grid keeps its size
                modules = nn.Sequential()
                modules.add_module("ZeroPad2d", nn.ZeroPad2d((0, 1, 0, 1)))
                modules.add_module("MaxPool2d", pool)
            else:
                modules = pool
        elif kind == "upsample":
            modules = nn.Upsample(scale_factor=mdef["stride"], mode="nearest")
        elif kind == "route":
            refs = _layer_refs(i, mdef)
            for j in refs:
                routs[j] = True
            modules = FeatureConcat(refs, mdef["groups"], mdef["group_id"])
        elif kind == "shortcut":
            refs = _layer_refs(i, mdef)
            for j in refs:
                routs[j] = True
            modules = Shortcut(refs, mdef["activation"])
        elif kind == "yolo":
            modules = YOLOLayer(mdef["anchors"][mdef["mask"]], mdef["classes"], strides[i])
        else:
            raise ValueError(f"block {i}: unsupported type [{kind}]")
        module_list.append(modules)
    return module_list, routs


def smart_bias_init(model: nn.Module) -> int:
    """Bias prior of the convs feeding the YOLO layers: objectness -4.5 (starts low), class scores
    ``log(0.6 / (nc - 0.99))``, added to the current biases (``train.py --smart-bias``).

    The reference trainer meant this init but its in-place edit of a leaf parameter raised and was swallowed, so
    its heads keep PyTorch's default init; ``create_modules`` does the same. Returns the number of heads changed.
    """
    layers = list(model.module_list)
    changed = 0
    for i, yolo in enumerate(layers):
        if not isinstance(yolo, YOLOLayer) or i == 0:
            continue
        head = layers[i - 1]
        conv = head[0] if isinstance(head, nn.Sequential) else head
        if not isinstance(conv, nn.Conv2d) or conv.bias is None or conv.out_channels != yolo.na * yolo.no:
            continue
        with torch.no_grad():
            b = conv.bias.view(yolo.na, yolo.no)
            b[:, 4] += -4.5
            b[:, 5:] += math.log(0.6 / (yolo.nc - 0.99))
        changed += 1
    return changed


class Darknet(nn.Module):
    """A YOLO network described by a Darknet cfg file.

    Args:
        cfg: path of the ``.cfg`` file.
        img_size: nominal (h, w) input size; inputs of any height and width that are multiples of the largest
            stride (32 for the shipped cfgs) work.
        verbose: print the model summary.
        nc: adapt the cfg to ``nc`` classes (``[yolo]`` classes and the filters of the convs feeding them), so a
            COCO cfg trains on any dataset without editing it. None keeps the cfg's classes.
        warn_unused: log one warning naming the ``[net]`` values the user wrote that the trainer does not use
            (``utils.parse_config.unused_net_values``; never for a shipped cfg's own values).
        net_used: what the trainer uses for each ``[net]`` key (``utils.parse_config.net_values_used``), so a
            written value equal to it is not reported.

    Attributes: ``module_defs`` (blocks without [net]), ``net_def`` ([net] block), ``module_list``, ``routs``,
    ``yolo_layers`` (indices into module_list), ``nc``, ``version`` (int32 (3,)) and ``seen`` (int64 (1,)) of the
    Darknet weights header, ``cfg`` (path str), ``cfg_text`` (the cfg file's text as read, before adaptation).
    """

    def __init__(
        self,
        cfg: str | Path,
        img_size: int | tuple[int, int] = (416, 416),
        verbose: bool = False,
        nc: int | None = None,
        warn_unused: bool = False,
        net_used: Mapping[str, tuple[Any, str]] | None = None,
    ):
        super().__init__()
        # Only the trainer asks for the warning about [net] values it overrides; inference has nothing to override.
        blocks = parse_model_cfg(cfg, nc=nc, warn=warn_unused, net_used=net_used)
        self.cfg = str(cfg)
        self.cfg_text = Path(cfg).read_text()
        self.net_def = blocks[0]
        self.module_defs = blocks[1:]
        self.img_size = img_size
        channels = self.net_def.get("channels", 3)
        self.module_list, self.routs = create_modules(self.module_defs, img_size, in_channels=channels)
        self.yolo_layers = [i for i, m in enumerate(self.module_list) if isinstance(m, YOLOLayer)]
        if not self.yolo_layers:
            raise ValueError(f"{cfg}: no [yolo] block: expected at least one")
        self.nc = self.module_list[self.yolo_layers[0]].nc
        self.max_stride = max(self.module_list[i].stride for i in self.yolo_layers)
        self.version = np.array([0, 2, 5], dtype=np.int32)
        self.seen = np.array([0], dtype=np.int64)
        self._build_plan()
        if verbose:
            self.info()

    def _build_plan(self) -> None:
        """Precompute per block: how to call it, whether to keep its output, which kept outputs to drop after it."""
        kinds = {"route": _ROUTE, "shortcut": _SHORTCUT, "yolo": _YOLO}
        self._kinds = [kinds.get(m["type"], _PLAIN) for m in self.module_defs]
        last_use: dict[int, int] = {}
        for i, m in enumerate(self.module_defs):
            if m["type"] in ("route", "shortcut"):
                for j in _layer_refs(i, m):
                    last_use[j] = i
        self._release = [[] for _ in self.module_defs]
        for j, i in last_use.items():
            self._release[i].append(j)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """x: (bs, c, h, w) float images, h and w multiples of the largest stride.

        Returns, in train mode, one raw (bs, na, ny, nx, 5 + nc) tensor per YOLO layer in cfg order; in eval mode
        ``(inference, raw_list)`` with ``inference`` (bs, N, 5 + nc): xywh in input pixels, sigmoid objectness and
        class scores, layers concatenated in cfg order.
        """
        if x.shape[-2] % self.max_stride or x.shape[-1] % self.max_stride:
            raise ValueError(f"input {x.shape[-2]}x{x.shape[-1]}: expected height and width multiples of "
                             f"{self.max_stride} (the largest stride of {self.cfg})")  # fmt: skip
        outputs: list[torch.Tensor | None] = [None] * len(self._kinds)
        yolo_out = []
        routs, release = self.routs, self._release
        for i, (kind, module) in enumerate(zip(self._kinds, self.module_list)):
            if kind == _PLAIN:
                x = module(x)
            elif kind == _ROUTE:
                x = module(outputs)
            elif kind == _SHORTCUT:
                x = module(x, outputs)
            else:
                yolo_out.append(module(x))
            if routs[i]:
                outputs[i] = x
            for j in release[i]:
                outputs[j] = None
        if self.training:
            return yolo_out
        io, p = zip(*yolo_out)
        return torch.cat(io, 1), list(p)

    def fuse(self) -> Darknet:
        """Fold each BatchNorm into the convolution before it, in place (for inference); returns self.

        The convolutions' own weight tensors are rescaled (``fold_bn_into_conv_``): an optimizer or another
        reference holding them sees the fused values, so fuse only a model built for inference.
        """
        for i, m in enumerate(self.module_list):
            if isinstance(m, nn.Sequential) and hasattr(m, "BatchNorm2d") and hasattr(m, "Conv2d"):
                fused = nn.Sequential()
                fused.add_module("Conv2d", fold_bn_into_conv_(m.Conv2d, m.BatchNorm2d))
                if hasattr(m, "activation"):
                    fused.add_module("activation", m.activation)
                self.module_list[i] = fused
        return self

    def info(self, verbose: bool = False, img_size: int | tuple[int, int] = 416) -> tuple:
        """Print and return ``(n_layers, n_params, n_grads, gflops)`` (see ``utils.torch_utils.model_info``)."""
        return model_info(self, verbose, img_size)

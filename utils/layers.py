"""Parameter-free building blocks of Darknet networks: activations, [route] and [shortcut]."""

from __future__ import annotations

import torch
from torch import nn


def make_activation(name: str) -> nn.Module | None:
    """The module for a Darknet activation name; ``None`` for ``linear`` (nothing to apply).

    ``leaky`` is LeakyReLU(0.1) as in Darknet; in-place activations are safe here because they always follow a
    convolution or BatchNorm, whose backward pass does not need their output.
    """
    if name == "linear":
        return None
    if name == "leaky":
        return nn.LeakyReLU(0.1, inplace=True)
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "mish":
        return nn.Mish()
    if name == "swish":
        return nn.SiLU()
    if name == "logistic":
        return nn.Sigmoid()
    raise ValueError(f"activation {name!r}: expected one of leaky, linear, relu, mish, swish, logistic")


class FeatureConcat(nn.Module):
    """Darknet ``[route]``: concatenate earlier outputs along channels, optionally keeping one channel group.

    Args:
        layers: absolute indices of the blocks whose outputs are concatenated, in order.
        groups, group_id: split the concatenation into ``groups`` equal channel chunks and keep chunk
            ``group_id`` (Darknet's CSP-style routes); ``groups=1`` keeps everything.
    """

    def __init__(self, layers: list[int], groups: int = 1, group_id: int = 0):
        super().__init__()
        self.layers = list(layers)
        self.groups = groups
        self.group_id = group_id

    def forward(self, outputs: list[torch.Tensor | None]) -> torch.Tensor:
        """outputs: per-block outputs so far (kept ones only); returns (bs, c, h, w)."""
        if len(self.layers) == 1:
            x = outputs[self.layers[0]]
        else:
            x = torch.cat([outputs[j] for j in self.layers], 1)
        if self.groups > 1:
            x = x.chunk(self.groups, 1)[self.group_id]
        return x

    def extra_repr(self) -> str:
        return f"layers={self.layers}, groups={self.groups}, group_id={self.group_id}"


class Shortcut(nn.Module):
    """Darknet ``[shortcut]``: add the outputs of ``layers`` to the previous block's output, then activate.

    Like Darknet, the result has the previous output's channels; when an added tensor has a different channel
    count, only the overlapping channels are added.
    """

    def __init__(self, layers: list[int], activation: str = "linear"):
        super().__init__()
        self.layers = list(layers)
        self.act = make_activation(activation)

    def forward(self, x: torch.Tensor, outputs: list[torch.Tensor | None]) -> torch.Tensor:
        """x: (bs, c, h, w) previous output; returns (bs, c, h, w)."""
        nx = x.shape[1]
        for j in self.layers:
            a = outputs[j]
            na = a.shape[1]
            if na == nx:
                x = x + a
            elif na > nx:
                x = x + a[:, :nx]
            else:
                x = torch.cat((x[:, :na] + a, x[:, na:]), 1)
        return x if self.act is None else self.act(x)

    def extra_repr(self) -> str:
        return f"layers={self.layers}"

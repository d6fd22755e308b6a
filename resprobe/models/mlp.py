"""A small fully connected family for synthetic experiments (Balduzzi et al. 2017 style).

``MLP(in -> width) -> depth blocks -> Linear(width -> out)``. A residual block computes
``x + beta * Linear(relu([BN] x))`` (pre-activation, no activation after the addition); a plain
block computes ``relu([BN] Linear(x))``.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..anatomy.parts import UnitParts, identity, register_block

__all__ = ["MLPBlock", "MLP", "mlp", "LooksLinearMLP"]


class MLPBlock(nn.Module):
    def __init__(self, width: int, residual: bool, batchnorm: bool, branch_scale: float = 1.0):
        super().__init__()
        self.residual = residual
        self.branch_scale = float(branch_scale)
        self.linear = nn.Linear(width, width)
        self.bn = nn.BatchNorm1d(width) if batchnorm else nn.Identity()
        nn.init.kaiming_normal_(self.linear.weight, nonlinearity="relu")
        nn.init.zeros_(self.linear.bias)

    def branch(self, x):
        if self.residual:
            return self.branch_scale * self.linear(F.relu(self.bn(x)))
        return F.relu(self.bn(self.linear(x)))

    def forward(self, x):
        return x + self.branch(x) if self.residual else self.branch(x)


class MLP(nn.Module):
    def __init__(self, depth: int = 4, width: int = 200, residual: bool = True, batchnorm: bool = True,
                 in_features: int = 1, out_features: int = 1, branch_scale: float = 1.0):
        super().__init__()
        for key, v, hi in (("depth", depth, 100_000), ("width", width, 1 << 16), ("in_features", in_features, 1 << 24),
                           ("out_features", out_features, 1 << 24)):
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi:
                raise ValueError(f"{key} must be an integer in 1..{hi}, got {v!r}")
        if not math.isfinite(branch_scale):
            raise ValueError(f"branch_scale must be finite, got {branch_scale!r}")
        from .cifar import weights_fit
        weights_fit(4.0 * (depth * (width + 4) * width + (in_features + out_features) * width), f"an MLP of depth {depth} "
              f"and width {width}")
        self.stem = nn.Linear(in_features, width)
        nn.init.kaiming_normal_(self.stem.weight, nonlinearity="linear")
        self.blocks = nn.Sequential(*[MLPBlock(width, residual, batchnorm, branch_scale) for _ in range(depth)])
        self.head = nn.Linear(width, out_features)
        nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(width))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


def mlp(depth: int = 4, width: int = 200, residual: bool = True, batchnorm: bool = True,
        in_features: int = 1, out_features: int = 1, branch_scale: float = 1.0) -> MLP:
    return MLP(depth, width, residual, batchnorm, in_features, out_features, branch_scale)


class LooksLinearMLP(nn.Module):
    """Feedforward net with CReLU units and looks-linear initialisation (Balduzzi et al. 2017):
    each layer computes ``W · [relu(u), relu(-u)]`` with ``W = [W0, -W0]`` and W0 orthogonal, so the
    network is exactly linear (and norm-preserving) at initialisation."""

    def __init__(self, depth: int = 4, width: int = 200, in_features: int = 1, out_features: int = 1):
        super().__init__()
        self.stem = nn.Linear(in_features, width)
        nn.init.kaiming_normal_(self.stem.weight, nonlinearity="linear")
        self.layers = nn.ModuleList()
        for _ in range(depth):
            lin = nn.Linear(2 * width, width)
            w0 = torch.empty(width, width)
            nn.init.orthogonal_(w0)
            with torch.no_grad():
                lin.weight.copy_(torch.cat([w0, -w0], dim=1))
                lin.bias.zero_()
            self.layers.append(lin)
        self.head = nn.Linear(width, out_features)
        nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(width))

    def forward(self, x):
        u = self.stem(x)
        for lin in self.layers:
            u = lin(torch.cat([F.relu(u), F.relu(-u)], dim=-1))
        return self.head(u)


def _mlp_parts(m: MLPBlock) -> UnitParts:
    if m.residual:
        return UnitParts(branch=m.branch, shortcut=identity, shortcut_kind="identity")
    return UnitParts(branch=lambda x: m.bn(m.linear(x)), shortcut=None, post=F.relu)


register_block(MLPBlock, _mlp_parts)

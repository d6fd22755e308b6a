"""A small fully connected family for synthetic experiments (Balduzzi et al. 2017 style).

``MLP(in -> width) -> depth blocks -> Linear(width -> out)``. A residual block computes
``x + beta * Linear(relu([BN] x))`` (pre-activation, no activation after the addition); a plain
block computes ``relu([BN] Linear(x))``.
"""
from __future__ import annotations

import math

import torch.nn as nn
import torch.nn.functional as F

__all__ = ["MLPBlock", "MLP", "mlp"]


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
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
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

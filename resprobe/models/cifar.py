"""He et al. CIFAR ResNets (depth 6n+2), their plain twins and pre-activation variants.

State-dict keys match the widely used CIFAR implementation (Idelbayev's ``resnet.py``):
``conv1, bn1, layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2,shortcut}, linear`` so that published
checkpoints of this family load directly.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..anatomy.parts import UnitParts, identity, register_block

__all__ = [
    "ZeroPadShortcut",
    "BasicBlock",
    "PlainBlock",
    "PreActBlock",
    "PreActPlainBlock",
    "CifarResNet",
    "cifar_resnet",
]


class ZeroPadShortcut(nn.Module):
    """He et al. option A: strided subsampling, then zero-padded channels (parameter free)."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.stride = stride
        extra = planes - in_planes
        self.pad_front = extra // 2
        self.pad_back = extra - extra // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))


def _shortcut(in_planes: int, planes: int, stride: int, kind: str) -> nn.Module:
    if stride == 1 and in_planes == planes:
        return nn.Identity()
    if kind == "A":
        return ZeroPadShortcut(in_planes, planes, stride)
    if kind == "B":
        return nn.Sequential(
            nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
        )
    raise ValueError(f"shortcut must be 'A' or 'B', got {kind!r}")


def _conv3(i: int, o: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(i, o, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Original (post-activation) block: relu(bn2(conv2(relu(bn1(conv1 x)))) + shortcut(x))."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A"):
        super().__init__()
        self.conv1 = _conv3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes, stride, shortcut)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PlainBlock(nn.Module):
    """Plain twin of :class:`BasicBlock`: the same layers, no shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A"):
        super().__init__()
        self.conv1 = _conv3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)))


class PreActBlock(nn.Module):
    """Pre-activation block (He et al. 2016b): shortcut(x) + conv2(relu(bn2(conv1(relu(bn1 x))))).

    A projection shortcut (option B) acts on the pre-activated input, as in the authors' code.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A"):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = _conv3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3(planes, planes)
        self.shortcut = _shortcut(in_planes, planes, stride, shortcut)

    def preact_shortcut(self) -> bool:
        return isinstance(self.shortcut, nn.Sequential)

    def forward(self, x):
        a = F.relu(self.bn1(x))
        s = self.shortcut(a) if self.preact_shortcut() else self.shortcut(x)
        out = self.conv2(F.relu(self.bn2(self.conv1(a))))
        return out + s


class PreActPlainBlock(nn.Module):
    """Plain twin of :class:`PreActBlock`."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A"):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = _conv3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3(planes, planes)

    def forward(self, x):
        return self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))


class CifarResNet(nn.Module):
    """Stem (3x3 conv 16 [-> BN -> ReLU]) -> three stages of n blocks (16/32/64) -> pool -> linear."""

    def __init__(
        self,
        depth: int = 20,
        shortcut: str = "A",
        preact: bool = False,
        plain: bool = False,
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 16,
    ):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...), got {depth}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        for key, v, hi in (("depth", depth, 6002), ("num_classes", num_classes, 100_000),
                           ("in_channels", in_channels, 1024), ("width", width, 4096)):
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi:
                raise ValueError(f"{key} must be an integer in 1..{hi}, got {v!r}")
        n = (depth - 2) // 6
        weights_fit(4 * 378 * n * width ** 2, f"a depth-{depth} CIFAR ResNet of width {width}")
        self.depth, self.preact, self.plain, self.shortcut_option = depth, preact, plain, shortcut
        block = {(False, False): BasicBlock, (False, True): PlainBlock,
                 (True, False): PreActBlock, (True, True): PreActPlainBlock}[(preact, plain)]
        self.conv1 = _conv3(in_channels, width)
        if not preact:
            self.bn1 = nn.BatchNorm2d(width)
        planes = [width, 2 * width, 4 * width]
        in_planes = width
        for s, p in enumerate(planes):
            layers = []
            for i in range(n):
                stride = 2 if (s > 0 and i == 0) else 1
                layers.append(block(in_planes, p, stride, shortcut))
                in_planes = p
            setattr(self, f"layer{s + 1}", nn.Sequential(*layers))
        if preact:
            self.bn = nn.BatchNorm2d(in_planes)
        self.linear = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        out = self.conv1(x)
        if not self.preact:
            out = F.relu(self.bn1(out))
        out = self.layer3(self.layer2(self.layer1(out)))
        if self.preact:
            out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def weights_fit(nbytes: float, what: str) -> None:
    """Refuse, before allocating, a network whose weights alone take more than half the free memory."""
    from ..checks import require_memory
    require_memory(nbytes, f"the weights of {what}", "lower the depth or width", share=0.5)


def cifar_resnet(depth: int = 20, shortcut: str = "A", preact: bool = False, plain: bool = False,
                 num_classes: int = 10, in_channels: int = 3, width: int = 16) -> CifarResNet:
    """Factory for He et al. CIFAR ResNets and their plain twins (``plain=True``)."""
    return CifarResNet(depth, shortcut.upper(), preact, plain, num_classes, in_channels, width)


# --- the blocks' parts for the residual anatomy -----------------------------------------------------

def _shortcut_kind(sc: nn.Module) -> str:
    if isinstance(sc, nn.Identity):
        return "identity"
    return "zeropad" if isinstance(sc, ZeroPadShortcut) else "projection"


def _basic(m: BasicBlock) -> UnitParts:
    return UnitParts(branch=lambda x: m.bn2(m.conv2(F.relu(m.bn1(m.conv1(x))))), shortcut=m.shortcut, post=F.relu,
                     shortcut_kind=_shortcut_kind(m.shortcut))


def _plain(m: PlainBlock) -> UnitParts:
    return UnitParts(branch=lambda x: m.bn2(m.conv2(F.relu(m.bn1(m.conv1(x))))), shortcut=None, post=F.relu)


def _preact(m: PreActBlock) -> UnitParts:
    def branch(x):
        return m.conv2(F.relu(m.bn2(m.conv1(F.relu(m.bn1(x))))))

    if m.preact_shortcut():
        def shortcut(x):
            return m.shortcut(F.relu(m.bn1(x)))
    else:
        shortcut = m.shortcut
    return UnitParts(branch=branch, shortcut=shortcut, post=identity, shortcut_kind=_shortcut_kind(m.shortcut))


def _preact_plain(m: PreActPlainBlock) -> UnitParts:
    return UnitParts(branch=lambda x: m.conv2(F.relu(m.bn2(m.conv1(F.relu(m.bn1(x)))))), shortcut=None)


register_block(BasicBlock, _basic)
register_block(PlainBlock, _plain)
register_block(PreActBlock, _preact)
register_block(PreActPlainBlock, _preact_plain)

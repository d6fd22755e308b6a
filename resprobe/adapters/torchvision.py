"""torchvision's ResNet blocks (BasicBlock, Bottleneck: ResNet, Wide ResNet, ResNeXt).

Their other residual blocks (ViT's EncoderBlock, Swin, ConvNeXt's CNBlock, RegNet, MobileNet and
EfficientNet inverted residuals) decompose automatically from their own ``forward``."""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock, Bottleneck

from ..anatomy.parts import UnitParts, identity, register_block


def _shortcut(m):
    if m.downsample is None:
        return identity, "identity"
    return m.downsample, "projection" if any(isinstance(x, nn.Conv2d) for x in m.downsample.modules()) else "zeropad"


def _basic(m: BasicBlock) -> UnitParts:
    s, kind = _shortcut(m)
    # the block reuses one in-place ReLU; on the fresh tensors below in-place is harmless
    return UnitParts(branch=lambda x: m.bn2(m.conv2(m.relu(m.bn1(m.conv1(x))))), shortcut=s, post=F.relu,
                     shortcut_kind=kind)


def _bottleneck(m: Bottleneck) -> UnitParts:
    def branch(x):
        out = m.relu(m.bn1(m.conv1(x)))
        out = m.relu(m.bn2(m.conv2(out)))
        return m.bn3(m.conv3(out))

    s, kind = _shortcut(m)
    return UnitParts(branch=branch, shortcut=s, post=F.relu, shortcut_kind=kind)


register_block(BasicBlock, _basic)
register_block(Bottleneck, _bottleneck)

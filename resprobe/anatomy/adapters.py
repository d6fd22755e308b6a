"""Block adapters: map a residual block *type* to its parts F (branch), S (shortcut) and post.

This is the only place that knows block types. To make a model of your own work, register its
block class::

    from resprobe.anatomy import BlockParts, register_block

    def my_block_parts(m):                      # m: an instance of MyBlock
        return BlockParts(
            branch=lambda x: m.bn2(m.conv2(torch.relu(m.bn1(m.conv1(x))))),
            shortcut=lambda x: x,               # or m.proj(x); None for a plain (no-shortcut) block
            post=torch.relu,                    # the activation after the addition (identity if none)
            shortcut_kind="identity",           # identity | projection | zeropad | none
        )

    register_block(MyBlock, my_block_parts)

The block's output must equal ``post(shortcut(x) + branch(x))`` (or ``post(branch(x))`` for a plain
block); :func:`resprobe.anatomy.anatomy` users can check it with ``view.check_decomposition(x)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.cifar import BasicBlock, PlainBlock, PreActBlock, PreActPlainBlock, ZeroPadShortcut
from ..models.mlp import MLPBlock

__all__ = ["BlockParts", "register_block", "unregister_block", "registered_block_types", "parts_for",
           "SHORTCUT_KINDS"]

SHORTCUT_KINDS = ("identity", "projection", "zeropad", "none")

Tensor = torch.Tensor


def identity(x: Tensor) -> Tensor:
    return x


@dataclass
class BlockParts:
    """The three callables of a block and its shortcut kind (``none`` for a plain block)."""

    branch: Callable[[Tensor], Tensor]
    shortcut: Optional[Callable[[Tensor], Tensor]]
    post: Callable[[Tensor], Tensor]
    shortcut_kind: str

    def __post_init__(self):
        if self.shortcut_kind not in SHORTCUT_KINDS:
            raise ValueError(f"shortcut_kind must be one of {SHORTCUT_KINDS}, got {self.shortcut_kind!r}")
        if (self.shortcut is None) != (self.shortcut_kind == "none"):
            raise ValueError("a plain block has shortcut=None and shortcut_kind='none', and only it")


_REGISTRY: dict[type, Callable[[nn.Module], BlockParts]] = {}


def register_block(cls: type, parts: Callable[[nn.Module], BlockParts]) -> None:
    """Teach resprobe a residual block type: ``parts(module)`` returns its :class:`BlockParts`."""
    if not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise TypeError(f"register_block needs an nn.Module subclass, got {cls!r}")
    _REGISTRY[cls] = parts


def unregister_block(cls: type) -> None:
    _REGISTRY.pop(cls, None)


def registered_block_types() -> list[type]:
    return list(_REGISTRY)


def parts_for(module: nn.Module) -> Optional[BlockParts]:
    """The parts of ``module`` if its exact type (or nearest registered base class) is registered."""
    for cls in type(module).__mro__:
        if cls in _REGISTRY:
            return _REGISTRY[cls](module)
    return None


def _shortcut_kind(sc: Optional[nn.Module]) -> str:
    if sc is None or isinstance(sc, nn.Identity):
        return "identity"
    if isinstance(sc, ZeroPadShortcut):
        return "zeropad"
    if any(isinstance(m, nn.Conv2d) for m in sc.modules()):
        return "projection"
    return "zeropad" if not list(sc.parameters()) else "projection"


# --- the project's own CIFAR family -------------------------------------------------------------

def _basic(m: BasicBlock) -> BlockParts:
    return BlockParts(branch=lambda x: m.bn2(m.conv2(F.relu(m.bn1(m.conv1(x))))),
                      shortcut=m.shortcut, post=F.relu, shortcut_kind=_shortcut_kind(m.shortcut))


def _plain(m: PlainBlock) -> BlockParts:
    return BlockParts(branch=lambda x: m.bn2(m.conv2(F.relu(m.bn1(m.conv1(x))))),
                      shortcut=None, post=F.relu, shortcut_kind="none")


def _preact(m: PreActBlock) -> BlockParts:
    def branch(x):
        return m.conv2(F.relu(m.bn2(m.conv1(F.relu(m.bn1(x))))))

    if m.preact_shortcut():
        def shortcut(x):
            return m.shortcut(F.relu(m.bn1(x)))
    else:
        shortcut = m.shortcut
    return BlockParts(branch=branch, shortcut=shortcut, post=identity, shortcut_kind=_shortcut_kind(m.shortcut))


def _preact_plain(m: PreActPlainBlock) -> BlockParts:
    return BlockParts(branch=lambda x: m.conv2(F.relu(m.bn2(m.conv1(F.relu(m.bn1(x)))))),
                      shortcut=None, post=identity, shortcut_kind="none")


def _mlp(m: MLPBlock) -> BlockParts:
    if m.residual:
        return BlockParts(branch=m.branch, shortcut=identity, post=identity, shortcut_kind="identity")
    return BlockParts(branch=lambda x: m.bn(m.linear(x)), shortcut=None, post=F.relu, shortcut_kind="none")


register_block(BasicBlock, _basic)
register_block(PlainBlock, _plain)
register_block(PreActBlock, _preact)
register_block(PreActPlainBlock, _preact_plain)
register_block(MLPBlock, _mlp)


# --- torchvision ----------------------------------------------------------------------------------

def _tv_shortcut(m):
    return m.downsample if m.downsample is not None else identity


def _tv_basic(m) -> BlockParts:
    # torchvision's block reuses one in-place ReLU; on the fresh tensors below in-place is harmless.
    return BlockParts(branch=lambda x: m.bn2(m.conv2(m.relu(m.bn1(m.conv1(x))))),
                      shortcut=_tv_shortcut(m), post=F.relu, shortcut_kind=_shortcut_kind(m.downsample))


def _tv_bottleneck(m) -> BlockParts:
    def branch(x):
        out = m.relu(m.bn1(m.conv1(x)))
        out = m.relu(m.bn2(m.conv2(out)))
        return m.bn3(m.conv3(out))

    return BlockParts(branch=branch, shortcut=_tv_shortcut(m), post=F.relu,
                      shortcut_kind=_shortcut_kind(m.downsample))


try:  # torchvision is an optional extra
    from torchvision.models.resnet import BasicBlock as _TVBasic, Bottleneck as _TVBottleneck

    register_block(_TVBasic, _tv_basic)
    register_block(_TVBottleneck, _tv_bottleneck)
except ImportError:  # pragma: no cover - depends on the environment
    pass

"""Residual units and the registry of block types.

A *residual unit* computes ``y = post(S(x) + F(x))``: branch ``F``, shortcut ``S`` (identity,
projection or zero-pad), post-operation ``post`` (ReLU after the addition, a post-norm, or the
identity). A *plain* unit has no shortcut (``y = post(F(x))``: a plain twin's block); a *transition*
is a non-residual stage unit (a downsampling layer between stages, an inverted-residual block that
does not add its input): it can be observed but never deleted.

A *block* is a module that holds one or more units in sequence: a ResNet block holds one, a
transformer block two (attention, MLP). Blocks are found in three ways, in this order:

1. the block's class is registered with :func:`register_block` (the project's zoo registers its
   blocks where they live, in :mod:`resprobe.models`);
2. an adapter module registered for the model's package is imported (lazily) and registers its
   classes (``torchvision``: :mod:`resprobe.adapters.torchvision`);
3. automatically, from the block's own ``forward`` traced with ``torch.fx`` (see :mod:`.decompose`).

To teach resprobe a block of your own::

    from resprobe.anatomy import UnitParts, register_block

    register_block(MyBlock, lambda m: UnitParts(
        branch=lambda x: m.bn2(m.conv2(torch.relu(m.bn1(m.conv1(x))))),
        shortcut=lambda x: x,          # m.proj for a projection; None for a plain block
        post=torch.relu,               # the operation after the addition (identity if none)
        shortcut_kind="identity"))     # identity | projection | zeropad | none

A transformer-style block returns a list of ``UnitParts`` (one per residual unit, with ``name`` set
to the unit's part, e.g. ``"attn"`` and ``"mlp"``).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn

__all__ = ["UnitParts", "SHORTCUT_KINDS", "UNIT_KINDS", "register_block", "unregister_block",
           "registered_block_types", "parts_for", "register_adapter_module", "load_adapters", "identity"]

SHORTCUT_KINDS = ("identity", "projection", "zeropad", "none")
UNIT_KINDS = ("residual", "plain", "transition")

Tensor = torch.Tensor


def identity(x: Tensor) -> Tensor:
    return x


@dataclass
class UnitParts:
    """The callables of one unit. ``shortcut=None`` for plain units and transitions.

    ``name``: the unit's part within its block (``""`` when the block is one unit);
    ``modules``: the modules whose parameters belong to the unit (default: the whole block);
    ``kind``: ``residual`` | ``plain`` | ``transition`` (default: residual if it has a shortcut, else plain);
    ``paths``: ``((name, callable), ...)`` when the branch is a sum of paths that read the same input (a
    parallel-residual layer: ``attn`` and ``mlp``), so that one of them can be deleted alone (``Edits.drop``).
    """

    branch: Callable[[Tensor], Tensor]
    shortcut: Optional[Callable[[Tensor], Tensor]] = None
    post: Callable[[Tensor], Tensor] = identity
    shortcut_kind: str = "identity"
    name: str = ""
    modules: Sequence[nn.Module] = field(default_factory=tuple)
    kind: Optional[str] = None
    paths: tuple = ()

    def paths_branch(self, drop) -> Callable[[Tensor], Tensor]:
        """The branch without the named ``paths`` (a parallel-residual layer's ``attn`` or ``mlp``: ``paths`` are
        ``(name, callable)`` whose sum is the branch); zeros when every path is dropped."""
        names = [n for n, _ in self.paths]
        bad = sorted(set(drop) - set(names))
        if bad:
            raise ValueError(f"unit {self.name or '(unnamed)'} has no path {', '.join(bad)} (its paths: "
                             f"{', '.join(names) or 'none'})")
        keep = [f for n, f in self.paths if n not in drop]

        def branch(x: Tensor) -> Tensor:
            return sum((f(x) for f in keep[1:]), keep[0](x)) if keep else torch.zeros_like(x)
        return branch

    def __post_init__(self):
        if self.shortcut is None and self.shortcut_kind != "none":
            self.shortcut_kind = "none"
        if self.shortcut_kind not in SHORTCUT_KINDS:
            raise ValueError(f"shortcut_kind must be one of {SHORTCUT_KINDS}, got {self.shortcut_kind!r}")
        if (self.shortcut is None) != (self.shortcut_kind == "none"):
            raise ValueError("a unit without shortcut has shortcut=None and shortcut_kind='none', and only it")
        if self.kind is None:
            self.kind = "residual" if self.shortcut is not None else "plain"
        if self.kind not in UNIT_KINDS:
            raise ValueError(f"kind must be one of {UNIT_KINDS}, got {self.kind!r}")
        if (self.kind == "residual") != (self.shortcut is not None):
            raise ValueError("a residual unit has a shortcut; plain units and transitions have none")

    @property
    def residual(self) -> bool:
        return self.shortcut is not None

    def output(self, x: Tensor, branch: Optional[Callable[[Tensor], Tensor]] = None,
               scale: Optional[float] = None, deleted: bool = False) -> Tensor:
        """``post(S(x) + F(x))`` — the one place the unit's formula is written.

        ``deleted``: the branch is dropped (``post(S(x))``); ``branch``: another unit's branch is
        used (reordering); ``scale``: the branch is multiplied by it. A plain unit computes
        ``post(F(x))`` (times ``scale``); deleting it is the identity (the caller checks that the shape
        is kept; a moved plain unit is the other unit whole, see ``ResidualView``)."""
        if self.shortcut is None:
            if deleted:
                return x
            y = self.post(self.branch(x))
            return y if scale is None else y * scale
        s = self.shortcut(x)
        if deleted:
            return self.post(s)
        f = (branch or self.branch)(x)
        if scale is not None:
            f = f * scale
        if f.device != s.device:   # a model placed across devices: the branch ran where its weights are
            f = f.to(s.device)
        return self.post(s + f)



PartsFn = Callable[[nn.Module], "UnitParts | Sequence[UnitParts]"]
_REGISTRY: dict[type, PartsFn] = {}
# top-level package of a model's modules -> module that registers that package's block types
_ADAPTER_MODULES: dict[str, str] = {"torchvision": "resprobe.adapters.torchvision",
                                    "transformers": "resprobe.adapters.transformers"}
_LOADED: set[str] = set()


def register_block(cls: type, parts: PartsFn) -> None:
    """Teach resprobe a block type: ``parts(module)`` returns its :class:`UnitParts` (or a list)."""
    if not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise TypeError(f"register_block needs an nn.Module subclass, got {cls!r}")
    _REGISTRY[cls] = parts


def unregister_block(cls: type) -> None:
    _REGISTRY.pop(cls, None)


def registered_block_types() -> list[type]:
    return list(_REGISTRY)


def register_adapter_module(package: str, module: str) -> None:
    """Import ``module`` (which calls :func:`register_block`) the first time a model holds modules
    of ``package``."""
    _ADAPTER_MODULES[package] = module


def load_adapters(model: nn.Module) -> None:
    """Import the adapter modules of the packages the model's modules (or their base classes) come from
    (once)."""
    packages = {c.__module__.split(".")[0] for m in model.modules() for c in type(m).__mro__}
    for pkg in sorted(packages & set(_ADAPTER_MODULES)):
        name = _ADAPTER_MODULES[pkg]
        if name not in _LOADED:
            importlib.import_module(name)
            _LOADED.add(name)


def parts_for(module: nn.Module) -> Optional[list[UnitParts]]:
    """The units of ``module`` if its type (or the nearest registered base class) is registered."""
    for cls in type(module).__mro__:
        if cls in _REGISTRY:
            p = _REGISTRY[cls](module)
            return list(p) if isinstance(p, (list, tuple)) else [p]
    return None

"""Where the anatomy finds a model's blocks (registered, from an adapter, or read from their own forward), and
the stem and head of models torch.fx cannot trace (:func:`register_model`)."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch.nn as nn

from .decompose import auto_units
from .parts import UnitParts, load_adapters, parts_for, registered_block_types
from .units import AnatomyError, Tensor

__all__ = ["register_model", "find_blocks", "no_blocks_error", "MODEL_ADAPTERS"]

# model class -> (stem(model, x), head(model, h), sample, reference) for models that torch.fx cannot split
MODEL_ADAPTERS: dict[type, tuple] = {}


def register_model(cls: type, stem: Callable[[nn.Module, Tensor], Tensor],
                   head: Callable[[nn.Module, Tensor], Tensor],
                   sample: Optional[Callable[[nn.Module, Sequence[int]], Tensor]] = None,
                   reference: Optional[Callable[[nn.Module, Tensor], Tensor]] = None) -> None:
    """Give the stem and head of a model class explicitly (for models ``torch.fx`` cannot trace);
    its blocks must then be called one after the other in registration order. ``sample(model, shape)``
    makes a batch of two inputs of ``shape`` for shape inference (default: standard normal floats; a language
    model gives token ids); ``reference(model, x)``, the model's own output, against which shape inference
    checks the decomposed run (relative max difference at most 1e-4)."""
    MODEL_ADAPTERS[cls] = (stem, head, sample, reference)


def _is_container(m: nn.Module) -> bool:
    return isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict))


def _is_torch_leaf(m: nn.Module) -> bool:
    return type(m).__module__.startswith("torch.nn") and not _is_container(m)


def find_blocks(model: nn.Module) -> list[tuple[str, nn.Module, list[UnitParts], bool]]:
    """``(name, module, units, automatic)`` for every block, outermost first, in module order."""
    load_adapters(model)
    found, skip = [], []
    for name, mod in model.named_modules():
        if not name or any(name.startswith(p + ".") for p in skip):
            continue
        units = parts_for(mod)
        auto = False
        if units is None and not _is_container(mod) and not _is_torch_leaf(mod):
            units = auto_units(mod)
            auto = units is not None
        if units:
            found.append((name, mod, units, auto))
            skip.append(name)
    return found


def no_blocks_error(model: nn.Module) -> AnatomyError:
    types = sorted({type(m).__name__ for m in model.modules()})
    known = ", ".join(sorted(t.__module__.split(".")[0] + "." + t.__name__ for t in registered_block_types()))
    return AnatomyError(
        f"no residual block found in {type(model).__name__}: no module adds its input to a branch of its own. "
        f"Module types in the model: {', '.join(types)}. Registered block types: {known}",
        "if the model has residual blocks, register their class with "
        "resprobe.anatomy.register_block(YourBlock, parts_fn) (see resprobe/anatomy/parts.py)")

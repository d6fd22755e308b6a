"""Independent oracles for the tests: lesions done by naive surgery on a copy of the model — its own
modules patched (the last layer of a deleted branch zeroed, a plain block replaced by the identity,
branch weights exchanged for a reordering) and its own forward run over the data. Nothing here uses
resprobe's unit parts; it knows the concrete block families instead."""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn as nn


def _zero(mod: nn.Module) -> None:
    with torch.no_grad():
        for p in mod.parameters(recurse=True):
            p.zero_()


def zero_branch(model: nn.Module, unit: str) -> None:
    """Make the branch of ``unit`` output exactly zero by zeroing its last layer (family by family)."""
    mods = dict(model.named_modules())
    block, _, part = unit.rpartition(".")
    if type(mods.get(block)).__name__ in _MULTI:
        blk = mods[block]
    else:
        blk, part = mods[unit], ""
    name = type(blk).__name__
    mod = type(blk).__module__
    if name in ("BasicBlock",) and mod.startswith("resprobe"):
        return _zero(blk.bn2)
    if name.startswith("PreAct") and mod.startswith("resprobe"):
        return _zero(blk.conv2)
    if name == "MLPBlock":
        return _zero(blk.linear)
    if mod.startswith("torchvision.models.resnet"):
        return _zero(blk.bn3 if hasattr(blk, "bn3") else blk.bn2)
    if name == "EncoderBlock":  # torchvision ViT
        return _zero(blk.self_attention.out_proj if part == "self_attention" else blk.mlp[3])
    if name == "CNBlock":  # torchvision ConvNeXt: the last Linear of the branch
        return _zero(blk.block[5])
    if name in ("Block",) and mod.startswith("timm"):  # timm ViT
        return _zero(blk.attn.proj if part == "attn" else blk.mlp.fc2)
    if name == "ConvNeXtBlock":  # timm ConvNeXt
        return _zero(blk.mlp.fc2)
    if name == "SwinTransformerBlock":
        return _zero(blk.attn.proj if part == "attn" else blk.mlp[3])
    raise NotImplementedError(f"no oracle for {name} ({mod})")


_MULTI = ("EncoderBlock", "Block", "SwinTransformerBlock", "SwinTransformerBlockV2")


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def _unit_modules(model: nn.Module, unit: str) -> list[str]:
    """Module names holding a unit's branch parameters (the whole block for one-unit blocks)."""
    mods = dict(model.named_modules())
    block, _, part = unit.rpartition(".")
    b = mods.get(block)
    if type(b).__name__ not in _MULTI:
        return [unit]
    if type(b).__module__.startswith("timm"):
        return [f"{block}.{n}" for n in (("norm1", "attn", "ls1") if part == "attn" else ("norm2", "mlp", "ls2"))]
    if type(b).__name__ == "EncoderBlock":
        return [f"{block}.{n}" for n in (("ln_1", "self_attention") if part == "self_attention" else ("ln_2", "mlp"))]
    return [f"{block}.{n}" for n in (("norm1", "attn") if part == "attn" else ("norm2", "mlp"))]


def patched(model: nn.Module, names: list[str], deleted=(), order=None, plain: bool = False) -> nn.Module:
    """A patched copy: ``deleted`` unit indices lose their branch (plain: become nn.Identity), ``order[i]``
    is the unit whose branch unit i runs (branch weights exchanged)."""
    m = copy.deepcopy(model).eval()
    if order is not None:
        src = copy.deepcopy(model)
        for i, j in enumerate(order):
            if i == j:
                continue
            for a, b in zip(_unit_modules(m, names[i]), _unit_modules(src, names[j])):
                if plain:
                    _set_submodule(m, a, copy.deepcopy(src.get_submodule(b)))
                else:
                    m.get_submodule(a).load_state_dict(src.get_submodule(b).state_dict())
    for i in deleted:
        if plain:
            _set_submodule(m, names[i], nn.Identity())
        else:
            zero_branch(m, names[i])
    return m


@torch.no_grad()
def naive_predictions(model, names, data, config, batch_size=256, normalize="none", plain=False) -> np.ndarray:
    m = patched(model, names, config.deleted, config.order, plain)
    out = [m(x).argmax(1).numpy() for x, _, _ in data.batches(batch_size, normalize)]
    return np.concatenate(out)


@torch.no_grad()
def engine_predictions(view, data, configs, batch_size=256, normalize="none") -> list[np.ndarray]:
    """Per-image predictions of every runnable configuration by resprobe's lesion engine."""
    from resprobe.probes.lesion import stream_logits
    n = len(view)
    order = sorted((i for i, c in enumerate(configs) if c.runnable), key=lambda i: configs[i].signature(n))
    preds = [[] for _ in configs]
    view.model.eval()
    for x, _, _ in data.batches(batch_size, normalize):
        for ci, logits in stream_logits(view, x, configs, order):
            preds[ci].append(logits.argmax(1).numpy())
    return [np.concatenate(p) if p else np.empty(0, dtype=np.int64) for p in preds]

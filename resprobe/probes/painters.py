"""Painters' edits of the middle blocks ("Transformer Layers as Painters", Sun et al. 2024): skip them, run them
in parallel, repeat the centre one, or reverse their order — on any residual network whose blocks keep the
shape (a transformer's layers, a ResNet's blocks within a stage).

The edited range for ``k`` blocks is centred in the network and never holds the first or the last block (the
paper keeps both, finding them indispensable): blocks ``s .. s + k - 1`` with ``s = 1 + (B - 2 - k) // 2`` for
``B`` blocks. Each edit is expressed in the anatomy's edits, so the prefix engine runs it from its first
modified unit:

- ``skip``: every unit of the range deleted (each block's branch dropped, its shortcut kept);
- ``parallel``: the range's blocks each run whole on the range's input; their outputs averaged (``mean``, the
  paper's choice) or their updates summed (``sum``): two configurations per ``k``;
- ``repeat``: every block of the range runs the centre block's branches (the centre block repeated ``k`` times);
- ``middle-reversed``: block ``s + j`` runs the branches of block ``s + k - 1 - j``.

A range holding a block that changes the shape, or blocks of different structure (repeat, reversed), gives a
configuration marked "not applicable", never a silent substitute.
"""
from __future__ import annotations

from typing import Optional, Sequence

from ..anatomy import AnatomyError, ResidualView
from ..errors import UsageError
from .lesion_plans import LesionConfig, LesionMode, kendall_tau_of

__all__ = ["painters_configs", "middle_range"]


def middle_range(n_blocks: int, k: int) -> tuple[int, int]:
    """The first and last block of the centred range of ``k`` blocks (first and last block excluded)."""
    if not 1 <= k <= n_blocks - 2:
        raise UsageError(f"Painters' edits span 1..{n_blocks - 2} middle blocks of {n_blocks}; got k = {k}",
                         f"pass --k within 1:{n_blocks - 2}")
    s = 1 + (n_blocks - 2 - k) // 2
    return s, s + k - 1


def _signature(view: ResidualView, b: int) -> tuple:
    blk = view.blocks[b]
    return tuple((view[i].part, view[i].residual, tuple(view[i].in_shape or ()), tuple(view[i].out_shape or ()))
                 for i in blk.units)


def _why_not(view: ResidualView, blocks: Sequence[int], same_structure: bool) -> str:
    for b in blocks:
        blk = view.blocks[b]
        if blk.kind == "transition" or not all(view[i].residual and view.shape_preserving(i) for i in blk.units):
            return f"not applicable: block {blk.name} is not a shape-preserving residual block"
    if same_structure and len({_signature(view, b) for b in blocks}) > 1:
        return "not applicable: the blocks of the range differ in structure"
    return ""


def _config(view: ResidualView, mode: LesionMode, k: int, lo: int, hi: int) -> list[LesionConfig]:
    blocks = list(range(lo, hi + 1))
    names = f"{view.blocks[lo].name}..{view.blocks[hi].name}" if k > 1 else view.blocks[lo].name
    units = [i for b in blocks for i in view.blocks[b].units]
    n = len(view)
    if mode is LesionMode.SKIP:
        return [LesionConfig(mode.value, tuple(units), k=k, label=names, note=_why_not(view, blocks, False))]
    if mode is LesionMode.PARALLEL:
        why = _why_not(view, blocks, False)
        return [LesionConfig(mode.value, k=k, label=f"{names} ({how})", note=why,
                             parallel=() if why else ((units[0], units[-1], how, "block"),))
                for how in ("mean", "sum")]
    why = _why_not(view, blocks, True)
    order = list(range(n))
    if not why:
        centre = blocks[(k - 1) // 2]
        for j, b in enumerate(blocks):
            src = centre if mode is LesionMode.REPEAT else blocks[k - 1 - j]
            for u, v in zip(view.blocks[b].units, view.blocks[src].units):
                order[u] = v
    tau = None
    if not why and mode is LesionMode.REVERSE:
        tau = kendall_tau_of(order)
    return [LesionConfig(mode.value, order=tuple(order), k=k, kendall_tau=tau, label=names, note=why)]


def painters_configs(view: ResidualView, mode: LesionMode, ks: Optional[Sequence[int]]) -> list[LesionConfig]:
    """The configurations of one Painters mode for each number ``k`` of middle blocks (default: every ``k``
    that changes the network: 1.. for skip, 2.. for the others)."""
    B = len(view.blocks)
    if B < 3:
        raise AnatomyError(f"Painters' edits need at least 3 blocks (the first and last are kept); this network has {B}")
    first = 1 if mode is LesionMode.SKIP else 2
    ks = sorted(set(ks)) if ks else list(range(first, B - 1))
    out: list[LesionConfig] = []
    for k in ks:
        lo, hi = middle_range(B, k)
        out += _config(view, mode, k, lo, hi)
    return out

"""What the anatomy is made of: units (branch F, shortcut S, post), blocks, the edits a run applies by unit
index, and the steps the cache verb yields."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Callable, Mapping, NamedTuple, Optional

import torch
import torch.nn as nn

from ..errors import UserError
from .parts import UnitParts

__all__ = ["AnatomyError", "Unit", "BlockInfo", "Edits", "Op", "NO_EDITS", "Step", "PARALLEL_MODES", "PARALLEL_BY",
           "parallel_entry", "Tensor"]


Tensor = torch.Tensor


PARALLEL_MODES = ("sum", "mean")
PARALLEL_BY = ("unit", "block")


def parallel_entry(g: tuple) -> tuple:
    """``(first, last, mode, by)`` of an ``Edits.parallel`` entry (``by`` defaults to ``"unit"``)."""
    if len(g) not in (3, 4) or (len(g) == 4 and g[3] not in PARALLEL_BY):
        raise AnatomyError(f"a parallel entry is (first, last, mode[, by]) with by in {PARALLEL_BY}, got {g!r}")
    return (g[0], g[1], g[2], g[3] if len(g) == 4 else "unit")


class AnatomyError(UserError, ValueError):
    """The model cannot be seen as stem -> residual units -> head, or an edit is invalid."""


@dataclass
class Unit:
    """One unit of the chain: a residual unit, a plain unit (a plain twin's block) or a transition."""

    name: str
    index: int
    block: str               # the block (module path) the unit belongs to; the transition's name for one
    block_index: int
    part: str                # the unit's part within its block ("" when the block is one unit)
    stage: int
    index_in_stage: int      # the block's position within its stage
    parts: UnitParts
    module: nn.Module        # the block module (a transition: its GraphModule)
    in_shape: Optional[tuple] = None
    out_shape: Optional[tuple] = None

    @property
    def kind(self) -> str:
        return self.parts.kind

    @property
    def shortcut_kind(self) -> str:
        return self.parts.shortcut_kind

    @property
    def residual(self) -> bool:
        return self.parts.residual

    @property
    def downsample(self) -> bool:
        """True when the unit changes the tensor's shape (or has a non-identity shortcut)."""
        if self.in_shape is not None and self.out_shape is not None:
            return tuple(self.in_shape) != tuple(self.out_shape)
        return self.shortcut_kind in ("projection", "zeropad") or self.kind == "transition"

    def branch(self, x: Tensor) -> Tensor:
        return self.parts.branch(x)

    def shortcut(self, x: Tensor) -> Tensor:
        if self.parts.shortcut is None:
            raise AnatomyError(f"unit {self.name} is a {self.kind} unit: it has no shortcut")
        return self.parts.shortcut(x)

    def post(self, t: Tensor) -> Tensor:
        return self.parts.post(t)

    def decomposed(self, x: Tensor) -> Tensor:
        """``post(S(x) + F(x))`` (``post(F(x))`` without a shortcut), computed from the parts."""
        return self.parts.output(x)

    def params(self) -> list[nn.Parameter]:
        mods = self.parts.modules or (self.module,)
        seen, out = set(), []
        for m in mods:
            for p in m.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
        return out

    def n_params(self) -> int:
        return sum(p.numel() for p in self.params())


@dataclass
class BlockInfo:
    """A block (module) and the units it holds, in order."""

    name: str
    index: int
    stage: int
    index_in_stage: int
    units: list[int]
    module: nn.Module
    kind: str  # "block" | "transition"


class Op(IntEnum):
    """What an edit does to one unit, in the order configurations sort by (see :meth:`Edits.code`)."""

    KEEP = 0
    DELETE = 1
    BRANCH_FROM = 2
    SCALE = 3
    PARALLEL = 4
    REPLACE = 5
    REPEAT = 6
    DROP = 7


@dataclass(frozen=True)
class Edits:
    """A modification of the network, by unit index.

    - ``delete``: drop the residual branch (keep shortcut and post); plain units become the identity
      (only shape-preserving ones); transitions cannot be deleted;
    - ``branch_from``: ``{i: j}`` unit ``i`` uses the residual branch of unit ``j`` (reordering); a
      plain unit ``i`` is replaced by unit ``j`` whole;
    - ``scale``: ``{i: s}`` multiply unit ``i``'s residual branch by ``s``;
    - ``replace``: ``{i: callable}`` replace unit ``i`` entirely;
    - ``parallel``: ``((first, last, mode), ...)``: residual units ``first..last`` (inclusive) all read the
      same input x and their branches are combined: ``post_last(x + Σ F_k(x))`` (``mode="sum"``) or
      ``post_last(x + mean_k F_k(x))`` (``"mean"``); identity shortcuts only. ``(first, last, mode, "block")``:
      the blocks spanning units ``first..last`` each run whole on x (their units in sequence) and give
      ``x + Σ_b (block_b(x) − x)`` (``"sum"``) or the mean of their outputs (``"mean"``) — Painters' parallel
      layers of a transformer;
    - ``repeat``: ``{i: n}`` unit ``i`` applied ``n`` times in a row (Painters' looped layers);
    - ``drop``: ``{i: names}`` unit ``i`` runs without the named paths of its branch (a parallel-residual
      layer without its ``attn`` or its ``mlp``; see ``UnitParts.paths``).

    ``Edits.skip(first, last)`` deletes the units ``first..last`` (a skipped range).
    """

    delete: frozenset = frozenset()
    branch_from: Mapping[int, int] = field(default_factory=dict)
    scale: Mapping[int, float] = field(default_factory=dict)
    replace: Mapping[int, Callable[[Tensor], Tensor]] = field(default_factory=dict)
    parallel: tuple = ()
    repeat: Mapping[int, int] = field(default_factory=dict)
    drop: Mapping[int, frozenset] = field(default_factory=dict)

    @staticmethod
    def skip(first: int, last: int) -> "Edits":
        return Edits(delete=frozenset(range(first, last + 1)))

    def touched(self) -> set[int]:
        moved = {i for i, j in self.branch_from.items() if i != j}
        par = {i for a, b, *_ in self.parallel for i in range(a, b + 1)}
        reps = {i for i, n in self.repeat.items() if n != 1}
        return set(self.delete) | moved | set(self.scale) | set(self.replace) | par | reps | \
            {i for i, d in self.drop.items() if d}

    def first(self) -> Optional[int]:
        t = self.touched()
        return min(t) if t else None

    def is_empty(self) -> bool:
        return not self.touched()

    def code(self, i: int) -> tuple:
        """A sortable code of what happens to unit ``i``: an :class:`Op` and its arguments (configurations
        sorted by their codes share the longest prefixes; the unmodified unit sorts first)."""
        for g in self.parallel:
            a, b, mode, by = parallel_entry(g)
            if a <= i <= b:
                return (Op.PARALLEL, a, b, PARALLEL_MODES.index(mode), PARALLEL_BY.index(by))
        if i in self.replace:
            return (Op.REPLACE, id(self.replace[i]))
        if i in self.delete:
            return (Op.DELETE,)
        c: tuple = (Op.KEEP,)
        j = self.branch_from.get(i, i)
        if j != i:
            c = (Op.BRANCH_FROM, j)
        if i in self.scale:
            c = c + (Op.SCALE, float(self.scale[i]))
        if self.repeat.get(i, 1) != 1:
            c = c + (Op.REPEAT, int(self.repeat[i]))
        if self.drop.get(i):
            c = c + (Op.DROP, tuple(sorted(self.drop[i])))
        return c


NO_EDITS = Edits()


class Step(NamedTuple):
    """One unit as the cache verb sees it: input x, shortcut s (None without one), branch f, output y."""

    index: int
    unit: Unit
    x: Tensor
    s: Optional[Tensor]
    f: Tensor
    y: Tensor

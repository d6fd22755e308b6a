"""What a lesion sweep deletes: modes, plans and the configurations they expand to (seeded)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from itertools import combinations
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from .. import checks
from ..anatomy import AnatomyError, Edits, ResidualView
from ..errors import UsageError

__all__ = ["LesionMode", "LesionPlan", "LesionConfig", "make_configs", "kendall_tau_of", "PAINTERS"]


class LesionMode(str, Enum):
    SINGLE = "single"
    SET = "set"
    RANDOM_K = "random-k"
    REORDER = "reorder"
    PRUNE = "prune-by-similarity"
    SKIP = "skip"
    PARALLEL = "parallel"
    REPEAT = "repeat"
    REVERSE = "middle-reversed"


PAINTERS = (LesionMode.SKIP, LesionMode.PARALLEL, LesionMode.REPEAT, LesionMode.REVERSE)


@dataclass(frozen=True)
class LesionPlan:
    """What to delete: ``mode`` (single deletions of units also delete each path of a parallel-residual unit
    alone: ``NAME:attn``, ``NAME:mlp``); ``units`` (mode set: unit or block names); ``ks`` (random-k: numbers of
    deleted units; reorder: numbers of random swaps; prune: lengths of the deleted ranges; Painters' skip,
    parallel, repeat, middle-reversed: numbers of middle blocks edited); ``samples``
    per k; ``exclude_downsampling`` (random-k); ``granularity`` ``unit`` or ``block``; ``residual_only``: skip
    networks without residual units."""

    mode: LesionMode = LesionMode.SINGLE
    units: tuple = ()
    ks: Optional[tuple] = None
    samples: int = 20
    exclude_downsampling: bool = False
    granularity: str = "unit"
    residual_only: bool = False

    def __post_init__(self):
        checks.fields(self, ks=(0, 10 ** 6))
        try:
            object.__setattr__(self, "mode", LesionMode(self.mode))
        except ValueError:
            raise UsageError(f"unknown lesion mode {self.mode!r}",
                             f"choose one of {', '.join(m.value for m in LesionMode)}") from None
        if self.granularity not in ("unit", "block"):
            raise UsageError(f"granularity must be unit or block, got {self.granularity!r}")
        if self.samples < 1:
            raise UsageError(f"--samples must be >= 1, got {self.samples}")
        if self.mode is LesionMode.SET and not self.units:
            raise UsageError("--mode set needs the units to delete", "pass --units NAME,NAME,...")

    def describe(self) -> dict:
        return dict(mode=self.mode.value, units=list(self.units), ks=None if self.ks is None else list(self.ks),
                    samples=self.samples, exclude_downsampling=self.exclude_downsampling,
                    granularity=self.granularity)


@dataclass(frozen=True)
class LesionConfig:
    """One modified network: units deleted and/or residual branches permuted (``order[i]``: the unit
    whose branch unit ``i`` runs). ``label``: what the ``deleted`` column shows."""

    mode: str
    deleted: tuple = ()
    order: Optional[tuple] = None
    k: Optional[int] = None
    kendall_tau: Optional[float] = None
    note: str = ""
    label: str = ""
    parallel: tuple = ()
    drop: tuple = ()        # ((unit, path name), ...): paths of a parallel-residual unit deleted alone

    @property
    def runnable(self) -> bool:
        return not self.note.startswith(("not deletable", "not applicable"))

    def edits(self) -> Edits:
        moved = {i: j for i, j in enumerate(self.order or ()) if i != j}
        drop: dict = {}
        for i, name in self.drop:
            drop[i] = drop.get(i, frozenset()) | {name}
        return Edits(delete=frozenset(self.deleted), branch_from=moved, parallel=self.parallel, drop=drop)

    def signature(self, n: int) -> tuple:
        e = self.edits()
        return tuple(e.code(i) for i in range(n))

    def key(self) -> str:
        order = "" if self.order is None else " ".join(map(str, self.order))
        return f"{self.mode}|{self.label}|{order}"


def kendall_tau_of(order: Sequence[int]) -> float:
    from scipy.stats import kendalltau
    return float(kendalltau(np.arange(len(order)), np.asarray(order)).statistic)


def _targets(view: ResidualView, granularity: str) -> list[tuple[str, tuple]]:
    """``(name, unit indices)`` of what one deletion removes: each unit, or each block."""
    if granularity == "unit":
        return [(u.name, (u.index,)) for u in view]
    return [(b.name, tuple(b.units)) for b in view.blocks]


def _deletable(view: ResidualView, units: tuple) -> str:
    """"" if all ``units`` can be deleted, else the reason."""
    for i in units:
        u = view[i]
        if u.kind == "transition":
            return "not deletable: non-residual transition"
        if not view.deletable(i):
            return "not deletable: plain unit changes shape"
    return ""


def _swap_groups(view: ResidualView) -> list[list[int]]:
    """Units whose residual branches can be exchanged: same kind, part and shapes (no downsampling)."""
    groups: dict = {}
    for u in view:
        if u.in_shape is None:
            raise AnatomyError("unit shapes unknown: call view.infer_shapes(input_shape) first")
        if tuple(u.in_shape) == tuple(u.out_shape) and u.kind != "transition":
            groups.setdefault((u.residual, u.part, tuple(u.in_shape)), []).append(u.index)
    return [g for g in groups.values() if len(g) >= 2]


def _check_ks(ks: Sequence[int], lo: int, hi: int, what: str) -> list[int]:
    bad = [k for k in ks if not lo <= k <= hi]
    if bad or not ks:
        raise UsageError(f"{what} must lie in {lo}..{hi}; got {bad or 'nothing'}")
    return sorted(set(int(k) for k in ks))


def make_configs(view: ResidualView, plan: LesionPlan, seed: int = 0,
                 distances: Optional[pd.DataFrame] = None) -> list[LesionConfig]:
    """The configurations of a plan (always starting with the unmodified baseline). ``distances``: the
    angular distances of :func:`resprobe.probes.prune.range_distances` (mode prune-by-similarity)."""
    n = len(view)
    base = LesionConfig(mode="baseline")
    rng = np.random.default_rng(seed)
    mode = plan.mode
    targets = _targets(view, plan.granularity)
    if mode is LesionMode.SINGLE:
        paths = [LesionConfig("single", k=1, label=f"{u.name}:{p}", drop=((u.index, p),))
                 for u in view for p, _ in (u.parts.paths if plan.granularity == "unit" else ())]
        return [base] + [LesionConfig("single", idx, k=1, note=_deletable(view, idx), label=name)
                         for name, idx in targets] + paths
    if mode is LesionMode.SET:
        idx = tuple(sorted(set(view.indices(plan.units))))
        bad = [view[i].name for i in idx if _deletable(view, (i,))]
        if bad:
            raise AnatomyError(f"units {', '.join(bad)} cannot be deleted (plain units that change shape, or "
                               "non-residual transitions)")
        return [base, LesionConfig("set", idx, k=len(idx), label="+".join(view[i].name for i in idx))]
    if mode is LesionMode.RANDOM_K:
        pool = [(name, idx) for name, idx in targets if not _deletable(view, idx)
                and not (plan.exclude_downsampling and any(view[i].downsample for i in idx))]
        if not pool:
            raise AnatomyError("no deletable unit: random deletions need residual units")
        ks = _check_ks(plan.ks or range(1, len(pool) + 1), 1, len(pool), "numbers of deleted units (--k)")
        return [base] + _random_k(pool, ks, plan.samples, rng)
    if mode in PAINTERS:
        from .painters import painters_configs
        return [base] + painters_configs(view, mode, plan.ks)
    if mode is LesionMode.REORDER:
        return [base] + _reorder_configs(view, plan, rng)
    if distances is None:
        raise UsageError("mode prune-by-similarity needs the angular distances of the ranges")
    pool = [(view[i].name, (i,)) for i in range(n) if not _deletable(view, (i,))]
    out = [base]
    for kk in _check_ks(plan.ks or (1,), 1, len(pool), "lengths of the pruned ranges (--k)"):
        d = distances[(distances["metric"] == "angular_distance") & (distances["n"] == kk) & distances["deletable"]]
        if d.empty:
            continue
        best = d.loc[d["angular_distance"].idxmin()]
        idx = tuple(range(int(best["start"]), int(best["start"]) + kk))
        out.append(LesionConfig("prune", idx, k=kk, label="+".join(view[i].name for i in idx),
                                note=f"most similar range: angular distance {best['angular_distance']:.4f}"))
        out += _random_k(pool, [kk], plan.samples, rng)
    return out


def _reorder_configs(view: ResidualView, plan: LesionPlan, rng) -> list[LesionConfig]:
    """``plan.samples`` distinct orders per number of random swaps of exchangeable branches."""
    n = len(view)
    groups = _swap_groups(view)
    if not groups:
        raise AnatomyError("no two units have the same kind and shapes: nothing can be reordered")
    pairs = [(a, b) for g in groups for ai, a in enumerate(g) for b in g[ai + 1:]]
    ks = _check_ks(plan.ks or range(1, n + 1), 1, 10 * n, "numbers of swaps (--k)")
    out = []
    for kk in ks:
        seen = set()
        for _ in range(plan.samples):
            order = list(range(n))
            for _ in range(kk):
                a, b = pairs[rng.integers(len(pairs))]
                order[a], order[b] = order[b], order[a]
            t = tuple(order)
            if t == tuple(range(n)) or t in seen:
                continue
            seen.add(t)
            out.append(LesionConfig("reorder", order=t, k=kk, kendall_tau=kendall_tau_of(t)))
    return out


def _random_k(pool: list[tuple[str, tuple]], ks: list[int], samples: int, rng) -> list[LesionConfig]:
    out = []
    for kk in ks:
        if math.comb(len(pool), kk) <= samples:
            subsets = list(combinations(range(len(pool)), kk))
        else:
            seen: set = set()
            subsets = []
            while len(subsets) < samples:
                s = tuple(sorted(rng.choice(len(pool), size=kk, replace=False).tolist()))
                if s not in seen:
                    seen.add(s)
                    subsets.append(s)
        for s in subsets:
            units = tuple(sorted(i for j in s for i in pool[j][1]))
            out.append(LesionConfig("random-k", units, k=kk, label="+".join(pool[j][0] for j in s)))
    return out



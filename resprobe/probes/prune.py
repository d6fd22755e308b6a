"""Layer-pruning metrics (Gromov et al. 2024; Men et al. 2024 "ShortGPT").

- ``angular_distance`` between the inputs of unit ℓ and unit ℓ + n: (1/π)·arccos(cos(x_ℓ, x_ℓ+n)) over
  each image's whole tensor, averaged over images (Gromov et al. prune the n consecutive layers whose
  ends are closest); x_L is the head's input.
- ``block_influence`` of unit i: 1 − mean over images of cos(x_i, x_i+1) (ShortGPT's BI; the lowest are
  pruned first).

Only ranges whose two ends have the same shape get a distance; ``deletable`` says whether every unit of
the range can be deleted (residual units). ``lesion --mode prune-by-similarity`` deletes the most
similar range of each length and compares it with random deletions of as many units.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch

from .. import distributed as dist
from ..anatomy import ResidualView, anatomy, preserved_state
from ..engine import PerImageStore, RunSpec, batches, check_finite
from .. import checks
from ..errors import UsageError
from ..io.data import Dataset
from ..metrics.similarity import per_image_norm
from ..metrics.stats import bootstrap_mean_ci, stable_seed
from ..study import StudyResult, Subject
from . import common

__all__ = ["PruneOptions", "range_distances", "run", "COLUMNS"]

COLUMNS = ["model", "metric", "start", "n", "first", "last", "value", "ci_low", "ci_high", "deletable", "n_images"]


@dataclass(frozen=True)
class PruneOptions:
    """``ns``: range lengths; None: the default 1, 2, 4, those that fit the network (lengths given
    explicitly must fit: a range longer than the network, or one that no range of units keeps the shape
    over, is refused)."""
    ns: Optional[tuple] = None

    def __post_init__(self):
        checks.fields(self, ns=(1, 10 ** 6))
        if self.ns is not None and (not self.ns or min(self.ns) < 1):
            raise UsageError(f"range lengths must be positive integers, got {list(self.ns)}")

    def describe(self) -> dict:
        return dict(ns=list(self.ns) if self.ns is not None else "default (1, 2, 4 where they fit)")


DEFAULT_NS = (1, 2, 4)


def _per_image(view: ResidualView, data: Dataset, spec: RunSpec, normalize: str, ns: Sequence[int], label: str):
    L = len(view)
    pairs = [(a, n) for n in ns for a in range(0, L - n + 1)]
    store = PerImageStore(len(data))
    with preserved_state(view.model), torch.no_grad(), spec.autocast():
        view.model.eval()
        for x, _, idx in batches(data, spec, normalize, f"pruning metrics {label}"):
            hs = view.unit_inputs(x)
            check_finite(hs[-1], f"the head input of {label}", spec)
            # unit vectors in float64: the angle 2·atan2(‖â − b̂‖, ‖â + b̂‖) keeps its precision near 0,
            # where arccos of a float32 cosine would not
            units = [_unit(h) for h in hs]
            rows = store.mark(idx)
            for a, n in pairs:
                if hs[a].shape != hs[a + n].shape:
                    continue
                ua, ub = units[a], units[a + n]
                ang = 2 * torch.atan2(torch.linalg.vector_norm(ua - ub, dim=1), torch.linalg.vector_norm(ua + ub, dim=1))
                store.put(f"{a}|{n}", rows, ang)
    got = store.gather()
    return got


def _ranges(view: ResidualView, n: int) -> list[int]:
    """Starts ℓ of the ranges of ``n`` units whose input (unit ℓ's) and output (unit ℓ+n's input) have one shape."""
    if any(u.in_shape is None or u.out_shape is None for u in view):
        return list(range(0, len(view) - n + 1))
    shapes = [tuple(u.in_shape) for u in view] + [tuple(view[len(view) - 1].out_shape)]
    return [a for a in range(0, len(view) - n + 1) if shapes[a] == shapes[a + n]]


def _unit(h: torch.Tensor) -> torch.Tensor:
    f = h.reshape(h.shape[0], -1).double()
    return f / per_image_norm(f).clamp_min(1e-300).unsqueeze(1)


def _deletable(view: ResidualView, a: int, n: int) -> bool:
    return all(view[i].residual for i in range(a, a + n))


def range_distances(view: ResidualView, data: Dataset, spec: RunSpec, normalize: str, ns: Sequence[int],
                    label: str = "model") -> pd.DataFrame:
    """Mean angular distance between the inputs of units ℓ and ℓ + n, for every ℓ and n in ``ns``."""
    got = _per_image(view, data, spec, normalize, ns, label)
    got = dist.broadcast(got)
    rows = []
    for key, ang in (got or {}).items():
        a, n = map(int, key.split("|"))
        d = ang / np.pi
        c = np.cos(ang)
        lo, hi = bootstrap_mean_ci(d, spec.n_boot, seed=stable_seed(spec.seed, label, "angular", a, n))
        rows.append(dict(model=label, metric="angular_distance", start=a, n=n, first=view[a].name,
                         last=view[a + n - 1].name, value=float(d.mean()), angular_distance=float(d.mean()),
                         ci_low=lo, ci_high=hi, deletable=_deletable(view, a, n), n_images=len(d)))
        if n == 1:
            bi = 1 - c
            lo, hi = bootstrap_mean_ci(bi, spec.n_boot, seed=stable_seed(spec.seed, label, "bi", a))
            rows.append(dict(model=label, metric="block_influence", start=a, n=1, first=view[a].name,
                             last=view[a].name, value=float(bi.mean()), angular_distance=float("nan"), ci_low=lo,
                             ci_high=hi, deletable=_deletable(view, a, 1), n_images=len(bi)))
    df = pd.DataFrame(rows, columns=COLUMNS + ["angular_distance"])
    return df.sort_values(["metric", "n", "start"], kind="stable").reset_index(drop=True)


def run(subjects: Sequence[Subject], data: Dataset, spec: RunSpec = RunSpec(),
        options: PruneOptions = PruneOptions()) -> StudyResult:
    """Angular distances of unit ranges and block influence per unit, for every subject."""
    common.check_labels(subjects)
    frames, find, units = [], [], {}
    views = [anatomy(s.model, data.input_shape) for s in subjects]
    if options.ns is None:
        options = PruneOptions(tuple(n for n in DEFAULT_NS if all(_ranges(v, n) for v in views)) or (1,))
    for s, view in zip(subjects, views):  # checked before any work
        too_long = [n for n in options.ns if n > len(view)]
        if too_long:
            raise UsageError(f"--n {','.join(map(str, too_long))}: {s.label} has only {len(view)} units",
                             f"use range lengths 1..{len(view)}")
        if not any(_ranges(view, n) for n in options.ns):
            raise UsageError(f"--n {','.join(map(str, options.ns))}: no range of that many units of {s.label} keeps "
                             "the shape of its input, so no angular distance is defined",
                             "use other range lengths (resprobe info shows where units change shape)")
    for s, view in zip(subjects, views):
        units[s.label] = view.table()
        s.model.to(spec.torch_device)
        ns = list(options.ns)
        for n in ns:
            if not _ranges(view, n):
                find.append(f"{s.label}: no range of {n} units keeps the shape of its input: none measured for n = {n}.")
        df = range_distances(view, data, spec, s.normalize, ns, s.label)
        frames.append(df[COLUMNS])
        for n in ns:
            d = df[(df["metric"] == "angular_distance") & (df["n"] == n) & df["deletable"]]
            if len(d):
                best = d.loc[d["value"].idxmin()]
                find.append(f"{s.label}: the most similar range of {n} deletable units is {best['first']}–"
                            f"{best['last']} (angular distance {best['value']:.4f}; largest "
                            f"{d['value'].max():.4f}).")
        bi = df[df["metric"] == "block_influence"].sort_values("value")
        if len(bi):
            find.append(f"{s.label}: lowest block influence (ShortGPT's first to prune): "
                        + ", ".join(f"{r['first']} {r['value']:.4f}" for _, r in bi.head(3).iterrows()) + ".")
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    return StudyResult("prune", table, findings=find, provenance=common.provenance(subjects, data, spec),
                       settings=options.describe(), units=units)

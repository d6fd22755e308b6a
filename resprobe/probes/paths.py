"""Path-length ensemble analysis (Veit et al. 2016 §4–5, Fig. 6).

Unraveled, a network of n residual units is a set of 2^n paths; a path's **length** is the number of
residual branches it passes through. Shortcuts of every kind — identity, projection or zero-pad —
count 0: they are the "skip" choice of their unit. A plain unit (no shortcut) has one choice and
counts 1; a non-residual transition is passed by every path and counts 0.

Gradient per path length (Veit Fig. 6): one forward pass keeps each unit's parts as separate autograd
graphs; for a sampled set of k units the backward pass is routed only through the residual branch of
those units and only through the shortcut of the others, while the post-operation derivatives stay
those of the real forward. With the activation pattern fixed the backward pass is linear, so the
routed gradients of all 2^n routings sum to the true gradient (tested by enumeration). The gradient
carried by paths of length k is the per-path mean times C(n, k).

Verdict: the gradient-weighted mean path length (with a bootstrap CI over images and routings)
against the typical path length n/2 of the binomial distribution.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Optional, Sequence, TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from .. import distributed as dist
from ..anatomy import ResidualView, anatomy, frozen_eval
from ..engine import PerImageStore, RunSpec, batches, check_finite
from .. import checks
from ..errors import UsageError
from ..io.data import Dataset
from ..metrics.stats import stable_seed
from ..study import StudyResult, Subject
from . import common
from .paths_findings import findings
from .routing import RoutedBackward
from .paths_verdicts import SHORT_PATHS, short_paths_verdicts

if TYPE_CHECKING:
    import networkx as nx

__all__ = ['PathsDetail', "PathsOptions", "unraveled_graph", "path_length_distribution", "RoutedBackward", "run", "profile",
           "effective_range", "weighted_length", "short_paths_verdicts", "COLUMNS", "SHARES", "SHORT_PATHS"]

COLUMNS = ["model", "k", "n_paths", "grad_per_path", "ci_low", "ci_high", "total_grad", "total_ci_low",
           "total_ci_high", "samples", "grad_per_path_image", "total_grad_image"]
SHARES = (0.8, 0.9, 0.95)



@dataclass(frozen=True)
class PathsDetail:
    """What the writer needs beyond the table: each network's unraveled graph (networkx)."""

    graphs: dict

@dataclass(frozen=True)
class PathsOptions:
    """``ks``: path lengths to sample (None: every k from 0 to n); ``samples``: routings per k;
    ``share``: the gradient share of the effective range in the summary (80%, 90% and 95% are reported
    too); ``to_image``: also the gradient at the image."""

    ks: Optional[tuple] = None
    samples: int = 20
    share: float = 0.9
    to_image: bool = True

    def __post_init__(self):
        checks.fields(self, ks=(0, 10 ** 6))
        if not 0 < self.share < 1:
            raise UsageError(f"--share must lie strictly between 0 and 1, got {self.share}")
        if self.samples < 1:
            raise UsageError(f"--samples must be >= 1, got {self.samples}")

    def describe(self) -> dict:
        return dict(ks=None if self.ks is None else list(self.ks), samples=self.samples, share=self.share,
                    to_image=self.to_image)


def unraveled_graph(view: ResidualView) -> nx.DiGraph:
    """The unit-level computation: ``input -> stem -> h0``; per unit ``h_i -> F_i -> h_{i+1}`` (branch) and
    ``h_i -> h_{i+1}`` (shortcut, if any); ``h_n -> head -> output``. Edge attribute ``length`` is 1 on
    edges entering a branch node of a residual or plain unit, 0 elsewhere (transitions). A residual unit whose
    branch is a sum of paths reading the same input (a parallel-residual layer: ``UnitParts.paths``) has one
    branch node per path, ``F{i}.{name}``: the layer ``x + attn(x) + mlp(x)`` is three paths of lengths 0, 1,
    1."""
    import networkx as nx  # imported when used: a second of start-up otherwise
    g = nx.DiGraph(name="unraveled residual network")
    g.add_node("input", kind="input")
    g.add_node("h0", kind="state", unit_input="" if not len(view) else view[0].name)
    g.add_edge("input", "h0", kind="stem", length=0)
    for u in view:
        i = u.index
        src, dst, br = f"h{i}", f"h{i + 1}", f"F{i}"
        g.add_node(dst, kind="state")
        paths = [n for n, _ in u.parts.paths] if u.residual and u.parts.paths else [None]
        for p in paths:
            node = br if p is None else f"{br}.{p}"
            g.add_node(node, kind="branch", unit=u.name, stage=u.stage, shortcut=u.shortcut_kind, unit_kind=u.kind,
                       **({} if p is None else {"path": p}))
            g.add_edge(src, node, kind="branch", length=0 if u.kind == "transition" else 1, unit=u.name)
            g.add_edge(node, dst, kind="branch_out", length=0, unit=u.name)
        if u.residual:
            g.add_edge(src, dst, kind="shortcut", length=0, unit=u.name, shortcut=u.shortcut_kind)
    g.add_node("output", kind="output")
    g.add_edge(f"h{len(view)}", "output", kind="head", length=0)
    return g


def path_length_distribution(g: nx.DiGraph, source: str = "input", target: str = "output") -> list[int]:
    """Number of source→target paths of each length, by dynamic programming over the DAG (exact
    integers; never by enumerating paths)."""
    import networkx as nx
    counts: dict[str, list[int]] = {source: [1]}
    for node in nx.topological_sort(g):
        if node not in counts:
            continue
        c = counts[node]
        for _, nxt, data in g.out_edges(node, data=True):
            w = int(data.get("length", 0))
            acc = counts.setdefault(nxt, [])
            need = len(c) + w
            if len(acc) < need:
                acc.extend([0] * (need - len(acc)))
            for length, v in enumerate(c):
                acc[length + w] += v
    return counts.get(target, [])


def effective_range(total: Sequence[float], share: float = 0.9) -> tuple[int, int]:
    """The shortest contiguous range of path lengths [lo, hi] whose totals reach ``share`` of the sum."""
    t = np.nan_to_num(np.asarray(total, dtype=np.float64))
    goal = share * t.sum()
    best = (0, len(t) - 1)
    for lo in range(len(t)):
        acc = 0.0
        for hi in range(lo, len(t)):
            acc += t[hi]
            if acc >= goal:
                if hi - lo < best[1] - best[0]:
                    best = (lo, hi)
                break
    return best


def weighted_length(total: Sequence[float]) -> float:
    """Σ k·T(k) / Σ T(k): the mean path length weighted by the gradient that paths of each length carry."""
    t = np.nan_to_num(np.asarray(total, dtype=np.float64))
    return float((np.arange(len(t)) * t).sum() / t.sum()) if t.sum() > 0 else float("nan")


def _norms(g: torch.Tensor) -> np.ndarray:
    return g.detach().flatten(1).double().norm(dim=1).cpu().numpy()


def _routes(residual: list[int], ks: list[int], samples: int, seed: int) -> dict[int, list[tuple]]:
    rng = np.random.default_rng(seed)
    out = {}
    for k in ks:
        if math.comb(len(residual), k) <= samples:
            out[k] = [tuple(c) for c in combinations(residual, k)]
        else:
            out[k] = [tuple(sorted(rng.choice(residual, size=k, replace=False).tolist())) for _ in range(samples)]
    return out


def profile(subject: Subject, data: Dataset, spec: RunSpec, options: PathsOptions = PathsOptions()):
    """Per k: routings and the per-image gradient norms of each (arrays images × routings), for one network."""
    view = anatomy(subject.model, data.input_shape)
    residual = [u.index for u in view if u.residual]
    n = len(residual)
    if n == 0:
        raise UsageError(f"{subject.label} has no residual unit: every path has the same length",
                         "the path-length analysis needs a residual network")
    ks = list(range(n + 1)) if options.ks is None else sorted(set(int(k) for k in options.ks))
    bad = [k for k in ks if not 0 <= k <= n]
    if bad:
        raise UsageError(f"path lengths {bad} out of range 0..{n} (residual units of {subject.label})")
    routes = _routes(residual, ks, options.samples, spec.seed)
    store = PerImageStore(len(data))
    total = sum(len(r) for r in routes.values())
    subject.model.to(spec.torch_device)
    with frozen_eval(subject.model):
        for x, y, idx in batches(data, spec, subject.normalize, f"paths {subject.label} ({total} routings)",
                                 unit_weight=total):
            rb = RoutedBackward(view, x, y, to_image=options.to_image)
            check_finite(rb.logits.detach(), f"the logits of {subject.label}", spec)
            rows = store.mark(idx)
            for k, rs in routes.items():
                cols, cols_img = [], []
                for chosen in rs:
                    route = [u.index in chosen or not u.residual for u in view]
                    g, gi = rb.grad(route)
                    cols.append(_norms(g))
                    if gi is not None:
                        cols_img.append(_norms(gi))
                store.put(f"g{k}", rows, np.stack(cols, 1))
                if cols_img:
                    store.put(f"i{k}", rows, np.stack(cols_img, 1))
            del rb
    got = store.gather()
    return view, routes, got


def path_table(label: str, view, routes, got, spec: RunSpec, clusters=None) -> tuple[pd.DataFrame, dict]:
    """Rows per path length k from the gradient norms ``got`` (``g{k}``, and ``i{k}`` at the image when
    measured); ``clusters``: the document of each token window (the bootstrap then resamples documents)."""
    dist_ = path_length_distribution(unraveled_graph(view))
    n_plain = sum(1 for u in view if u.kind == "plain")
    ks = sorted(routes)
    rng = np.random.default_rng(stable_seed(spec.seed, label, "paths"))
    n_img = len(got[f"g{ks[0]}"])
    # resample images (the same for every k) and each k's routings: mean = w_imgᵀ G w_rout / (N R)
    if clusters is None:
        w_img = np.stack([np.bincount(rng.integers(0, n_img, n_img), minlength=n_img)
                          for _ in range(spec.n_boot)]).astype(np.float64)            # (B, N)
    else:   # each window counted as often as its document is drawn; the mean divides by the windows drawn
        ids, inv = np.unique(np.asarray(clusters), return_inverse=True)
        w_img = np.stack([np.bincount(rng.integers(0, len(ids), len(ids)), minlength=len(ids))[inv]
                          for _ in range(spec.n_boot)]).astype(np.float64)
        w_img *= n_img / w_img.sum(1, keepdims=True)
    boots = {}
    for k in ks:
        r = len(routes[k])
        w_rout = np.stack([np.bincount(rng.integers(0, r, r), minlength=r) for _ in range(spec.n_boot)])  # (B, R)
        boots[k] = ((w_img @ got[f"g{k}"]) * w_rout).sum(1) / (n_img * r)
    rows = []
    for k in ks:
        g = got[f"g{k}"]
        n_paths = dist_[k + n_plain] if k + n_plain < len(dist_) else 0
        lo, hi = np.quantile(boots[k], [0.025, 0.975])
        gi = float(got[f"i{k}"].mean()) if f"i{k}" in got else float("nan")
        rows.append(dict(model=label, k=k, n_paths=n_paths, grad_per_path=float(g.mean()), ci_low=float(lo),
                         ci_high=float(hi), total_grad=float(g.mean()) * n_paths, total_ci_low=float(lo) * n_paths,
                         total_ci_high=float(hi) * n_paths, samples=g.shape[1], grad_per_path_image=gi,
                         total_grad_image=gi * n_paths))
    df = pd.DataFrame(rows, columns=COLUMNS)
    n_paths = df["n_paths"].to_numpy(dtype=float)
    totals = np.stack([boots[k] for k in ks], 1) * n_paths[None, :]  # (n_boot, len(ks))
    return df, dict(boot_totals=totals)


def summarize(df: pd.DataFrame, boots: dict[str, np.ndarray], share: float = 0.9,
              n_units: Optional[dict] = None) -> dict:
    """Per model: the shortest path-length range carrying 80/90/95% of the gradient (with bootstrap
    intervals of its ends), the fraction of all paths in it, and the gradient-weighted mean length.
    ``n_units``: each model's number of residual units (default: the largest k measured)."""
    out = {}
    for m, g in df.groupby("model", sort=False):
        g = g.sort_values("k")
        n = int((n_units or {}).get(str(m), g["k"].max()))
        if list(g["k"]) != list(range(n + 1)):
            out[str(m)] = dict(note="the effective range and the weighted length need every k from 0 to n (--k 0:n)")
            continue
        tot = g["total_grad"].to_numpy()
        b = boots.get(str(m))
        counts = g["n_paths"].to_numpy(dtype=float)
        # the mean of the path-length distribution: n/2 for n sequential units (binomial), 2n/3 for n
        # parallel-residual layers (three paths of lengths 0, 1, 1 each)
        typical = float((g["k"].to_numpy() * counts).sum() / counts.sum())
        s: dict = dict(n_units=n, typical_length=typical, peak_k=int(g.loc[g["total_grad"].idxmax(), "k"]))
        wl = weighted_length(tot)
        wls = np.array([weighted_length(t) for t in b]) if b is not None else np.array([])
        s["weighted_length"] = dict(value=wl, ci_low=float(np.nanquantile(wls, 0.025)) if len(wls) else None,
                                    ci_high=float(np.nanquantile(wls, 0.975)) if len(wls) else None)
        ranges = {}
        for sh in sorted(set(SHARES) | {share}):
            lo, hi = effective_range(tot, sh)
            in_range = int(g[(g["k"] >= lo) & (g["k"] <= hi)]["n_paths"].sum())
            r = dict(range=[lo, hi], paths_in_range=in_range, fraction_of_paths=in_range / counts.sum())
            if b is not None:
                ends = np.array([effective_range(t, sh) for t in b])
                r.update(lo_interval=[int(np.quantile(ends[:, 0], 0.025)), int(np.quantile(ends[:, 0], 0.975))],
                         hi_interval=[int(np.quantile(ends[:, 1], 0.025)), int(np.quantile(ends[:, 1], 0.975))])
            ranges[f"{sh:g}"] = r
        s["ranges"] = ranges
        s["share"] = share
        s["range"] = ranges[f"{share:g}"]["range"]
        s["fraction_of_paths"] = ranges[f"{share:g}"]["fraction_of_paths"]
        out[str(m)] = s
    return out


def run(subjects: Sequence[Subject], data: Dataset, spec: RunSpec = RunSpec(batch_size=64),
        options: PathsOptions = PathsOptions()) -> StudyResult:
    """Path-length distribution and gradient per path length of every residual subject (token windows:
    :func:`resprobe.probes.lm_paths.run_text`)."""
    from ..io.text import TextData
    if isinstance(data, TextData):
        from .lm_paths import run_text
        return run_text(subjects, data, spec, options)
    common.check_labels(subjects)
    frames, boots, graphs, skipped = [], {}, {}, []
    from ..anatomy import anatomy
    residual = [s for s in subjects if any(u.residual for u in anatomy(s.model))]
    skipped = [s.label for s in subjects if s not in residual]
    if not residual:
        raise UsageError(f"{', '.join(skipped)} ha{'s' if len(skipped) == 1 else 've'} no residual unit: every path "
                         "has the same length", "the path-length analysis needs a residual network")
    views, n_units = {}, {}
    for s in residual:
        view, routes, got = profile(s, data, spec, options)
        views[s.label] = view
        graphs[s.label] = unraveled_graph(view)
        n_units[s.label] = len(path_length_distribution(graphs[s.label])) - 1 - sum(u.kind == "plain" for u in view)
        if got is None:
            continue
        df, ex = path_table(s.label, view, routes, got, spec)
        frames.append(df)
        boots[s.label] = ex["boot_totals"]
    common.assess(residual, data, spec)  # every rank together, before the main rank's verdicts
    if not dist.is_main():
        return StudyResult("paths", pd.DataFrame(columns=COLUMNS))
    table = pd.concat(frames, ignore_index=True)
    summary = summarize(table, boots, options.share, n_units)
    roles = common.roles(residual, views, data, spec)
    verdicts = short_paths_verdicts(summary, roles, len(data))
    units = {lab: v.table() for lab, v in views.items()}
    find = findings(summary, skipped)
    return StudyResult("paths", table, summary=summary, verdicts=verdicts, findings=find,
                       provenance=common.provenance(subjects, data, spec,
                                                    magnitude="mean over images of the L2 norm of dL/dh at the first "
                                                              "unit's input (L = summed cross-entropy)",
                                                    path_length="number of residual branches on the path; shortcuts "
                                                                "of any kind count 0"),
                       settings=options.describe(), units=units, roles=roles,
                       detail=PathsDetail(graphs))



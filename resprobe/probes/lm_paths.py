"""Paths on language models: the path-length distribution of a decoder and the gradient carried per path
length (Veit et al. 2016 Fig. 6), by routed backward passes on token windows.

A decoder of L sequential layers has 2L residual units (attention, MLP) and 2^(2L) paths, binomial in length.
A parallel-residual layer (GPT-NeoX with ``use_parallel_residual``, Phi: ``x + attn(x) + mlp(x)``) is one unit
of three paths — the shortcut (length 0), the attention and the MLP (length 1 each) — so L such layers have 3^L
paths, distributed as the coefficients of (1 + 2z)^L (:func:`resprobe.probes.paths.unraveled_graph`).

The loss is the summed next-token cross-entropy of a window; the gradient is taken at the first unit's input
(the embedded tokens: token ids have no gradient). One forward pass keeps every unit's parts, and every path
of a parallel layer, as separate graphs; a routing sends the backward pass through one path of each chosen
unit and through the shortcut of the others. With the attention pattern and the norms' statistics taken from
the real forward pass (their derivatives stay those of the real forward), the backward pass is linear in the
output gradient, so the routed gradients of all routings sum to the true gradient (tested by enumeration on a
tiny model). Paths of length k are sampled uniformly among the paths of that length; the gradient they carry
is the mean per path times their number. CIs resample documents (and routings).
"""
from __future__ import annotations

import math
from itertools import combinations, product
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .. import distributed as dist
from ..anatomy import ResidualView, anatomy, frozen_eval
from ..engine import PerImageStore, RunSpec, check_finite
from ..errors import UsageError
from ..io.text import TextData
from ..progress import progress
from ..study import StudyResult, Subject
from . import common
from .lm_common import text_roles
from .lm_lesion import backward_spec, windows_in_batches
from .routing import RoutedBackward
from .paths import (COLUMNS, PathsDetail, PathsOptions, path_table, path_length_distribution, short_paths_verdicts,
                    summarize, unraveled_graph)
from .paths_findings import findings

__all__ = ["TextRoutedBackward", "path_routes", "run_text"]


def _choices(u) -> list:
    """The callables a routing may send the gradient through in unit ``u``: its paths, or its branch."""
    return [fn for _, fn in u.parts.paths] if u.residual and u.parts.paths else [u.branch]


class TextRoutedBackward(RoutedBackward):
    """One forward pass over a batch of windows, then any number of routed backward passes.

    ``grad(route)``: ``route`` maps a unit's index to the path (index into its paths; 0 for a unit with one
    branch) the gradient goes through; every other residual unit passes it through its shortcut, and a unit
    without a shortcut through its whole branch. Returns dL/dh₀ at the first unit's input, ``(N, T, d)``."""

    def __init__(self, view: ResidualView, x: torch.Tensor, y: torch.Tensor):
        self.view = view
        with torch.enable_grad():
            self.h0 = view.stem(x).detach().requires_grad_(True)
            self._forward(self.h0, y)

    def branches(self, u) -> list:
        return _choices(u)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum")

    def grad(self, route: dict) -> torch.Tensor:
        return self.routed(route)


def _count(c: Sequence[int], k: int) -> int:
    """Paths of length k through units with ``c[j]`` path choices each: the z^k coefficient of Π(1 + c_j z)."""
    poly = [1]
    for cj in c:
        poly = [a + cj * b for a, b in zip(poly + [0], [0] + poly)]
    return poly[k] if k < len(poly) else 0


def path_routes(choices: dict, ks: Sequence[int], samples: int, seed: int) -> dict:
    """Per k: routings ``((unit, path), ...)`` — all paths of length k when there are at most ``samples``,
    else ``samples`` drawn uniformly among them (a set of k units drawn uniformly, a path of each, kept with
    probability Π c/max Π c: rejection sampling makes every path equally likely)."""
    rng = np.random.default_rng(seed)
    units = sorted(choices)
    c = [choices[u] for u in units]
    out = {}
    for k in ks:
        if _count(c, k) <= samples:
            out[k] = [tuple(zip(sub, pth)) for sub in combinations(units, k)
                      for pth in product(*[range(choices[u]) for u in sub])]
            continue
        top = max(c) ** k
        got = []
        while len(got) < samples:
            sub = sorted(rng.choice(units, size=k, replace=False).tolist())
            w = math.prod(choices[u] for u in sub)
            if rng.random() * top < w:
                got.append(tuple((u, int(rng.integers(0, choices[u]))) for u in sub))
        out[k] = got
    return out


def profile_text(subject: Subject, data: TextData, spec: RunSpec, options: PathsOptions):
    """Per k: the routings and the per-window gradient norms of each (windows × routings), for one network."""
    view = anatomy(subject.model, (data.seq_len,))
    choices = {u.index: len(_choices(u)) for u in view if u.residual}
    n = len(choices)
    ks = list(range(n + 1)) if options.ks is None else sorted(set(int(k) for k in options.ks))
    bad = [k for k in ks if not 0 <= k <= n]
    if bad:
        raise UsageError(f"path lengths {bad} out of range 0..{n} (residual units of {subject.label})")
    routes = path_routes(choices, ks, options.samples, spec.seed)
    store = PerImageStore(len(data))
    total = sum(len(r) for r in routes.values())
    n_batches = len(dist.shard(-(-len(data) // spec.batch_size)))
    with frozen_eval(subject.model), progress(n_batches * total, f"paths {subject.label} ({total} routings)",
                                              "routings × batches", enabled=spec.progress) as bar:
        for x, y, idx in windows_in_batches(data, spec):
            rb = TextRoutedBackward(view, x, y)
            check_finite(rb.logits.detach(), f"the logits of {subject.label}", spec)
            rows = store.mark(idx)
            for k, rs in routes.items():
                cols = []
                for chosen in rs:
                    g = rb.grad(dict(chosen))
                    cols.append(g.detach().flatten(1).double().norm(dim=1).cpu().numpy())
                    bar.update(1)
                store.put(f"g{k}", rows, np.stack(cols, 1))
            del rb
    return view, routes, store.gather()


def run_text(subjects: Sequence[Subject], data: TextData, spec: RunSpec, options: PathsOptions) -> StudyResult:
    """The path study on token windows (see the module docstring)."""
    common.check_labels(subjects)
    views_all = {s.label: anatomy(s.model, (data.seq_len,)) for s in subjects}
    residual = [s for s in subjects if any(u.residual for u in views_all[s.label])]
    skipped = [s.label for s in subjects if s not in residual]
    if not residual:
        raise UsageError(f"{', '.join(skipped)} ha{'s' if len(skipped) == 1 else 've'} no residual unit: every path "
                         "has the same length", "the path-length analysis needs a residual network")
    frames, boots, graphs, views, n_units = [], {}, {}, {}, {}
    docs = data.docs.numpy()
    for s in residual:
        view, routes, got = profile_text(s, data, backward_spec(spec, data, s.model), options)
        views[s.label] = view
        graphs[s.label] = unraveled_graph(view)
        n_units[s.label] = len(path_length_distribution(graphs[s.label])) - 1 - sum(u.kind == "plain" for u in view)
        if got is None:
            continue
        df, ex = path_table(s.label, view, routes, got, spec, clusters=docs)
        frames.append(df)
        boots[s.label] = ex["boot_totals"]
    roles = text_roles(residual, views, data, spec)
    if not dist.is_main():
        return StudyResult("paths", pd.DataFrame(columns=COLUMNS))
    table = pd.concat(frames, ignore_index=True)
    summary = summarize(table, boots, options.share, n_units)
    verdicts = short_paths_verdicts(summary, roles, len(data), over="documents")
    return StudyResult("paths", table, summary=summary, verdicts=verdicts, findings=findings(summary, skipped),
                       provenance=common.provenance(
                           subjects, data, spec, magnitude="mean over token windows of the L2 norm of dL/dh at the "
                           "first unit's input (L = next-token cross-entropy summed over the window)",
                           path_length="number of residual branches (attention, MLP, or one path of a parallel "
                                       "layer) on the path; shortcuts count 0",
                           ci="95% percentile bootstrap over documents and routings"),
                       settings=dict(options.describe(), text=True), units={lab: v.table() for lab, v in views.items()},
                       roles=roles, detail=PathsDetail(graphs))

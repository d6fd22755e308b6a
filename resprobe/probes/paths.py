"""Path-length ensemble analysis (Veit et al. 2016 §4–5).

Unraveled, a network of n residual blocks is a set of 2^n paths; a path's **length** is the number of
residual branches it passes through. Shortcuts of every kind — identity, projection (1×1 conv + BN) or
zero-pad — count 0: they are the "skip" choice of their block, whatever they compute. A plain block
(no shortcut) has one choice and counts 1.

Gradient per path length (Veit Fig. 6): one forward pass keeps each block's parts as separate autograd
graphs; for a sampled set of k blocks the backward pass is routed only through the residual branch
of those blocks and only through the shortcut of the others, while the post-activation derivatives
stay those of the real forward. With the activation pattern fixed the backward pass is linear, so the
routed gradients of all 2^n routings sum to the true gradient (tested by enumeration).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import networkx as nx
import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..anatomy import ResidualView, anatomy, frozen_eval
from ..io.data import Dataset
from ..metrics.stats import bootstrap_mean_ci, stable_seed

__all__ = ["unraveled_graph", "path_length_distribution", "RoutedBackward", "gradient_per_path_length",
           "effective_range", "COLUMNS"]

COLUMNS = ["model", "k", "n_paths", "grad_per_path", "ci_low", "ci_high", "total_grad", "samples",
           "grad_per_path_image", "total_grad_image"]


def unraveled_graph(view: ResidualView) -> nx.DiGraph:
    """The block-level computation: ``input -> stem -> h0``; per block ``h_i -> F_i -> h_{i+1}`` (branch)
    and ``h_i -> h_{i+1}`` (shortcut, if any); ``h_n -> head -> output``. Edge attribute ``length`` is 1
    on edges entering a branch node, else 0."""
    g = nx.DiGraph(name="unraveled residual network")
    g.add_node("input", kind="input")
    g.add_node("h0", kind="state", block_input="" if not len(view) else view[0].name)
    g.add_edge("input", "h0", kind="stem", length=0)
    for b in view:
        i = b.index
        src, dst, br = f"h{i}", f"h{i + 1}", f"F{i}"
        g.add_node(dst, kind="state")
        g.add_node(br, kind="branch", block=b.name, stage=b.stage, shortcut=b.shortcut_kind)
        g.add_edge(src, br, kind="branch", length=1, block=b.name)
        g.add_edge(br, dst, kind="branch_out", length=0, block=b.name)
        if b.residual:
            g.add_edge(src, dst, kind="shortcut", length=0, block=b.name, shortcut=b.shortcut_kind)
    g.add_node("output", kind="output")
    g.add_edge(f"h{len(view)}", "output", kind="head", length=0)
    return g


def path_length_distribution(g: nx.DiGraph, source: str = "input", target: str = "output") -> list[int]:
    """Number of source→target paths of each length, by dynamic programming over the DAG (exact
    integers; never by enumerating paths)."""
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


@dataclass
class _BlockGraph:
    x: torch.Tensor      # leaf: the block input (requires grad)
    s: Optional[torch.Tensor]
    f: torch.Tensor
    pre: torch.Tensor
    y: torch.Tensor


class RoutedBackward:
    """One forward pass over a batch, then any number of routed backward passes.

    ``grad(route)``: ``route[i]`` True sends the gradient through block i's residual branch, False
    through its shortcut. Returns the gradient at the input of the first block (and at the image if
    ``to_image``)."""

    def __init__(self, view: ResidualView, x: torch.Tensor, y: torch.Tensor, to_image: bool = False):
        self.view = view
        self.to_image = to_image
        self.image = x.detach().requires_grad_(to_image)
        with torch.enable_grad():
            h0 = view.stem(self.image)
            self.h0 = h0
            h = h0.detach().requires_grad_(True)
            self.blocks: list[_BlockGraph] = []
            for b in view:
                f = b.branch(h)
                s = b.shortcut(h) if b.residual else None
                pre = f if s is None else s + f
                out = b.post(pre)
                self.blocks.append(_BlockGraph(h, s, f, pre, out))
                h = out.detach().requires_grad_(True)
            loss = F.cross_entropy(view.head(h), y, reduction="sum")
            (self.g_top,) = torch.autograd.grad(loss, h)

    def grad(self, route: Sequence[bool]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        g = self.g_top
        for i in range(len(self.blocks) - 1, -1, -1):
            bg = self.blocks[i]
            (g_pre,) = torch.autograd.grad(bg.y, bg.pre, g, retain_graph=True)
            if bg.s is None or route[i]:
                (g,) = torch.autograd.grad(bg.f, bg.x, g_pre, retain_graph=True)
            elif self.view[i].shortcut_kind == "identity":
                g = g_pre
            else:
                (g,) = torch.autograd.grad(bg.s, bg.x, g_pre, retain_graph=True)
        g_img = None
        if self.to_image:
            (g_img,) = torch.autograd.grad(self.h0, self.image, g, retain_graph=True)
        return g, g_img

    def true_grad(self) -> torch.Tensor:
        """The ordinary gradient at the first block's input (all branches and shortcuts)."""
        g = self.g_top
        for i in range(len(self.blocks) - 1, -1, -1):
            bg = self.blocks[i]
            (g,) = torch.autograd.grad(bg.y, bg.x, g, retain_graph=True)
        return g


def _norms(g: torch.Tensor) -> np.ndarray:
    return g.detach().flatten(1).double().norm(dim=1).cpu().numpy()


def gradient_per_path_length(model: nn.Module, data: Dataset, model_label: str = "model",
                             ks: Optional[Iterable[int]] = None, samples: int = 20, seed: int = 0,
                             batch_size: int = 64, normalize: str = "none", device="cpu", to_image: bool = True,
                             n_boot: int = 1000, progress: bool = True) -> pd.DataFrame:
    """Veit Fig. 6: per path length k, the gradient magnitude carried by one path (mean over sampled
    routings and images, CI over routings) and the total (× number of paths of length k)."""
    view = anatomy(model, data.input_shape)
    residual = [b.index for b in view if b.residual]
    n = len(residual)
    if n == 0:
        raise ValueError("the model has no residual block: every path has the same length")
    dist = path_length_distribution(unraveled_graph(view))
    n_plain = len(view) - n
    ks = list(range(n + 1)) if ks is None else sorted(set(int(k) for k in ks))
    bad = [k for k in ks if not 0 <= k <= n]
    if bad:
        raise ValueError(f"path lengths {bad} out of range 0..{n} (residual blocks)")
    rng = np.random.default_rng(seed)
    routes: dict[int, list[tuple]] = {}
    for k in ks:
        n_comb = math.comb(n, k)
        if n_comb <= samples:
            from itertools import combinations
            routes[k] = [tuple(c) for c in combinations(residual, k)]
        else:
            routes[k] = [tuple(sorted(rng.choice(residual, size=k, replace=False).tolist())) for _ in range(samples)]
    sums = {k: np.zeros(len(r)) for k, r in routes.items()}
    sums_img = {k: np.zeros(len(r)) for k, r in routes.items()}
    count = 0
    model.to(device)
    total = sum(len(r) for r in routes.values())
    with frozen_eval(model):
        bar = tqdm(total=total * (-(-len(data) // batch_size)), desc=f"paths {model_label}", disable=not progress,
                   leave=False)
        for x, y, _ in data.batches(batch_size, normalize, device):
            rb = RoutedBackward(view, x, y, to_image=to_image)
            for k, rs in routes.items():
                for j, chosen in enumerate(rs):
                    route = [b.index in chosen or not b.residual for b in view]
                    g, gi = rb.grad(route)
                    sums[k][j] += _norms(g).sum()
                    if gi is not None:
                        sums_img[k][j] += _norms(gi).sum()
                    bar.update(1)
            count += len(y)
            del rb
        bar.close()
    rows = []
    for k in ks:
        per = sums[k] / count
        per_img = sums_img[k] / count if to_image else np.full(len(per), np.nan)
        lo, hi = bootstrap_mean_ci(per, n_boot=n_boot, seed=stable_seed(seed, model_label, k))
        n_paths = dist[k + n_plain] if k + n_plain < len(dist) else 0
        rows.append(dict(model=model_label, k=k, n_paths=n_paths, grad_per_path=float(per.mean()), ci_low=lo,
                         ci_high=hi, total_grad=float(per.mean()) * n_paths, samples=len(per),
                         grad_per_path_image=float(per_img.mean()), total_grad_image=float(per_img.mean()) * n_paths))
    return pd.DataFrame(rows, columns=COLUMNS)

"""Shattered gradients (Balduzzi et al. 2017): how correlated are input gradients along a line?

Synthetic reproduction: networks f: R -> R of width 200, inputs = ``points`` evenly spaced values on
[-2, 2); kinds ``ff`` (feedforward, no BN), ``ff-bn``, ``res`` (residual, no BN, branch scale beta),
``res-bn`` and ``ff-ll`` (CReLU with looks-linear initialisation). For every depth and seed (init) the
gradient df/dx is taken at each point.

**Batch norm**: its statistics are computed on the grid (one forward pass in training mode) and then
*held constant* (eval-mode BN with exactly those statistics) when differentiating. Otherwise each
point's gradient would leak into every other point's through the batch mean and variance, and
df/dx would not be a property of the function at that point.

Statistics per seed: ``lag1`` (lag-1 autocorrelation of the gradient sequence) and
``spectral_slope`` (log-log slope of its periodogram: white ≈ 0, brown ≈ -2); per (kind, depth) across
seeds: their means with seeded bootstrap 95% CIs, and ``corr_neighbor``, the mean normalized
covariance between gradients at neighbouring points across inits (the quantity of the paper's Fig. 1
bottom row). White and brown noise sequences go through the same statistics as a calibration.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..io.data import Dataset

from ..metrics.signal import (brown_noise, correlation_matrix, fit_exponential_log2, fit_power_law, lag1,
                              spectral_slope, white_noise)
from ..metrics.stats import bootstrap_mean_ci, stable_seed
from ..models.mlp import LooksLinearMLP, mlp

__all__ = ["KINDS", "make_net", "grid", "input_gradients", "synthetic_sweep", "fits", "COLUMNS"]

KINDS = ("ff", "ff-bn", "res", "res-bn", "ff-ll")
COLUMNS = ["kind", "depth", "seed", "metric", "value", "ci_low", "ci_high"]


def make_net(kind: str, depth: int, width: int = 200, beta: float = 0.1) -> nn.Module:
    if kind not in KINDS and kind not in ("white-noise", "brown-noise"):
        raise ValueError(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    if kind == "ff-ll":
        return LooksLinearMLP(depth, width)
    return mlp(depth=depth, width=width, residual=kind.startswith("res"), batchnorm=kind.endswith("-bn"),
               branch_scale=beta if kind == "res" else 1.0)


def grid(points: int = 256, lo: float = -2.0, hi: float = 2.0) -> torch.Tensor:
    """``points`` evenly spaced inputs on [lo, hi) as a (points, 1) tensor."""
    return (lo + (hi - lo) * torch.arange(points, dtype=torch.float64) / points).float().unsqueeze(1)


@torch.no_grad()
def _bn_stats_from(model: nn.Module, x: torch.Tensor) -> None:
    """Set every BN layer's running statistics to the batch statistics of ``x`` (biased variance, as
    training mode normalises with), so that eval mode reproduces the training-mode forward exactly."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: after one batch, exactly that batch's statistics
    model.train()
    model(x)
    n = x.shape[0]
    for m, mom in saved:
        m.running_var.mul_((n - 1) / n)  # PyTorch stores the unbiased variance; normalisation used biased
        m.momentum = mom


def input_gradients(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """df/dx at each row of ``x`` (BN statistics fitted on ``x``, then held constant), in float64 so that
    rounding cannot masquerade as structure (the looks-linear net's gradient is exactly constant)."""
    model = model.double()
    x = x.double()
    _bn_stats_from(model, x)
    model.eval()
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xg).sum(), xg)
    return g.detach().double().numpy().ravel()


def synthetic_sweep(kinds: Sequence[str] = KINDS, depths: Sequence[int] = (1, 2, 4, 8, 16, 24, 32, 50),
                    seeds: int = 20, width: int = 200, points: int = 256, beta: float = 0.1, seed: int = 0,
                    n_boot: int = 1000, progress: bool = True, keep_gradients: bool = True):
    """Run the sweep. Returns ``(df, gradients)``: the long DataFrame and, per (kind, depth), the
    seeds × points array of gradients (for traces and correlation matrices)."""
    for k in kinds:
        make_net(k, 1, 2)  # validates the kind early
    if seeds < 2:
        raise ValueError("--seeds must be at least 2 (statistics across inits)")
    x = grid(points)
    rows, grads = [], {}
    bar = tqdm(total=len(kinds) * len(depths) * seeds, desc="gradcorr synthetic", disable=not progress)
    for kind in kinds:
        for depth in depths:
            gs = []
            for s in range(seeds):
                torch.manual_seed(stable_seed(seed, kind, depth, s))
                gs.append(input_gradients(make_net(kind, depth, width, beta), x))
                bar.update(1)
            g = np.stack(gs)
            if keep_gradients:
                grads[(kind, depth)] = g
            rows += _stats_rows(kind, depth, g, seed, n_boot)
    bar.close()
    for kind, gen in (("white-noise", white_noise), ("brown-noise", brown_noise)):
        g = np.stack([gen(points, stable_seed(seed, kind, s)) for s in range(seeds)])
        grads[(kind, 0)] = g
        rows += _stats_rows(kind, 0, g, seed, n_boot)
    return pd.DataFrame(rows, columns=COLUMNS), grads


def _stats_rows(kind: str, depth: int, g: np.ndarray, seed: int, n_boot: int) -> list[dict]:
    rows = []
    per = {"lag1": np.array([lag1(r) for r in g]), "spectral_slope": np.array([spectral_slope(r) for r in g])}
    for metric, v in per.items():
        for s, val in enumerate(v):
            rows.append(dict(kind=kind, depth=depth, seed=str(s), metric=metric, value=float(val),
                             ci_low=np.nan, ci_high=np.nan))
        lo, hi = bootstrap_mean_ci(v, n_boot=n_boot, seed=stable_seed(seed, kind, depth, metric))
        rows.append(dict(kind=kind, depth=depth, seed="all", metric=metric, value=float(v.mean()), ci_low=lo,
                         ci_high=hi))
    c = correlation_matrix(g)
    rows.append(dict(kind=kind, depth=depth, seed="all", metric="corr_neighbor",
                     value=float(np.mean(np.diag(c, 1))), ci_low=np.nan, ci_high=np.nan))
    return rows


def fits(df: pd.DataFrame, metric: str = "lag1", floor: float = 0.1) -> dict:
    """Exponential (log2 slope per layer) and power-law (log-log slope) fits of the mean ``metric``
    against depth, for every kind; the paper predicts 2^-L for ff-bn and L^-1/2 for res-bn.
    Only depths whose mean is above ``floor`` enter a fit: below it the values are noise around 0
    (the white-noise calibration's lag-1 is 0 ± 0.015 over 20 seeds of 256 points)."""
    out = {}
    agg = df[(df["seed"] == "all") & (df["metric"] == metric) & (df["depth"] > 0)]
    agg = agg[agg["value"] > floor]
    for kind, g in agg.groupby("kind", sort=False):
        out[kind] = dict(exponential=fit_exponential_log2(g["depth"], g["value"]),
                         power_law=fit_power_law(g["depth"], g["value"]), depths=[int(d) for d in g["depth"]],
                         floor=floor)
    return out


# --- on trained networks ------------------------------------------------------------------------------

TRAINED_COLUMNS = ["model", "layer", "seed", "metric", "value", "ci_low", "ci_high"]


def make_lines(data, n_lines: int, points: int = 256, mode: str = "direction", span: float = 0.1, seed: int = 0,
               normalize: str = "none"):
    """``n_lines`` seeded lines in (normalized) input space, each ``points`` × C × H × W, with the label
    used for the loss. ``direction``: x0 + t·u, u a random unit vector, t ∈ [−span, span)·‖x0‖;
    ``between``: the straight segment from one image to another, t ∈ [0, 1)."""
    if mode not in ("direction", "between"):
        raise ValueError(f"line mode must be 'direction' or 'between', got {mode!r}")
    if n_lines < 2:
        raise ValueError("--lines must be at least 2 (statistics across lines)")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data), generator=g)[: 2 * n_lines]
    chosen = Dataset(data.images[idx], data.labels[idx], data.classes, data.spec, data.split, data.source)
    imgs, labels, _ = next(chosen.batches(len(idx), normalize))
    out = []
    for j in range(n_lines):
        x0, y0 = imgs[2 * j], labels[2 * j]
        if mode == "direction":
            u = torch.randn(x0.shape, generator=g)
            u = u / u.norm()
            t = (torch.arange(points, dtype=torch.float32) / points * 2 - 1) * span * x0.norm()
            xs = x0.unsqueeze(0) + t.view(-1, *[1] * x0.dim()) * u.unsqueeze(0)
        else:
            x1 = imgs[2 * j + 1]
            t = torch.arange(points, dtype=torch.float32) / points
            xs = x0.unsqueeze(0) + t.view(-1, *[1] * x0.dim()) * (x1 - x0).unsqueeze(0)
        out.append((xs, torch.full((points,), int(y0), dtype=torch.long)))
    return out


def line_gradients(view, xs: torch.Tensor, y: torch.Tensor, target: str = "loss") -> list[torch.Tensor]:
    """Gradients at every point of a line (one batched backward, eval mode): with respect to the
    image, then to each block's input. ``target``: cross-entropy ``loss`` or the true-class ``logit``."""
    if target not in ("loss", "logit"):
        raise ValueError(f"target must be 'loss' or 'logit', got {target!r}")
    with torch.enable_grad():
        x = xs.clone().requires_grad_(True)
        h = view.stem(x)
        inputs = []
        for i in range(len(view)):
            inputs.append(h)
            h = view.run_block(i, h)
        logits = view.head(h)
        out = (F.cross_entropy(logits, y, reduction="sum") if target == "loss"
               else logits.gather(1, y[:, None]).sum())
        grads = torch.autograd.grad(out, [x] + inputs)
    return [g.detach() for g in grads]


def trained_profile(model: nn.Module, data, model_label: str = "model", lines: int = 8, points: int = 256,
                    mode: str = "direction", span: float = 0.1, target: str = "loss", seed: int = 0,
                    normalize: str = "none", device="cpu", n_boot: int = 1000, progress: bool = True):
    """Lag-1 autocorrelation and spectral slope of the gradients along each line — at the image and
    at each block's input (the per-block shattering profile). Returns (DataFrame, example traces)."""
    from ..anatomy import anatomy, frozen_eval
    from ..metrics.signal import lag1_vectors, spectral_slope_vectors
    view = anatomy(model, data.input_shape)
    layers = ["input"] + view.names
    per = {(layer, m): [] for layer in layers for m in ("lag1", "spectral_slope")}
    traces = {}
    model.to(device)
    with frozen_eval(model):
        for j, (xs, y) in enumerate(tqdm(make_lines(data, lines, points, mode, span, seed, normalize),
                                         desc=f"gradcorr {model_label}", disable=not progress, leave=False)):
            grads = line_gradients(view, xs.to(device), y.to(device), target)
            for layer, g in zip(layers, grads):
                g = g.flatten(1).double().cpu().numpy()
                per[(layer, "lag1")].append(lag1_vectors(g))
                per[(layer, "spectral_slope")].append(spectral_slope_vectors(g))
                if j == 0 and layer == "input":
                    traces[model_label] = g[:, int(np.argmax(np.abs(g).sum(0)))]  # the busiest pixel
    rows = []
    for (layer, metric), v in per.items():
        v = np.asarray(v)
        for s, val in enumerate(v):
            rows.append(dict(model=model_label, layer=layer, seed=str(s), metric=metric, value=float(val),
                             ci_low=np.nan, ci_high=np.nan))
        lo, hi = bootstrap_mean_ci(v[~np.isnan(v)], n_boot=n_boot, seed=stable_seed(seed, model_label, layer, metric))
        rows.append(dict(model=model_label, layer=layer, seed="all", metric=metric, value=float(np.nanmean(v)),
                         ci_low=lo, ci_high=hi))
    return pd.DataFrame(rows, columns=TRAINED_COLUMNS), traces

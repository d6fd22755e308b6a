"""Shattered gradients at initialisation (Balduzzi et al. 2017 Figs. 1–2): f: R -> R networks of several kinds
and depths, the input gradient along a line, its autocorrelation and spectrum against brown and white noise."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from ..engine import RunSpec, require_memory
from .. import checks
from ..errors import UsageError
from ..metrics.signal import (brown_noise, correlation_matrix, fit_exponential_log2, fit_power_law, lag1,
                              spectral_slope, white_noise)
from ..metrics.stats import bootstrap_mean_ci, stable_seed
from ..models.mlp import LooksLinearMLP, MLP, mlp
from ..progress import progress
from ..study import StudyResult
from . import common
from .gradcorr_verdicts import synthetic_verdicts

__all__ = ["KINDS", "COLUMNS", "SyntheticDetail", "SyntheticOptions", "make_net", "grid", "input_gradients",
           "synthetic_sweep", "fits", "run_synthetic"]


KINDS = ("ff", "ff-bn", "res", "res-bn", "ff-ll")


COLUMNS = ["kind", "depth", "seed", "metric", "value", "ci_low", "ci_high"]


@dataclass(frozen=True)
class SyntheticDetail:
    """The raw input gradients of the synthetic sweep, ``(kind, depth) -> (seeds, points)``, for its figures."""

    gradients: dict
    points: int


@dataclass(frozen=True)
class SyntheticOptions:
    kinds: tuple = KINDS
    depths: tuple = (1, 2, 4, 8, 16, 24, 32, 50)
    seeds: int = 20
    width: int = 200
    points: int = 256
    beta: float = 0.1

    def __post_init__(self):
        checks.fields(self)
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            raise UsageError(f"unknown kinds {bad or 'none'}; choose from {', '.join(KINDS)}")
        if self.seeds < 2:
            raise UsageError("--seeds must be at least 2 (statistics across inits)")
        if self.points < 16:
            raise UsageError(f"--points must be at least 16 (autocorrelation and spectra along the line), got {self.points}")
        if not self.depths or min(self.depths) < 1:
            raise UsageError("--depths must be positive integers")
        if self.width < 2:
            raise UsageError("--width must be at least 2")
        checks.number("--beta", self.beta, 0, 100)
        # checked here, before an output folder is claimed: activations of the grid and the weights
        require_memory(self.points * self.width * max(self.depths) * 4 * 8
                       + 4.0 * self.width * (self.width + 4) * max(self.depths),
                       f"--points {self.points} through networks of width {self.width} and depth {max(self.depths)}",
                       "lower --points, --width or --depths")

    def describe(self) -> dict:
        return dict(kinds=list(self.kinds), depths=list(self.depths), seeds=self.seeds, width=self.width,
                    points=self.points, beta=self.beta, input_range=[-2.0, 2.0],
                    batchnorm="statistics computed on the grid, then held constant when differentiating",
                    init="He (kaiming normal) for ReLU layers; ff-ll: orthogonal W0 in [W0, -W0]")


def make_net(kind: str, depth: int, width: int = 200, beta: float = 0.1) -> nn.Module:
    if kind not in KINDS:
        raise UsageError(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
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


@torch.no_grad()
def _last_relu_pattern(model: nn.Module, x: torch.Tensor) -> Optional[np.ndarray]:
    """Signs of the last hidden layer's ReLU inputs at each point (MLP kinds; None for ff-ll)."""
    if not isinstance(model, MLP):
        return None
    h = model.stem(x.double())
    pre = None
    for b in model.blocks:
        pre = b.bn(h) if b.residual else b.bn(b.linear(h))
        h = b(h)
    return (pre > 0).numpy()


def synthetic_sweep(options: SyntheticOptions = SyntheticOptions(), spec: RunSpec = RunSpec(),
                    keep_gradients: bool = True):
    """Run the sweep. Returns ``(df, gradients)``: the long DataFrame and, per (kind, depth), the
    seeds × points array of gradients (for traces and correlation matrices)."""
    x = grid(options.points)
    rows, grads = [], {}
    total = len(options.kinds) * len(options.depths) * options.seeds
    far = options.points // 4
    with progress(total, "gradcorr synthetic", "networks", enabled=spec.progress) as bar:
        for kind in options.kinds:
            for depth in options.depths:
                gs, co = [], []
                for s in range(options.seeds):
                    torch.manual_seed(stable_seed(spec.seed, kind, depth, s))
                    net = make_net(kind, depth, options.width, options.beta)
                    gs.append(input_gradients(net, x))
                    pat = _last_relu_pattern(net, x)
                    if pat is not None:
                        co.append(((pat[:-1] == pat[1:]).mean(), (pat[:-far] == pat[far:]).mean()))
                    bar.update(1)
                g = np.stack(gs)
                if keep_gradients:
                    grads[(kind, depth)] = g
                rows += _stats_rows(kind, depth, g, spec.seed, spec.n_boot)
                for j, name in enumerate(("coactive_neighbor", "coactive_far")):
                    if co:
                        v = np.array([c[j] for c in co])
                        lo, hi = bootstrap_mean_ci(v, spec.n_boot, seed=stable_seed(spec.seed, kind, depth, name))
                        rows.append(dict(kind=kind, depth=depth, seed="all", metric=name, value=float(v.mean()),
                                         ci_low=lo, ci_high=hi))
    for kind, gen in (("white-noise", white_noise), ("brown-noise", brown_noise)):
        g = np.stack([gen(options.points, stable_seed(spec.seed, kind, s)) for s in range(options.seeds)])
        grads[(kind, 0)] = g
        rows += _stats_rows(kind, 0, g, spec.seed, spec.n_boot)
    return pd.DataFrame(rows, columns=COLUMNS), grads


def _stats_rows(kind: str, depth: int, g: np.ndarray, seed: int, n_boot: int) -> list[dict]:
    rows = []
    per = {"lag1": np.array([lag1(r) for r in g]), "spectral_slope": np.array([spectral_slope(r) for r in g])}
    for metric, v in per.items():
        for s, val in enumerate(v):
            rows.append(dict(kind=kind, depth=depth, seed=str(s), metric=metric, value=float(val),
                             ci_low=np.nan, ci_high=np.nan))
        lo, hi = bootstrap_mean_ci(v[np.isfinite(v)], n_boot=n_boot, seed=stable_seed(seed, kind, depth, metric))
        rows.append(dict(kind=kind, depth=depth, seed="all", metric=metric, value=float(np.nanmean(v)), ci_low=lo,
                         ci_high=hi))
    far = g.shape[1] // 4
    rng = np.random.default_rng(stable_seed(seed, kind, depth, "corr"))
    for name, lag in (("corr_neighbor", 1), ("corr_far", far)):
        val = float(np.mean(np.diag(correlation_matrix(g), lag)))
        boots = [float(np.mean(np.diag(correlation_matrix(g[rng.integers(0, len(g), len(g))]), lag)))
                 for _ in range(min(n_boot, 200))]
        lo, hi = np.quantile(boots, [0.025, 0.975])
        rows.append(dict(kind=kind, depth=depth, seed="all", metric=name, value=val, ci_low=float(lo), ci_high=float(hi)))
    return rows


def fits(df: pd.DataFrame, metric: str = "lag1", floor: float = 0.1, n_boot: int = 500, seed: int = 0) -> dict:
    """Exponential (log2 slope per layer) and power-law (log-log slope) fits of the mean ``metric``
    against depth, per kind, with bootstrap CIs over inits (per-seed metrics only); the paper predicts
    2^-L for ff-bn and L^-1/2 for res-bn. Only depths whose mean is above ``floor`` enter a fit: below
    it the values are noise around 0 (white noise's lag-1 is 0 ± 0.015 over 20 seeds of 256 points)."""
    out = {}
    agg = df[(df["seed"] == "all") & (df["metric"] == metric) & (df["depth"] > 0)]
    agg = agg[agg["value"] > floor]
    per = df[(df["seed"] != "all") & (df["metric"] == metric) & (df["depth"] > 0)]
    rng = np.random.default_rng(stable_seed(seed, "fits", metric))
    for kind, g in agg.groupby("kind", sort=False):
        depths = sorted(int(d) for d in g["depth"])
        f = dict(exponential=fit_exponential_log2(g["depth"], g["value"]),
                 power_law=fit_power_law(g["depth"], g["value"]), depths=depths, floor=floor)
        p = per[(per["kind"] == kind) & per["depth"].isin(depths)].pivot(index="seed", columns="depth", values="value")
        if len(p) >= 2 and len(depths) >= 2:
            exp_s, pow_s = [], []
            for _ in range(n_boot):
                m = p.iloc[rng.integers(0, len(p), len(p))].mean()
                exp_s.append(fit_exponential_log2(m.index, m.values)["slope"])
                pow_s.append(fit_power_law(m.index, m.values)["slope"])
            for key, s in (("exponential", exp_s), ("power_law", pow_s)):
                s = np.asarray(s)[np.isfinite(s)]
                if len(s):
                    f[key]["ci_low"], f[key]["ci_high"] = (float(q) for q in np.quantile(s, [0.025, 0.975]))
        out[kind] = f
    return out


def run_synthetic(options: SyntheticOptions = SyntheticOptions(), spec: RunSpec = RunSpec()) -> StudyResult:
    df, grads = synthetic_sweep(options, spec)
    f = {m: fits(df, m, seed=spec.seed) for m in ("lag1", "corr_far")}
    summary = dict(fits=f, paper=dict(ff_bn="2^-L (log2 slope -1 per layer)", res_bn="L^-1/2 (log-log slope -0.5)"))
    find = _synthetic_findings(df, f)
    return StudyResult("gradcorr-synthetic", df, summary=summary, verdicts=synthetic_verdicts(f["lag1"]), findings=find,
                       provenance=dict(probe="gradcorr synthetic", **options.describe(), seed=spec.seed,
                                       versions=common.versions()),
                       settings=options.describe(), detail=SyntheticDetail(grads, options.points))


def _synthetic_findings(df: pd.DataFrame, f: dict) -> list[str]:
    from .. import fmt
    out = []
    agg = df[(df["seed"] == "all")]
    for kind in [k for k in KINDS if k in set(agg["kind"])]:
        g = agg[(agg["kind"] == kind) & (agg["metric"] == "lag1")].sort_values("depth")
        out.append(f"{kind}: mean lag-1 " + ", ".join(f"L={int(r.depth)}: {fmt.ci(r.value, r.ci_low, r.ci_high)}"
                                                      for r in g.itertuples()) + ".")
    for metric, fm in f.items():
        for kind, expected, key in (("ff-bn", -1.0, "exponential"), ("res-bn", -0.5, "power_law")):
            if kind in fm:
                e = fm[kind][key]
                if not np.isfinite(e["slope"]):
                    out.append(f"{kind}, {metric}: fewer than two depths above the noise floor {fm[kind]['floor']}; "
                               "no fit.")
                    continue
                lo, hi = e.get("ci_low"), e.get("ci_high")
                unit = "log₂ slope per layer" if key == "exponential" else "log–log slope"
                compat = ("" if lo is None else (" — compatible with the paper's " if lo <= expected <= hi else
                                                 " — the paper's ") + fmt.num(expected, 1)
                          + ("" if lo is None or lo <= expected <= hi else " lies outside the CI"))
                out.append(f"{kind}, {metric} against depth (depths {fm[kind]['depths']}): fitted {unit} "
                           f"{fmt.ci(e['slope'], lo, hi)}{compat}.")
    co = agg[agg["metric"].isin(["coactive_neighbor", "coactive_far"]) & (agg["kind"] == "ff-bn")]
    if len(co):
        piv = co.pivot(index="depth", columns="metric", values="value")
        out.append("ff-bn, fraction of last-layer ReLUs with the same sign at neighbouring / far points (0.5 = "
                   "independent): " + ", ".join(f"L={d}: {r['coactive_neighbor']:.3f} / {r['coactive_far']:.3f}"
                                                for d, r in piv.iterrows()) + ".")
    return out

"""Training curves and the pruning figure. Each function returns ``(fig, ax)``."""
from __future__ import annotations


import pandas as pd
from matplotlib.ticker import MaxNLocator

from .base import (subplots, legend, n_stages, palette, sns, stage_axis,
                   unit_positions)

__all__ = ['training_curves_plot', 'prune_plot']


def training_curves_plot(curves: pd.DataFrame):
    """He et al. Fig. 1: training (dashed) and test (solid) error per epoch, one panel per family; seeds
    of one network share its colour."""
    fams = [f for f in ("plain", "residual") if f in set(curves["family"])]
    with sns.axes_style("whitegrid"):
        fig, axes = subplots(1, len(fams), figsize=(6 * len(fams), 4), sharey=True, squeeze=False)
        axes = axes[0]
        depths = sorted(set(curves["depth"]))
        pal = dict(zip(depths, sns.color_palette("colorblind", len(depths))))
        for ax, fam in zip(axes, fams):
            c = curves[curves["family"] == fam]
            for (model, seed), g in c.groupby(["model", "seed"], sort=True):
                depth = int(g["depth"].iloc[0])
                for split, ls in (("train", "--"), ("test", "-")):
                    s = g[g["split"] == split].sort_values("epoch")
                    ax.plot(s["epoch"], 100 * s["error"], ls, color=pal[depth], lw=1.3,
                            label=f"{model} {split}" if seed == c[c["model"] == model]["seed"].min() else "_")
            ax.set_title("plain networks" if fam == "plain" else "ResNets")
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for ax in axes:
            ax.set_ylabel("error (%)")
        top = float(100 * curves["error"].quantile(0.98))
        axes[0].set_ylim(0, min(100.0, max(5.0, top * 1.05)))
        legend(fig, axes, title="dashed: training, solid: test")
    return fig, axes


def prune_plot(df: pd.DataFrame, units: dict[str, list[dict]]):
    """Gromov et al.: angular distance between the inputs of unit ℓ and unit ℓ + n, per start ℓ and n
    (95% CIs; hollow: ranges holding a non-deletable unit); ShortGPT's block influence per unit."""
    models = list(dict.fromkeys(df["model"]))
    ns = sorted(set(df[df["metric"] == "angular_distance"]["n"]))
    pal = palette([f"{m}, n = {n}" for m in models for n in ns] + [f"{m}: block influence" for m in models])
    with sns.axes_style("whitegrid"):
        fig, axes = subplots(1, 2, figsize=(13, 4))
        for m in models:
            pos = unit_positions(units[m])
            names = [u["name"] for u in units[m]]
            for n in ns:
                g = df[(df["model"] == m) & (df["metric"] == "angular_distance") & (df["n"] == n)].copy()
                if g.empty:
                    continue
                g["x"] = g["first"].map(pos).astype(float)
                g = g.sort_values("x")
                c = pal[f"{m}, n = {n}"]
                axes[0].plot(g["x"], g["value"], "-", color=c, label=f"{m}, n = {n}")
                axes[0].fill_between(g["x"], g["ci_low"], g["ci_high"], color=c, alpha=0.18, lw=0)
                nd = g[~g["deletable"].astype(bool)]
                axes[0].plot(nd["x"], nd["value"], "o", ms=4, mfc="white", mec=c)
            b = df[(df["model"] == m) & (df["metric"] == "block_influence")].copy()
            b["x"] = b["first"].map(pos).astype(float)
            b = b.sort_values("x")
            c = pal[f"{m}: block influence"]
            axes[1].plot(b["x"], b["value"], "-o", ms=3, color=c, label=f"{m}: block influence")
            axes[1].fill_between(b["x"], b["ci_low"], b["ci_high"], color=c, alpha=0.18, lw=0)
            del names
        n_st = n_stages({m: units[m] for m in models})
        stage_axis(axes[0], n_st, "first unit ℓ of the range (by stage)")
        stage_axis(axes[1], n_st, "unit (by stage)")
        axes[0].set_ylabel("angular distance d(x_ℓ, x_ℓ+n)")
        axes[0].set_title("Gromov et al.: distance across n units", fontsize=10)
        axes[1].set_ylabel("1 − cos(x_in, x_out)")
        axes[1].set_title("ShortGPT block influence", fontsize=10)
        legend(fig, axes, title="hollow: range not deletable")
    return fig, axes

"""Figures of the lesion study. Each function returns ``(fig, ax)``."""
from __future__ import annotations


import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from .base import (subplots, legend, n_stages, palette, sns, stage_axis,
                   unit_positions)

__all__ = ['lesion_single_plot', 'lesion_random_k_plot', 'lesion_reorder_plot']


def lesion_single_plot(df: pd.DataFrame, units: dict[str, list[dict]]):
    """Veit Fig. 3: error when one unit is deleted (95% CI band), per network; dashed: intact error;
    squares: downsampling units; crosses on the axis: units that cannot be deleted."""
    models = [m for m in dict.fromkeys(df["model"]) if ((df["model"] == m) & (df["mode"] == "single")).any()]
    pal = palette(models)
    with sns.axes_style("whitegrid"):
        fig, ax = subplots(figsize=(8.5, 4))
        top = 0.0
        for m in models:
            pos = unit_positions(units[m])
            ds = {u["name"] for u in units[m] if u["downsample"]} | {u["block"] for u in units[m] if u["downsample"]}
            g = df[(df["model"] == m) & (df["mode"] == "single")].copy()
            g["x"] = g["deleted"].map(pos)
            g = g.sort_values("x")
            y = g["error"].where(g["error"].notna())
            ax.plot(g["x"], y, "-o", ms=3.5, color=pal[m], label=f"{m}: one unit deleted")
            ax.fill_between(g["x"], g["ci_low"], g["ci_high"], color=pal[m], alpha=0.18, lw=0)
            d = g[g["deleted"].isin(ds) & g["error"].notna()]
            ax.plot(d["x"], d["error"], "s", ms=8, mfc="none", mec=pal[m], mew=1.4,
                    label="downsampling unit" if m == models[0] else "_")
            nd = g[g["error"].isna()]
            if len(nd):
                ax.plot(nd["x"], np.zeros(len(nd)), "x", ms=8, color=pal[m], clip_on=False,
                        label=f"{m}: not deletable")
            base = df[(df["model"] == m) & (df["mode"] == "baseline")]["error"]
            if len(base):
                ax.axhline(float(base.iloc[0]), ls="--", color=pal[m], lw=1, label=f"{m}: intact")
            top = max(top, float(np.nanmax(g["ci_high"].to_numpy(dtype=float), initial=0)))
        stage_axis(ax, n_stages({m: units[m] for m in models}))
        ax.set_ylabel("test error")
        ax.set_ylim(0, min(1.0, max(0.2, top * 1.08)))
        ax.set_title("Deleting one residual unit (Veit et al. 2016, Fig. 3)")
        legend(fig, ax)
    return fig, ax


def lesion_random_k_plot(df: pd.DataFrame):
    """Veit Fig. 5a: error vs number of deleted units k: median line, interquartile band; only networks
    with random deletions (a plain twin has none to sample)."""
    models = [m for m in dict.fromkeys(df["model"]) if ((df["model"] == m) & (df["mode"] == "random-k")).any()]
    pal = palette(models)
    with sns.axes_style("whitegrid"):
        fig, ax = subplots(figsize=(7, 4))
        for m in models:
            g = df[(df["model"] == m) & df["mode"].isin(["baseline", "random-k"])]
            q = g.groupby("k")["error"].quantile([0.25, 0.5, 0.75]).unstack()
            ax.plot(q.index.astype(int), q[0.5], "-o", ms=4, color=pal[m], label=f"{m} (median)")
            ax.fill_between(q.index.astype(int), q[0.25], q[0.75], color=pal[m], alpha=0.2, lw=0,
                            label=f"{m} (interquartile range)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("number of units deleted (k; k = 0: intact)")
        ax.set_ylabel("test error")
        ax.set_ylim(0, 1)
        ax.set_title("Deleting k random units (Veit et al. 2016, Fig. 5a)")
        legend(fig, ax)
    return fig, ax


def lesion_reorder_plot(df: pd.DataFrame):
    """Veit Fig. 5b: error vs Kendall τ between the new and the original unit order."""
    d = df[df["mode"].isin(["reorder", "baseline"])].copy()
    models = [m for m in dict.fromkeys(d["model"]) if ((d["model"] == m) & (d["mode"] == "reorder")).any()]
    d = d[d["model"].isin(models)]
    d.loc[d["mode"] == "baseline", "kendall_tau"] = 1.0
    d["kendall_tau"] = d["kendall_tau"].astype(float)
    pal = palette(models)
    with sns.axes_style("whitegrid"):
        fig, ax = subplots(figsize=(7, 4))
        for m in models:
            g = d[d["model"] == m]
            ax.scatter(g["kendall_tau"], g["error"], s=12, alpha=0.45, color=pal[m], label=f"{m} (one order)")
            bins = np.linspace(g["kendall_tau"].min(), 1.0, 9)
            g = g.assign(bin=pd.cut(g["kendall_tau"], bins, include_lowest=True))
            med = g.groupby("bin", observed=True).agg(tau=("kendall_tau", "median"), err=("error", "median"))
            ax.plot(med["tau"], med["err"], "-", color=pal[m], lw=2, label=f"{m} (binned median)")
        ax.invert_xaxis()
        ax.set_xlabel("Kendall τ with the original order (1 = intact)")
        ax.set_ylabel("test error")
        ax.set_ylim(0, 1)
        ax.set_title("Reordering residual branches (Veit et al. 2016, Fig. 5b)")
        legend(fig, ax)
    return fig, ax

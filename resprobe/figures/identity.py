"""Figures of the identity study. Each function returns ``(fig, ax)``."""
from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from .base import (METRIC_LABELS, subplots, legend, n_stages, palette, sns, stage_axis,
                   unit_positions)

__all__ = ['identity_metric_plot', 'response_std_plot']


def identity_metric_plot(df: pd.DataFrame, metric: str, units: dict[str, list[dict]],
                         threshold: Optional[float] = None):
    """One per-unit metric with its 95% CI band, for each network, units placed by stage; squares:
    downsampling units."""
    d = df[df["metric"] == metric]
    models = list(dict.fromkeys(d["model"]))
    pal = palette(models)
    label = METRIC_LABELS.get(metric, metric)
    with sns.axes_style("whitegrid"):
        fig, ax = subplots(figsize=(8, 3.8))
        for m in models:
            pos = unit_positions(units[m])
            g = d[d["model"] == m].assign(x=lambda t: t["unit"].map(pos)).sort_values("x")
            ax.plot(g["x"], g["value"], "-o", ms=3.5, color=pal[m], label=m)
            if g["ci_low"].notna().any():
                ax.fill_between(g["x"], g["ci_low"], g["ci_high"], color=pal[m], alpha=0.2, lw=0)
            ds = g[g["downsample"].astype(bool)]
            ax.plot(ds["x"], ds["value"], "s", ms=8, mfc="none", mec=pal[m],
                    label="downsampling unit" if m == models[0] else "_")
        if threshold is not None:
            ax.axhline(threshold, ls="--", color="black", lw=1, label=f"near-identity threshold {threshold:g}")
        if metric == "grad_cosine":
            ax.axhline(0, color="black", lw=0.8)
        stage_axis(ax, n_stages({m: units[m] for m in models}))
        ax.set_ylabel(label)
        ax.set_title(f"{label} per unit (mean over images, 95% CI)")
        legend(fig, ax)
    return fig, ax


def response_std_plot(df: pd.DataFrame):
    """He et al. Fig. 7: std of each layer's response, in layer order with its 95% CI (top) and sorted
    by magnitude (bottom)."""
    d = df[df["metric"] == "response_std"]
    models = list(dict.fromkeys(d["model"]))
    pal = palette(models)
    with sns.axes_style("whitegrid"):
        fig, axes = subplots(2, 1, figsize=(8, 6))
        for m in models:
            g = d[d["model"] == m]
            v = g["value"].to_numpy()
            x = np.arange(1, len(v) + 1)
            axes[0].plot(x, v, "-", color=pal[m], label=m)
            if g["ci_low"].notna().all():
                axes[0].fill_between(x, g["ci_low"], g["ci_high"], color=pal[m], alpha=0.2, lw=0)
            axes[1].plot(x, np.sort(v)[::-1], "-", color=pal[m])
        axes[0].set_xlabel("layer index (in forward order)")
        axes[1].set_xlabel("layer index (sorted by magnitude)")
        for ax in axes:
            ax.set_ylabel("std of the layer's response")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[0].set_title("Layer responses after BN, before addition or nonlinearity (He et al. 2016, Fig. 7)")
        legend(fig, axes)
    return fig, axes

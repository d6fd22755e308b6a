"""Figures of the paths study. Each function returns ``(fig, ax)``."""
from __future__ import annotations


import pandas as pd
from matplotlib.ticker import MaxNLocator

from .base import (subplots, legend, palette, sns)

__all__ = ['paths_plots']


def paths_plots(df: pd.DataFrame):
    """Veit Fig. 6 a–c: path-length distribution, gradient per path (log scale, 95% CI), share of the
    total gradient (95% CI), against the path length k."""
    models = list(dict.fromkeys(df["model"]))
    pal = palette(models)
    with sns.axes_style("whitegrid"):
        fig, axes = subplots(1, 3, figsize=(15, 4))
        for m in models:
            g = df[df["model"] == m].sort_values("k")
            axes[0].plot(g["k"], g["n_paths"] / g["n_paths"].sum(), "-o", ms=3, color=pal[m], label=m)
            axes[1].plot(g["k"], g["grad_per_path"], "-o", ms=3, color=pal[m])
            axes[1].fill_between(g["k"], g["ci_low"], g["ci_high"], color=pal[m], alpha=0.2, lw=0)
            tot = g["total_grad"].sum()
            axes[2].plot(g["k"], g["total_grad"] / tot, "-o", ms=3, color=pal[m])
            axes[2].fill_between(g["k"], g["total_ci_low"] / tot, g["total_ci_high"] / tot, color=pal[m], alpha=0.2,
                                 lw=0)
        axes[0].set_ylabel("fraction of paths")
        axes[1].set_ylabel("gradient magnitude per path")
        axes[1].set_yscale("log")
        axes[2].set_ylabel("share of the total gradient magnitude")
        for ax, t in zip(axes, ["(a) path-length distribution", "(b) gradient per path (95% CI)",
                                "(c) total gradient by length (95% CI)"]):
            ax.set_xlabel("path length k (residual branches on the path)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_title(t)
        legend(fig, axes)
    return fig, axes

"""Figures of the shattered-gradient studies. Each function returns ``(fig, ax)``."""
from __future__ import annotations


import numpy as np
import pandas as pd

from .base import (subplots, legend, n_stages, palette, sns, stage_axis,
                   unit_positions)

__all__ = ['gradient_traces_plot', 'correlation_heatmaps_plot', 'lag1_vs_depth_plot', 'block_profile_plot', 'spectra_plot']


def _kind_title(kind: str, depth) -> str:
    return f"{kind}" + (f", depth {depth}" if depth else "")


def gradient_traces_plot(traces: dict, x, xlabel: str = "input x"):
    """Balduzzi Fig. 1 top: the gradient along the input line, one panel per (name, depth)."""
    with sns.axes_style("whitegrid"):
        fig, axes = subplots(1, len(traces), figsize=(3.3 * len(traces), 2.9), squeeze=False)
        for ax, ((kind, depth), g) in zip(axes[0], traces.items()):
            ax.plot(np.asarray(x).ravel()[: len(g)], g, lw=0.8)
            ax.set_title(_kind_title(kind, depth), fontsize=9)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("gradient")
    return fig, axes


def correlation_heatmaps_plot(mats: dict):
    """Balduzzi Fig. 1 bottom: normalized covariance of gradients between input points, across inits."""
    fig, axes = subplots(1, len(mats), figsize=(3.2 * len(mats) + 1, 3.2), squeeze=False)
    im = None
    for ax, ((kind, depth), c) in zip(axes[0], mats.items()):
        im = ax.imshow(c, vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_title(_kind_title(kind, depth), fontsize=9)
        ax.set_xlabel("input point j")
        ax.set_ylabel("input point i")
    if im is not None:
        cb = fig.colorbar(im, ax=axes[0].tolist(), shrink=0.85)
        cb.set_label("normalized covariance of df/dx")
    return fig, axes


def lag1_vs_depth_plot(df: pd.DataFrame, fits: dict):
    """Mean lag-1 autocorrelation of the gradients vs depth per kind (95% CI), with the fits drawn over the
    depths they used (hollow markers: depths below the fit's floor, left out of the fit)."""
    d = df[(df["seed"] == "all") & (df["metric"] == "lag1") & (df["depth"] > 0)]
    kinds = list(dict.fromkeys(d["kind"]))
    pal = palette(kinds)
    with sns.axes_style("whitegrid"):
        fig, ax = subplots(figsize=(7.5, 4.2))
        for k in kinds:
            g = d[d["kind"] == k].sort_values("depth")
            ax.errorbar(g["depth"], g["value"], yerr=[g["value"] - g["ci_low"], g["ci_high"] - g["value"]],
                        fmt="-", color=pal[k], label=k, capsize=2)
            f = fits.get(k)
            used = set(f["depths"]) if f else set()
            inn, out = g[g["depth"].isin(used)], g[~g["depth"].isin(used)]
            ax.plot(inn["depth"], inn["value"], "o", ms=4, color=pal[k])
            ax.plot(out["depth"], out["value"], "o", ms=5, mfc="white", mec=pal[k])
            if f and k in ("ff-bn", "res-bn") and len(used) >= 2:
                L = np.linspace(min(used), max(used), 100)
                if k == "ff-bn":
                    e = f["exponential"]
                    ax.plot(L, 2 ** (e["intercept"] + e["slope"] * L), ":", color=pal[k], lw=2,
                            label=f"ff-bn fit 2^({e['slope']:.3f}·L)")
                else:
                    p = f["power_law"]
                    ax.plot(L, np.exp(p["intercept"]) * L ** p["slope"], ":", color=pal[k], lw=2,
                            label=f"res-bn fit L^{p['slope']:.3f}")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xlabel("depth L (hidden layers or blocks)")
        ax.set_ylabel("lag-1 autocorrelation of df/dx")
        ax.set_title("Shattering with depth at initialisation (Balduzzi et al. 2017)")
        legend(fig, ax, title="hollow: left out of the fit")
    return fig, ax


def block_profile_plot(df: pd.DataFrame, units: dict[str, list[dict]], metric: str = "lag1"):
    """Per-unit shattering profile of trained networks: the mean ``metric`` of the gradients at the image
    (left of stage 1) and at each unit's input, 95% CIs across lines."""
    d = df[(df["seed"] == "all") & (df["metric"] == metric)]
    models = list(dict.fromkeys(d["model"]))
    pal = palette(models)
    with sns.axes_style("whitegrid"):
        fig, ax = subplots(figsize=(8, 3.8))
        for m in models:
            pos = dict(unit_positions(units[m]), input=-0.25)
            g = d[d["model"] == m].assign(x=lambda t: t["layer"].map(pos)).sort_values("x")
            ax.errorbar(g["x"], g["value"], yerr=[g["value"] - g["ci_low"], g["ci_high"] - g["value"]],
                        fmt="-o", ms=3.5, capsize=2, color=pal[m], label=m)
        stage_axis(ax, n_stages({m: units[m] for m in models}),
                    "gradient taken at the image (left) and at each unit's input (by stage)")
        ax.set_xlim(-0.5, n_stages({m: units[m] for m in models}))
        ax.set_ylabel("lag-1 autocorrelation along lines" if metric == "lag1" else metric)
        ax.set_title("Shattering profile through depth (trained networks)")
        legend(fig, ax)
    return fig, ax


def spectra_plot(grads: dict):
    """Mean periodogram of the gradient sequences (log-log), per (kind, depth), with white and brown noise."""
    with sns.axes_style("whitegrid"):
        fig, ax = subplots(figsize=(7.5, 4.2))
        pal = palette(list(grads))
        for key, g in grads.items():
            d = g - g.mean(1, keepdims=True)
            p = (np.abs(np.fft.rfft(d, axis=1)) ** 2).mean(0)
            f = np.fft.rfftfreq(g.shape[1])
            keep = (f > 0) & (p > 0)
            if keep.any():
                ax.loglog(f[keep], p[keep] / p[keep][0], color=pal[key], lw=1, label=_kind_title(*key))
        ax.set_xlabel("frequency (cycles per point)")
        ax.set_ylabel("power (relative to the lowest frequency)")
        ax.set_title("Spectra of df/dx along the line: white ≈ flat, brown ≈ f⁻²")
        legend(fig, ax)
    return fig, ax

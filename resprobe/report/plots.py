"""Seaborn plots of probe results. Every function returns ``(fig, ax)`` and never shows anything;
:func:`save_figure` writes PNG and SVG."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

__all__ = ["save_figure", "lesion_single_plot", "lesion_random_k_plot", "lesion_reorder_plot", "identity_metric_plot",
           "response_std_plot", "paths_plots", "gradient_traces_plot", "correlation_heatmaps_plot",
           "lag1_vs_depth_plot", "block_profile_plot", "spectra_plot", "amplify_plots",
           "training_curves_plot"]


def save_figure(fig, stem) -> list[Path]:
    """Write ``stem.png`` (150 dpi) and ``stem.svg``; close the figure."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


def _palette(models):
    return dict(zip(models, sns.color_palette("deep", len(models))))


def lesion_single_plot(df: pd.DataFrame, blocks: dict[str, list[dict]]):
    """Veit Fig. 3: test error when one block is deleted, per block, with the baseline as a dashed line.

    ``blocks[model]`` is the anatomy table (name, stage, downsample) of each model in ``df``.
    Stage boundaries are dotted vertical lines; downsampling blocks are drawn as squares.
    """
    models = list(dict.fromkeys(df["model"]))
    pal = _palette(models)
    with sns.axes_style("whitegrid"):
        fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * max(len(v) for v in blocks.values()) + 3), 4))
        for m in models:
            g = df[df["model"] == m]
            table = blocks[m]
            pos = {b["name"]: i for i, b in enumerate(table)}
            s = g[(g["mode"] == "single") & g["error"].notna()].copy()
            s["x"] = s["deleted"].map(pos)
            s = s.sort_values("x")
            ax.plot(s["x"], s["error"], "-o", ms=4, color=pal[m], label=f"{m}: one block deleted")
            ax.fill_between(s["x"], s["ci_low"], s["ci_high"], color=pal[m], alpha=0.15, lw=0)
            ds = s[s["deleted"].isin([b["name"] for b in table if b["downsample"]])]
            ax.plot(ds["x"], ds["error"], "s", ms=9, mfc="none", mec=pal[m], mew=1.5)
            base = g[g["mode"] == "baseline"]["error"]
            if len(base):
                ax.axhline(float(base.iloc[0]), ls="--", color=pal[m], lw=1, label=f"{m}: baseline")
            stages = [b["stage"] for b in table]
            for i in range(1, len(stages)):
                if stages[i] != stages[i - 1]:
                    ax.axvline(i - 0.5, ls=":", color="grey", lw=1)
        ax.set_xlabel("deleted block (index; dotted lines: stage boundaries; squares: downsampling blocks)")
        ax.set_ylabel("test error")
        ax.set_ylim(0, min(1.0, max(0.2, float(df["error"].max()) * 1.1)))
        ax.set_title("Deleting one residual block (Veit et al. 2016, Fig. 3)")
        ax.legend(fontsize=8, loc="upper right")
    return fig, ax


def lesion_random_k_plot(df: pd.DataFrame):
    """Veit Fig. 5a: error vs number of deleted blocks k: median line and interquartile band."""
    models = list(dict.fromkeys(df["model"]))
    pal = _palette(models)
    with sns.axes_style("whitegrid"):
        fig, ax = plt.subplots(figsize=(6, 4))
        for m in models:
            g = df[(df["model"] == m) & df["mode"].isin(["baseline", "random-k"])]
            q = g.groupby("k")["error"].quantile([0.25, 0.5, 0.75]).unstack()
            ax.plot(q.index, q[0.5], "-o", ms=4, color=pal[m], label=f"{m} (median)")
            ax.fill_between(q.index, q[0.25], q[0.75], color=pal[m], alpha=0.2, lw=0)
        ax.set_xlabel("number of blocks deleted (k)")
        ax.set_ylabel("test error")
        ax.set_ylim(0, 1)
        ax.set_title("Deleting k random blocks (Veit et al. 2016, Fig. 5a); band: IQR")
        ax.legend(fontsize=8)
    return fig, ax


def lesion_reorder_plot(df: pd.DataFrame):
    """Veit Fig. 5b: error vs Kendall tau between the new and the original block order."""
    d = df[df["mode"].isin(["reorder", "baseline"])].copy()
    d.loc[d["mode"] == "baseline", "kendall_tau"] = 1.0
    d["kendall_tau"] = d["kendall_tau"].astype(float)
    models = list(dict.fromkeys(d["model"]))
    pal = _palette(models)
    with sns.axes_style("whitegrid"):
        fig, ax = plt.subplots(figsize=(6, 4))
        sns.scatterplot(data=d, x="kendall_tau", y="error", hue="model", palette=pal, s=14, alpha=0.5, ax=ax,
                        legend=False)
        for m in models:
            g = d[d["model"] == m]
            bins = np.linspace(g["kendall_tau"].min(), 1.0, 9)
            g = g.assign(bin=pd.cut(g["kendall_tau"], bins, include_lowest=True))
            med = g.groupby("bin", observed=True).agg(tau=("kendall_tau", "median"), err=("error", "median"))
            ax.plot(med["tau"], med["err"], "-", color=pal[m], lw=2, label=f"{m} (binned median)")
        ax.invert_xaxis()
        ax.set_xlabel("Kendall tau with the original order")
        ax.set_ylabel("test error")
        ax.set_ylim(0, 1)
        ax.set_title("Reordering residual branches (Veit et al. 2016, Fig. 5b)")
        ax.legend(fontsize=8)
    return fig, ax


def _stage_lines(ax, stages):
    for i in range(1, len(stages)):
        if stages[i] != stages[i - 1]:
            ax.axvline(i - 0.5, ls=":", color="grey", lw=1)


def identity_metric_plot(df: pd.DataFrame, metric: str, threshold: Optional[float] = None):
    """One per-block metric (with its CI band) for each model; dotted lines at stage boundaries."""
    d = df[df["metric"] == metric]
    models = list(dict.fromkeys(d["model"]))
    pal = _palette(models)
    labels = {"residual_ratio": "‖F(x)‖ / ‖S(x)‖", "relative_change": "‖y − S(x)‖ / ‖S(x)‖",
              "cosine": "cos(S(x), y)", "cka": "linear CKA(input, output)", "grad_cosine": "cos(F(x), ∂L/∂x)"}
    with sns.axes_style("whitegrid"):
        fig, ax = plt.subplots(figsize=(7, 3.6))
        for m in models:
            g = d[d["model"] == m].reset_index(drop=True)
            x = np.arange(len(g))
            ax.plot(x, g["value"], "-o", ms=3.5, color=pal[m], label=m)
            if g["ci_low"].notna().any():
                ax.fill_between(x, g["ci_low"], g["ci_high"], color=pal[m], alpha=0.2, lw=0)
            ds = g[g["downsample"].astype(bool)]
            ax.plot(ds.index, ds["value"], "s", ms=8, mfc="none", mec=pal[m])
            if len(models) == 1:
                _stage_lines(ax, g["stage"].tolist())
        if threshold is not None:
            ax.axhline(threshold, ls="--", color="black", lw=1, label=f"threshold {threshold}")
        if metric == "grad_cosine":
            ax.axhline(0, color="black", lw=0.8)
        ax.set_xlabel("block (index in forward order; squares: downsampling blocks)")
        ax.set_ylabel(labels.get(metric, metric))
        ax.set_title(f"{metric} per block")
        ax.legend(fontsize=8)
    return fig, ax


def response_std_plot(df: pd.DataFrame):
    """He et al. Fig. 7: std of each 3×3 layer's response, in layer order with its CI band (top) and
    sorted (bottom)."""
    d = df[df["metric"] == "response_std"]
    models = list(dict.fromkeys(d["model"]))
    pal = _palette(models)
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(2, 1, figsize=(7, 6))
        for m in models:
            g = d[d["model"] == m]
            v = g["value"].to_numpy()
            x = np.arange(1, len(v) + 1)
            axes[0].plot(x, v, "-", color=pal[m], label=m)
            if g["ci_low"].notna().all():  # 95% bootstrap CI over images
                axes[0].fill_between(x, g["ci_low"], g["ci_high"], color=pal[m], alpha=0.2, lw=0)
            axes[1].plot(np.arange(1, len(v) + 1), np.sort(v)[::-1], "-", color=pal[m], label=m)
        axes[0].set_xlabel("layer index (3×3 convolutions in forward order)")
        axes[1].set_xlabel("layer index (sorted by magnitude)")
        for ax in axes:
            ax.set_ylabel("std of response")
            ax.legend(fontsize=8)
        axes[0].set_title("Layer responses after BN, before addition/nonlinearity (He et al. 2016, Fig. 7)")
        fig.tight_layout()
    return fig, axes


def paths_plots(df: pd.DataFrame):
    """Veit Fig. 6 a–c: path-length distribution, gradient per path (log scale), total gradient, vs k."""
    models = list(dict.fromkeys(df["model"]))
    pal = _palette(models)
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
        for m in models:
            g = df[df["model"] == m].sort_values("k")
            axes[0].plot(g["k"], g["n_paths"] / g["n_paths"].sum(), "-o", ms=3, color=pal[m], label=m)
            axes[1].plot(g["k"], g["grad_per_path"], "-o", ms=3, color=pal[m], label=m)
            axes[1].fill_between(g["k"], g["ci_low"], g["ci_high"], color=pal[m], alpha=0.2, lw=0)
            axes[2].plot(g["k"], g["total_grad"] / g["total_grad"].sum(), "-o", ms=3, color=pal[m], label=m)
        axes[0].set_ylabel("fraction of paths")
        axes[1].set_ylabel("gradient magnitude per path")
        axes[1].set_yscale("log")
        axes[2].set_ylabel("share of total gradient magnitude")
        for ax, t in zip(axes, ["(a) path-length distribution", "(b) gradient per path", "(c) total gradient"]):
            ax.set_xlabel("path length k (residual branches on the path)")
            ax.set_title(t)
            ax.legend(fontsize=8)
        fig.tight_layout()
    return fig, axes


def gradient_traces_plot(traces: dict, x):
    """Balduzzi Fig. 1 top: gradient df/dx along the input line, one panel per (kind, depth)."""
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(1, len(traces), figsize=(3.2 * len(traces), 2.8), squeeze=False)
        for ax, ((kind, depth), g) in zip(axes[0], traces.items()):
            ax.plot(np.asarray(x).ravel(), g, lw=0.8)
            ax.set_title(f"{kind}" + (f", depth {depth}" if depth else ""), fontsize=9)
            ax.set_xlabel("input x")
        axes[0][0].set_ylabel("df/dx")
        fig.tight_layout()
    return fig, axes


def correlation_heatmaps_plot(mats: dict):
    """Balduzzi Fig. 1 bottom: normalized covariance of gradients between input points, across inits."""
    fig, axes = plt.subplots(1, len(mats), figsize=(3.0 * len(mats), 2.9), squeeze=False)
    for ax, ((kind, depth), c) in zip(axes[0], mats.items()):
        im = ax.imshow(c, vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_title(f"{kind}" + (f", depth {depth}" if depth else ""), fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    return fig, axes


def lag1_vs_depth_plot(df: pd.DataFrame, fits: dict):
    """Mean lag-1 autocorrelation of the gradients vs depth per kind (95% CI), with the paper's fits."""
    d = df[(df["seed"] == "all") & (df["metric"] == "lag1") & (df["depth"] > 0)]
    kinds = list(dict.fromkeys(d["kind"]))
    pal = _palette(kinds)
    with sns.axes_style("whitegrid"):
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for k in kinds:
            g = d[d["kind"] == k].sort_values("depth")
            ax.errorbar(g["depth"], g["value"], yerr=[g["value"] - g["ci_low"], g["ci_high"] - g["value"]],
                        fmt="-o", ms=4, color=pal[k], label=k, capsize=2)
            f = fits.get(k)
            if f and k in ("ff-bn", "res-bn"):
                L = np.linspace(1, max(g["depth"]), 100)
                if k == "ff-bn":
                    e = f["exponential"]
                    ax.plot(L, 2 ** (e["intercept"] + e["slope"] * L), ":", color=pal[k],
                            label=f"ff-bn fit: 2^({e['slope']:.3f} L)")
                else:
                    p = f["power_law"]
                    ax.plot(L, np.exp(p["intercept"]) * L ** p["slope"], ":", color=pal[k],
                            label=f"res-bn fit: L^{p['slope']:.3f}")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xlabel("depth L (hidden layers / blocks)")
        ax.set_ylabel("lag-1 autocorrelation of df/dx")
        ax.set_title("Shattering with depth (Balduzzi et al. 2017)")
        ax.legend(fontsize=7)
    return fig, ax


def block_profile_plot(df: pd.DataFrame, metric: str = "lag1"):
    """Per-block shattering profile: the mean ``metric`` of the gradients at the image and at each
    block's input, with 95% CIs across lines, one line per model."""
    d = df[(df["seed"] == "all") & (df["metric"] == metric)]
    models = list(dict.fromkeys(d["model"]))
    pal = _palette(models)
    with sns.axes_style("whitegrid"):
        fig, ax = plt.subplots(figsize=(7, 3.6))
        for m in models:
            g = d[d["model"] == m].reset_index(drop=True)
            ax.errorbar(np.arange(len(g)), g["value"], yerr=[g["value"] - g["ci_low"], g["ci_high"] - g["value"]],
                        fmt="-o", ms=3.5, capsize=2, color=pal[m], label=m)
        ax.set_xlabel("gradient taken at: 0 = image, i = input of block i")
        ax.set_ylabel(f"{metric} of gradients along lines")
        ax.set_title("Shattering profile through depth")
        ax.legend(fontsize=8)
    return fig, ax


def spectra_plot(grads: dict):
    """Mean periodogram of the gradient sequences (log-log), per (kind, depth), with the references."""
    with sns.axes_style("whitegrid"):
        fig, ax = plt.subplots(figsize=(6.5, 4))
        pal = _palette(list(grads))
        for key, g in grads.items():
            d = g - g.mean(1, keepdims=True)
            p = (np.abs(np.fft.rfft(d, axis=1)) ** 2).mean(0)
            f = np.fft.rfftfreq(g.shape[1])
            keep = (f > 0) & (p > 0)
            if keep.any():
                kind, depth = key
                ax.loglog(f[keep], p[keep] / p[keep][0], color=pal[key], lw=1,
                          label=f"{kind}" + (f", depth {depth}" if depth else ""))
        ax.set_xlabel("frequency (cycles per point)")
        ax.set_ylabel("power (normalized to the lowest frequency)")
        ax.set_title("Spectra of df/dx along the line: white ≈ flat, brown ≈ f^-2")
        ax.legend(fontsize=7)
    return fig, ax


def amplify_plots(df: pd.DataFrame) -> dict:
    """Per-block gains (random vs worst case, block vs branch), cumulative gains, amplifier ratios."""
    d = df[df["block"] != "network"]
    e0 = d["eps"].dropna().min()
    models = list(dict.fromkeys(d["model"]))
    pal = _palette(models)
    figs = {}
    with sns.axes_style("whitegrid"):
        fig, ax = plt.subplots(figsize=(7.5, 4))
        styles = {"worst_gain_block": "-", "worst_gain_branch": "--", "random_gain_block": ":",
                  "random_gain_branch": "-."}
        for m in models:
            for metric, ls in styles.items():
                s = d[(d["model"] == m) & (d["metric"] == metric)]
                s = s[s["eps"].isna()] if metric.startswith("worst") else s[s["eps"] == e0]
                ax.plot(np.arange(len(s)), s["value"], ls, marker="o", ms=2.5, color=pal[m], label=f"{m} {metric}")
        ax.set_yscale("log")
        ax.set_xlabel("block index")
        ax.set_ylabel("gain ‖Δout‖/‖Δin‖")
        ax.set_title(f"Per-block gains (random: ε = {e0:g}; worst case: Jacobian spectral norm)")
        ax.legend(fontsize=6, ncol=2)
        figs["gains"] = (fig, ax)
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        for m in models:
            for ax, metric in zip(axes, ["gain_from_image", "gain_to_logits"]):
                s = d[(d["model"] == m) & (d["metric"] == metric) & (d["eps"] == e0)]
                ax.plot(np.arange(len(s)), s["value"], "-o", ms=3, color=pal[m], label=m)
                ax.set_title(metric.replace("_", " ") + f" (ε = {e0:g})")
                ax.set_yscale("log")
                ax.set_xlabel("block index")
                ax.legend(fontsize=8)
        figs["cumulative"] = (fig, axes)
        fig, ax = plt.subplots(figsize=(7, 3.8))
        for m in models:
            for metric, ls in (("amplifier_ratio", "-"), ("weight_amplifier_ratio", "--")):
                s = d[(d["model"] == m) & (d["metric"] == metric) & (d["eps"] == e0)]
                if len(s):
                    ax.errorbar(np.arange(len(s)), s["value"], yerr=[s["value"] - s["ci_low"], s["ci_high"] - s["value"]],
                                fmt=ls, marker="o", ms=3, capsize=2, color=pal[m], label=f"{m} {metric}")
        ax.axhline(1, color="black", lw=0.8)
        ax.set_xlabel("block index (residual blocks)")
        ax.set_ylabel("(‖ΔF‖/‖F‖) / (‖Δy‖/‖y‖)")
        ax.set_title("Differential-amplifier ratio: input (solid) and weight (dashed) perturbations")
        ax.legend(fontsize=7)
        figs["ratios"] = (fig, ax)
    return figs


def training_curves_plot(curves: pd.DataFrame):
    """He et al. Fig. 1: training (dashed) and test (solid) error per epoch, one panel per family.

    ``curves``: long rows ``model, family, depth, epoch, split, error`` (see ``report.degradation``)."""
    fams = [f for f in ("plain", "residual") if f in set(curves["family"])]
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(1, len(fams), figsize=(5.5 * len(fams), 4), sharey=True, squeeze=False)
        axes = axes[0]
        depths = sorted(set(curves["depth"]))
        pal = dict(zip(depths, sns.color_palette("deep", len(depths))))
        for ax, fam in zip(axes, fams):
            c = curves[curves["family"] == fam]
            for model in sorted(set(c["model"]), key=lambda s: int(c[c["model"] == s]["depth"].iloc[0])):
                g = c[c["model"] == model]
                depth = int(g["depth"].iloc[0])
                for split, ls in (("train", "--"), ("test", "-")):
                    s = g[g["split"] == split].sort_values("epoch")
                    ax.plot(s["epoch"], 100 * s["error"], ls, color=pal[depth], lw=1.4,
                            label=f"{model} {split}")
            ax.set_title("plain networks" if fam == "plain" else "ResNets")
            ax.set_xlabel("epoch")
            ax.legend(fontsize=7)
        axes[0].set_ylabel("error (%)")
        top = float(100 * curves["error"].quantile(0.98))
        axes[0].set_ylim(0, min(100.0, max(5.0, top * 1.05)))
    return fig, axes

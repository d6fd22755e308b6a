"""Plots of study results. Every function returns ``(fig, ax)`` (``ax`` may be an array) and never shows
anything; :func:`save_figure` writes PNG and SVG.

Conventions, everywhere: a colour-blind-safe palette (seaborn ``colorblind``); every axis and colour bar
labelled; legends outside the data, inside the figure (constrained layout); 95% CIs drawn wherever the
data has them; integer ticks for counts; per-unit plots place each network's units by stage and relative
position within the stage (stage s spans [s, s + 1)), so networks of different depths line up; units that
cannot be deleted are marked, not drawn through.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from ..io.atomic import atomic_path  # noqa: E402

__all__ = ["save_figure", "unit_positions", "lesion_single_plot", "lesion_random_k_plot", "lesion_reorder_plot",
           "identity_metric_plot", "response_std_plot", "paths_plots", "gradient_traces_plot",
           "correlation_heatmaps_plot", "lag1_vs_depth_plot", "block_profile_plot", "spectra_plot",
           "amplify_kappa_plot", "amplify_gains_plot", "amplify_cumulative_plot", "amplify_arithmetic_plot",
           "training_curves_plot", "prune_plot", "METRIC_LABELS"]

METRIC_LABELS = {"residual_ratio": "‖F(x)‖ / ‖S(x)‖", "branch_ratio": "‖F(x)‖ / ‖x‖",
                 "relative_change": "‖y − S(x)‖ / ‖S(x)‖", "cosine": "cos(S(x), y)",
                 "block_influence": "block influence 1 − cos(x, y)", "cka": "linear CKA(input, output)",
                 "grad_cosine": "cos(F(x), ∂L/∂x)"}


def _fig(*args, **kw):
    return plt.subplots(*args, layout="constrained", **kw)


def _palette(names):
    return dict(zip(names, sns.color_palette("colorblind", max(len(names), 1))))


def _legend(fig, ax, title: Optional[str] = None):
    handles, labels = [], []
    for a in np.atleast_1d(ax).ravel():
        h, lab = a.get_legend_handles_labels()
        for hh, ll in zip(h, lab):
            if ll not in labels and not ll.startswith("_"):
                handles.append(hh)
                labels.append(ll)
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize=8, title=title, title_fontsize=8)


def _plain_log_formatter(ax, axis: str = "y"):
    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_formatter(fmt)
    target.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def save_figure(fig, stem) -> list[Path]:
    """Write ``stem.png`` (150 dpi) and ``stem.svg``; close the figure."""
    stem = Path(stem)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    try:
        with atomic_path(paths[0]) as tmp:
            fig.savefig(tmp, dpi=150, format="png")
        with atomic_path(paths[1]) as tmp:
            fig.savefig(tmp, format="svg")
    finally:
        plt.close(fig)
    return paths


def unit_positions(units: list[dict]) -> dict[str, float]:
    """``name -> x``: stage s spans [s, s + 1); a stage's units are spread evenly inside it. Block names
    get the mean position of their units."""
    out: dict[str, float] = {}
    by_stage: dict[int, list[dict]] = {}
    for u in units:
        by_stage.setdefault(u["stage"], []).append(u)
    for s, us in by_stage.items():
        for j, u in enumerate(us):
            out[u["name"]] = s + (j + 0.5) / len(us)
    blocks: dict[str, list[float]] = {}
    for u in units:
        blocks.setdefault(u["block"], []).append(out[u["name"]])
    for b, xs in blocks.items():
        out.setdefault(b, float(np.mean(xs)))
    return out


def _stage_axis(ax, n_stages: int, label: str = "unit (position within its stage; dotted lines: stage boundaries)"):
    for s in range(1, n_stages):
        ax.axvline(s, ls=":", color="grey", lw=1)
    ax.set_xlim(0, max(n_stages, 1))
    ax.set_xticks([s + 0.5 for s in range(n_stages)])
    ax.set_xticklabels([f"stage {s + 1}" for s in range(n_stages)])
    ax.set_xlabel(label)


def _n_stages(units: dict[str, list[dict]]) -> int:
    return max((u["stage"] for us in units.values() for u in us), default=0) + 1


# --- lesions -------------------------------------------------------------------------------------------

def lesion_single_plot(df: pd.DataFrame, units: dict[str, list[dict]]):
    """Veit Fig. 3: error when one unit is deleted (95% CI band), per network; dashed: intact error;
    squares: downsampling units; crosses on the axis: units that cannot be deleted."""
    models = [m for m in dict.fromkeys(df["model"]) if ((df["model"] == m) & (df["mode"] == "single")).any()]
    pal = _palette(models)
    with sns.axes_style("whitegrid"):
        fig, ax = _fig(figsize=(8.5, 4))
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
        _stage_axis(ax, _n_stages({m: units[m] for m in models}))
        ax.set_ylabel("test error")
        ax.set_ylim(0, min(1.0, max(0.2, top * 1.08)))
        ax.set_title("Deleting one residual unit (Veit et al. 2016, Fig. 3)")
        _legend(fig, ax)
    return fig, ax


def lesion_random_k_plot(df: pd.DataFrame):
    """Veit Fig. 5a: error vs number of deleted units k: median line, interquartile band; only networks
    with random deletions (a plain twin has none to sample)."""
    models = [m for m in dict.fromkeys(df["model"]) if ((df["model"] == m) & (df["mode"] == "random-k")).any()]
    pal = _palette(models)
    with sns.axes_style("whitegrid"):
        fig, ax = _fig(figsize=(7, 4))
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
        _legend(fig, ax)
    return fig, ax


def lesion_reorder_plot(df: pd.DataFrame):
    """Veit Fig. 5b: error vs Kendall τ between the new and the original unit order."""
    d = df[df["mode"].isin(["reorder", "baseline"])].copy()
    models = [m for m in dict.fromkeys(d["model"]) if ((d["model"] == m) & (d["mode"] == "reorder")).any()]
    d = d[d["model"].isin(models)]
    d.loc[d["mode"] == "baseline", "kendall_tau"] = 1.0
    d["kendall_tau"] = d["kendall_tau"].astype(float)
    pal = _palette(models)
    with sns.axes_style("whitegrid"):
        fig, ax = _fig(figsize=(7, 4))
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
        _legend(fig, ax)
    return fig, ax


# --- identity --------------------------------------------------------------------------------------------

def identity_metric_plot(df: pd.DataFrame, metric: str, units: dict[str, list[dict]],
                         threshold: Optional[float] = None):
    """One per-unit metric with its 95% CI band, for each network, units placed by stage; squares:
    downsampling units."""
    d = df[df["metric"] == metric]
    models = list(dict.fromkeys(d["model"]))
    pal = _palette(models)
    label = METRIC_LABELS.get(metric, metric)
    with sns.axes_style("whitegrid"):
        fig, ax = _fig(figsize=(8, 3.8))
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
        _stage_axis(ax, _n_stages({m: units[m] for m in models}))
        ax.set_ylabel(label)
        ax.set_title(f"{label} per unit (mean over images, 95% CI)")
        _legend(fig, ax)
    return fig, ax


def response_std_plot(df: pd.DataFrame):
    """He et al. Fig. 7: std of each layer's response, in layer order with its 95% CI (top) and sorted
    by magnitude (bottom)."""
    d = df[df["metric"] == "response_std"]
    models = list(dict.fromkeys(d["model"]))
    pal = _palette(models)
    with sns.axes_style("whitegrid"):
        fig, axes = _fig(2, 1, figsize=(8, 6))
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
        _legend(fig, axes)
    return fig, axes


# --- paths -----------------------------------------------------------------------------------------------

def paths_plots(df: pd.DataFrame):
    """Veit Fig. 6 a–c: path-length distribution, gradient per path (log scale, 95% CI), share of the
    total gradient (95% CI), against the path length k."""
    models = list(dict.fromkeys(df["model"]))
    pal = _palette(models)
    with sns.axes_style("whitegrid"):
        fig, axes = _fig(1, 3, figsize=(15, 4))
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
        _legend(fig, axes)
    return fig, axes


# --- shattered gradients ---------------------------------------------------------------------------------

def _kind_title(kind: str, depth) -> str:
    return f"{kind}" + (f", depth {depth}" if depth else "")


def gradient_traces_plot(traces: dict, x, xlabel: str = "input x"):
    """Balduzzi Fig. 1 top: the gradient along the input line, one panel per (name, depth)."""
    with sns.axes_style("whitegrid"):
        fig, axes = _fig(1, len(traces), figsize=(3.3 * len(traces), 2.9), squeeze=False)
        for ax, ((kind, depth), g) in zip(axes[0], traces.items()):
            ax.plot(np.asarray(x).ravel()[: len(g)], g, lw=0.8)
            ax.set_title(_kind_title(kind, depth), fontsize=9)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("gradient")
    return fig, axes


def correlation_heatmaps_plot(mats: dict):
    """Balduzzi Fig. 1 bottom: normalized covariance of gradients between input points, across inits."""
    fig, axes = _fig(1, len(mats), figsize=(3.2 * len(mats) + 1, 3.2), squeeze=False)
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
    pal = _palette(kinds)
    with sns.axes_style("whitegrid"):
        fig, ax = _fig(figsize=(7.5, 4.2))
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
        _legend(fig, ax, title="hollow: left out of the fit")
    return fig, ax


def block_profile_plot(df: pd.DataFrame, units: dict[str, list[dict]], metric: str = "lag1"):
    """Per-unit shattering profile of trained networks: the mean ``metric`` of the gradients at the image
    (left of stage 1) and at each unit's input, 95% CIs across lines."""
    d = df[(df["seed"] == "all") & (df["metric"] == metric)]
    models = list(dict.fromkeys(d["model"]))
    pal = _palette(models)
    with sns.axes_style("whitegrid"):
        fig, ax = _fig(figsize=(8, 3.8))
        for m in models:
            pos = dict(unit_positions(units[m]), input=-0.25)
            g = d[d["model"] == m].assign(x=lambda t: t["layer"].map(pos)).sort_values("x")
            ax.errorbar(g["x"], g["value"], yerr=[g["value"] - g["ci_low"], g["ci_high"] - g["value"]],
                        fmt="-o", ms=3.5, capsize=2, color=pal[m], label=m)
        _stage_axis(ax, _n_stages({m: units[m] for m in models}),
                    "gradient taken at the image (left) and at each unit's input (by stage)")
        ax.set_xlim(-0.5, _n_stages({m: units[m] for m in models}))
        ax.set_ylabel("lag-1 autocorrelation along lines" if metric == "lag1" else metric)
        ax.set_title("Shattering profile through depth (trained networks)")
        _legend(fig, ax)
    return fig, ax


def spectra_plot(grads: dict):
    """Mean periodogram of the gradient sequences (log-log), per (kind, depth), with white and brown noise."""
    with sns.axes_style("whitegrid"):
        fig, ax = _fig(figsize=(7.5, 4.2))
        pal = _palette(list(grads))
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
        _legend(fig, ax)
    return fig, ax


# --- amplification ----------------------------------------------------------------------------------------

def _unit_series(ax, d, m, metric, eps, pos, color, label, marker="o", ls="-"):
    s = d[(d["model"] == m) & (d["metric"] == metric)]
    s = s[s["eps"].isna()] if eps is None else s[s["eps"] == eps]
    s = s.assign(x=s["unit"].map(pos)).dropna(subset=["x"]).sort_values("x")
    if s.empty:
        return False
    ax.plot(s["x"], s["value"], ls, marker=marker, ms=3, color=color, label=label)
    ax.fill_between(s["x"], s["ci_low"], s["ci_high"], color=color, alpha=0.18, lw=0)
    return True


def amplify_kappa_plot(df: pd.DataFrame, units: dict[str, list[dict]]):
    """The verdict's measure: κ = (‖ΔF‖/‖F‖)/(‖δ‖/‖x‖) per unit, random δ (smallest ε, solid) and worst
    case (dashed), 95% CIs, residual networks and plain twins alike."""
    d = df[df["unit"] != "network"]
    e0 = d["eps"].dropna().min()
    models = list(dict.fromkeys(d["model"]))
    pal = _palette(models)
    with sns.axes_style("whitegrid"):
        fig, ax = _fig(figsize=(8.5, 4))
        for m in models:
            pos = unit_positions(units[m])
            _unit_series(ax, d, m, "kappa", e0, pos, pal[m], f"{m}: κ, random δ (ε = {e0:g})")
            _unit_series(ax, d, m, "kappa_worst", None, pos, pal[m], f"{m}: κ, worst-case δ", marker="^", ls="--")
        ax.set_yscale("log")
        _plain_log_formatter(ax)
        _stage_axis(ax, _n_stages({m: units[m] for m in models}))
        ax.set_ylabel("κ = (‖ΔF‖/‖F‖) / (‖δ‖/‖x‖)")
        ax.set_title("Relative sensitivity of each unit's branch (the differential-amplifier test)")
        _legend(fig, ax)
    return fig, ax


def amplify_gains_plot(df: pd.DataFrame, units: dict[str, list[dict]]):
    """Per-unit gains ‖Δout‖/‖Δin‖: the unit and its branch, for random (smallest ε) and worst-case
    directions, one panel each, 95% CIs."""
    d = df[df["unit"] != "network"]
    e0 = d["eps"].dropna().min()
    models = list(dict.fromkeys(d["model"]))
    pal = _palette(models)
    panels = [("random_gain_unit", e0, f"unit, random δ (ε = {e0:g})"), ("worst_gain_unit", None, "unit, worst case"),
              ("random_gain_branch", e0, f"branch F, random δ (ε = {e0:g})"),
              ("worst_gain_branch", None, "branch F, worst case")]
    n_st = _n_stages({m: units[m] for m in models})
    with sns.axes_style("whitegrid"):
        fig, axes = _fig(2, 2, figsize=(12, 6.5), sharey=True)
        for ax, (metric, eps, title) in zip(axes.ravel(), panels):
            for m in models:
                _unit_series(ax, d, m, metric, eps, unit_positions(units[m]), pal[m], m)
            ax.set_yscale("log")
            _plain_log_formatter(ax)
            _stage_axis(ax, n_st, "unit (by stage)")
            ax.set_ylabel("gain ‖Δout‖ / ‖Δin‖")
            ax.set_title(title, fontsize=10)
        _legend(fig, axes)
    return fig, axes


def amplify_cumulative_plot(df: pd.DataFrame, units: dict[str, list[dict]]):
    """End to end: gain from the image to each unit's output, and from each unit's input to the logits
    (random δ at the smallest ε, 95% CIs)."""
    d = df[df["unit"] != "network"]
    e0 = d["eps"].dropna().min()
    models = list(dict.fromkeys(d["model"]))
    pal = _palette(models)
    with sns.axes_style("whitegrid"):
        fig, axes = _fig(1, 2, figsize=(12, 4))
        for ax, metric, title, ylabel in (
                (axes[0], "gain_from_image", "from the image to each unit's output", "‖Δ unit output‖ / ‖δ image‖"),
                (axes[1], "gain_to_logits", "from each unit's input to the logits", "‖Δ logits‖ / ‖δ unit input‖")):
            for m in models:
                _unit_series(ax, d, m, metric, e0, unit_positions(units[m]), pal[m], m)
            ax.set_yscale("log")
            _plain_log_formatter(ax)
            _stage_axis(ax, _n_stages({m: units[m] for m in models}), "unit (by stage)")
            ax.set_ylabel(ylabel)
            ax.set_title(f"Gain {title} (ε = {e0:g})", fontsize=10)
        _legend(fig, axes)
    return fig, axes


def amplify_arithmetic_plot(df: pd.DataFrame):
    """Reading (a), arithmetic: (‖ΔF‖/‖F‖)/(‖Δy‖/‖y‖) against ‖y‖/‖F‖ per residual unit; points on the
    diagonal are the identity ratio = (‖ΔF‖/‖Δy‖)·‖y‖/‖F‖ with ‖ΔF‖ ≈ ‖Δy‖. Plain units have no shortcut,
    so no ratio: they are absent by definition."""
    d = df[df["unit"] != "network"]
    e0 = d["eps"].dropna().min()
    a = d[(d["metric"] == "amplifier_ratio") & (d["eps"] == e0)]
    b = d[d["metric"] == "output_branch_ratio"]
    both = a.merge(b, on=["model", "unit"], suffixes=("", "_yf"))
    models = list(dict.fromkeys(both["model"]))
    pal = _palette(models)
    with sns.axes_style("whitegrid"):
        fig, ax = _fig(figsize=(6.5, 5))
        for m in models:
            g = both[both["model"] == m]
            ax.errorbar(g["value_yf"], g["value"], yerr=[g["value"] - g["ci_low"], g["ci_high"] - g["value"]],
                        fmt="o", ms=4, capsize=2, color=pal[m], label=m)
        if len(both):
            lim = [min(both["value_yf"].min(), both["value"].min()) * 0.9,
                   max(both["value_yf"].max(), both["value"].max()) * 1.1]
            ax.plot(lim, lim, "--", color="black", lw=1, label="ratio = ‖y‖/‖F‖")
            ax.set_xscale("log")
            ax.set_yscale("log")
            _plain_log_formatter(ax, "x")
            _plain_log_formatter(ax, "y")
        ax.set_xlabel("‖y‖ / ‖F(x)‖ per residual unit")
        ax.set_ylabel(f"(‖ΔF‖/‖F‖) / (‖Δy‖/‖y‖), ε = {e0:g}")
        ax.set_title("The 'amplifier ratio' restates ‖y‖/‖F‖ (residual units only)")
        _legend(fig, ax)
    return fig, ax


# --- training, pruning -----------------------------------------------------------------------------------

def training_curves_plot(curves: pd.DataFrame):
    """He et al. Fig. 1: training (dashed) and test (solid) error per epoch, one panel per family; seeds
    of one network share its colour."""
    fams = [f for f in ("plain", "residual") if f in set(curves["family"])]
    with sns.axes_style("whitegrid"):
        fig, axes = _fig(1, len(fams), figsize=(6 * len(fams), 4), sharey=True, squeeze=False)
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
        _legend(fig, axes, title="dashed: training, solid: test")
    return fig, axes


def prune_plot(df: pd.DataFrame, units: dict[str, list[dict]]):
    """Gromov et al.: angular distance between the inputs of unit ℓ and unit ℓ + n, per start ℓ and n
    (95% CIs; hollow: ranges holding a non-deletable unit); ShortGPT's block influence per unit."""
    models = list(dict.fromkeys(df["model"]))
    ns = sorted(set(df[df["metric"] == "angular_distance"]["n"]))
    pal = _palette([f"{m}, n = {n}" for m in models for n in ns] + [f"{m}: block influence" for m in models])
    with sns.axes_style("whitegrid"):
        fig, axes = _fig(1, 2, figsize=(13, 4))
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
        n_st = _n_stages({m: units[m] for m in models})
        _stage_axis(axes[0], n_st, "first unit ℓ of the range (by stage)")
        _stage_axis(axes[1], n_st, "unit (by stage)")
        axes[0].set_ylabel("angular distance d(x_ℓ, x_ℓ+n)")
        axes[0].set_title("Gromov et al.: distance across n units", fontsize=10)
        axes[1].set_ylabel("1 − cos(x_in, x_out)")
        axes[1].set_title("ShortGPT block influence", fontsize=10)
        _legend(fig, axes, title="hollow: range not deletable")
    return fig, axes

"""Figures of the amplification study. Each function returns ``(fig, ax)``."""
from __future__ import annotations


import pandas as pd

from .base import (subplots, legend, n_stages, palette, plain_log_formatter, sns, stage_axis,
                   unit_positions)

__all__ = ['amplify_kappa_plot', 'amplify_gains_plot', 'amplify_cumulative_plot', 'amplify_arithmetic_plot']


def _rows(d: pd.DataFrame, model: str, metric: str, eps) -> pd.DataFrame:
    """One network's rows of one metric (``eps`` None: the rows without a perturbation size)."""
    s = d[(d["model"] == model) & (d["metric"] == metric)]
    return s[s["eps"].isna()] if eps is None else s[s["eps"] == eps]


def _series(ax, s: pd.DataFrame, pos: dict, **style) -> bool:
    """A per-unit line with its 95% CI band; ``style``: color, label and optionally marker and ls."""
    s = s.assign(x=s["unit"].map(pos)).dropna(subset=["x"]).sort_values("x")
    if s.empty:
        return False
    color = style["color"]
    ax.plot(s["x"], s["value"], style.get("ls", "-"), marker=style.get("marker", "o"), ms=3, color=color,
            label=style["label"])
    ax.fill_between(s["x"], s["ci_low"], s["ci_high"], color=color, alpha=0.18, lw=0)
    return True


def amplify_kappa_plot(df: pd.DataFrame, units: dict[str, list[dict]]):
    """The verdict's measure: κ = (‖ΔF‖/‖F‖)/(‖δ‖/‖x‖) per unit, random δ (smallest ε, solid) and worst
    case (dashed), 95% CIs, residual networks and plain twins alike."""
    d = df[df["unit"] != "network"]
    e0 = d["eps"].dropna().min()
    models = list(dict.fromkeys(d["model"]))
    pal = palette(models)
    with sns.axes_style("whitegrid"):
        fig, ax = subplots(figsize=(8.5, 4))
        for m in models:
            pos = unit_positions(units[m])
            _series(ax, _rows(d, m, "kappa", e0), pos, color=pal[m], label=f"{m}: κ, random δ (ε = {e0:g})")
            _series(ax, _rows(d, m, "kappa_worst", None), pos, color=pal[m], label=f"{m}: κ, worst-case δ",
                    marker="^", ls="--")
        ax.set_yscale("log")
        plain_log_formatter(ax)
        stage_axis(ax, n_stages({m: units[m] for m in models}))
        ax.set_ylabel("κ = (‖ΔF‖/‖F‖) / (‖δ‖/‖x‖)")
        ax.set_title("Relative sensitivity of each unit's branch (the differential-amplifier test)")
        legend(fig, ax)
    return fig, ax


def amplify_gains_plot(df: pd.DataFrame, units: dict[str, list[dict]]):
    """Per-unit gains ‖Δout‖/‖Δin‖: the unit and its branch, for random (smallest ε) and worst-case
    directions, one panel each, 95% CIs."""
    d = df[df["unit"] != "network"]
    e0 = d["eps"].dropna().min()
    models = list(dict.fromkeys(d["model"]))
    pal = palette(models)
    panels = [("random_gain_unit", e0, f"unit, random δ (ε = {e0:g})"), ("worst_gain_unit", None, "unit, worst case"),
              ("random_gain_branch", e0, f"branch F, random δ (ε = {e0:g})"),
              ("worst_gain_branch", None, "branch F, worst case")]
    n_st = n_stages({m: units[m] for m in models})
    with sns.axes_style("whitegrid"):
        fig, axes = subplots(2, 2, figsize=(12, 6.5), sharey=True)
        for ax, (metric, eps, title) in zip(axes.ravel(), panels):
            for m in models:
                _series(ax, _rows(d, m, metric, eps), unit_positions(units[m]), color=pal[m], label=m)
            ax.set_yscale("log")
            plain_log_formatter(ax)
            stage_axis(ax, n_st, "unit (by stage)")
            ax.set_ylabel("gain ‖Δout‖ / ‖Δin‖")
            ax.set_title(title, fontsize=10)
        legend(fig, axes)
    return fig, axes


def amplify_cumulative_plot(df: pd.DataFrame, units: dict[str, list[dict]]):
    """End to end: gain from the image to each unit's output, and from each unit's input to the logits
    (random δ at the smallest ε, 95% CIs)."""
    d = df[df["unit"] != "network"]
    e0 = d["eps"].dropna().min()
    models = list(dict.fromkeys(d["model"]))
    pal = palette(models)
    with sns.axes_style("whitegrid"):
        fig, axes = subplots(1, 2, figsize=(12, 4))
        for ax, metric, title, ylabel in (
                (axes[0], "gain_from_image", "from the image to each unit's output", "‖Δ unit output‖ / ‖δ image‖"),
                (axes[1], "gain_to_logits", "from each unit's input to the logits", "‖Δ logits‖ / ‖δ unit input‖")):
            for m in models:
                _series(ax, _rows(d, m, metric, e0), unit_positions(units[m]), color=pal[m], label=m)
            ax.set_yscale("log")
            plain_log_formatter(ax)
            stage_axis(ax, n_stages({m: units[m] for m in models}), "unit (by stage)")
            ax.set_ylabel(ylabel)
            ax.set_title(f"Gain {title} (ε = {e0:g})", fontsize=10)
        legend(fig, axes)
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
    pal = palette(models)
    with sns.axes_style("whitegrid"):
        fig, ax = subplots(figsize=(6.5, 5))
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
            plain_log_formatter(ax, "x")
            plain_log_formatter(ax, "y")
        ax.set_xlabel("‖y‖ / ‖F(x)‖ per residual unit")
        ax.set_ylabel(f"(‖ΔF‖/‖F‖) / (‖Δy‖/‖y‖), ε = {e0:g}")
        ax.set_title("The 'amplifier ratio' restates ‖y‖/‖F‖ (residual units only)")
        legend(fig, ax)
    return fig, ax

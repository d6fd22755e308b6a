"""Figures of lesions on language models. Each function returns ``(fig, ax)``, or None when the table holds
nothing to draw."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .base import legend, palette, sns, subplots

__all__ = ["lm_single_plot", "lm_painters_plot", "lm_random_k_plot", "lm_prune_plot", "lm_similarity_plot", "lm_identity_plot",
           "lm_lens_plot", "lm_lens_heatmap"]

_PART_STYLE = {"attn": ("o", "attention"), "mlp": ("s", "MLP"), "": ("D", "layer"), "layer": ("D", "whole layer")}


def _yerr(s: pd.DataFrame, col: str, lo: str, hi: str) -> tuple[np.ndarray, np.ndarray]:
    """The values of ``col`` and their error bars ``(2, n)`` down to ``lo`` and up to ``hi``."""
    y = s[col].to_numpy(float)
    return y, np.abs(np.vstack([y - s[lo].to_numpy(float), s[hi].to_numpy(float) - y]))


def _position(units: list[dict]) -> dict[str, float]:
    """Layer number of every unit and block (a sublayer at its layer's position ± 0.15)."""
    blocks = list(dict.fromkeys(u["block"] for u in units))
    pos = {b: float(i) for i, b in enumerate(blocks)}
    for u in units:
        off = {"attn": -0.15, "mlp": 0.15}.get(u["part"], 0.0)
        pos[u["name"]] = pos[u["block"]] + off
        for path, o in (("attn", -0.15), ("mlp", 0.15)):   # a parallel-residual layer's paths
            pos[f"{u['name']}:{path}"] = pos[u["block"]] + o
    return pos


def lm_single_plot(df: pd.DataFrame, units: dict):
    """Loss increase when one sublayer (attention, MLP) or one whole layer is deleted, by layer (95% CI over
    documents)."""
    g = df[(df["mode"] == "single") & df["delta_loss"].notna()]
    if g.empty:
        return None
    models = list(dict.fromkeys(g["model"]))
    pal = palette(models)
    with sns.axes_style("whitegrid"):
        fig, ax = subplots(figsize=(9, 4))
        for m in models:
            pos = _position(units.get(m, []))
            parts = {u["name"]: u["part"] for u in units.get(m, [])}
            t = g[g["model"] == m]
            kind = t["deleted"].map(lambda n: parts.get(n, "layer") if n in parts else
                                    n.rsplit(":", 1)[1] if ":" in n else "layer")
            for part, (marker, name) in _PART_STYLE.items():
                s = t[kind == part]
                if s.empty:
                    continue
                x = s["deleted"].map(pos).to_numpy(float)
                y, err = _yerr(s, "delta_loss", "delta_ci_low", "delta_ci_high")
                ax.errorbar(x, y, yerr=err, fmt=marker, ms=4, color=pal[m], mfc="none" if part == "layer" else pal[m],
                            capsize=2, lw=0.8, label=f"{m}: {name} deleted")
        ax.axhline(0, color="0.3", lw=0.8)
        ax.set_yscale("symlog", linthresh=0.01)
        ax.set_xlabel("layer (attention left of the layer's position, MLP right)")
        ax.set_ylabel("loss increase (nats/token)")
        ax.set_title("Deleting one sublayer or one layer of a language model")
        legend(fig, ax)
    return fig, ax


def lm_painters_plot(df: pd.DataFrame):
    """Loss increase of Painters' edits of the k middle layers, against k (95% CI over documents)."""
    g = df[df["mode"].isin(["skip", "parallel", "repeat", "middle-reversed"]) & df["delta_loss"].notna()].copy()
    if g.empty:
        return None
    g["edit"] = g["mode"] + g["deleted"].map(lambda s: " (" + s.split("(")[-1] if "(" in s else "")
    edits = list(dict.fromkeys(g["edit"]))
    pal = palette(edits)
    with sns.axes_style("whitegrid"):
        fig, ax = subplots(figsize=(7.5, 4))
        for (m, e), t in g.groupby(["model", "edit"], sort=False):
            t = t.sort_values("k")
            ax.plot(t["k"], t["delta_loss"], "-o", ms=3, color=pal[e], label=f"{m}: {e}")
            ax.fill_between(t["k"].astype(float), t["delta_ci_low"], t["delta_ci_high"], color=pal[e], alpha=0.15, lw=0)
        ax.set_yscale("symlog", linthresh=0.01)
        ax.set_xlabel("middle layers edited (k)")
        ax.set_ylabel("loss increase (nats/token)")
        ax.set_title("Painters' edits of the middle layers (Sun et al. 2024)")
        legend(fig, ax)
    return fig, ax


def lm_random_k_plot(df: pd.DataFrame):
    """Median loss increase after deleting k random units (band: interquartile range over the draws)."""
    g = df[(df["mode"] == "random-k") & df["delta_loss"].notna()]
    if g.empty:
        return None
    pal = palette(list(dict.fromkeys(g["model"])))
    with sns.axes_style("whitegrid"):
        fig, ax = subplots(figsize=(7, 4))
        for m, t in g.groupby("model", sort=False):
            q = t.groupby("k")["delta_loss"].quantile([0.25, 0.5, 0.75]).unstack()
            ax.plot(q.index, q[0.5], "-o", ms=3, color=pal[m], label=f"{m}: median")
            ax.fill_between(q.index.astype(float), q[0.25], q[0.75], color=pal[m], alpha=0.2, lw=0)
        ax.set_yscale("symlog", linthresh=0.01)
        ax.set_xlabel("units deleted at random (k)")
        ax.set_ylabel("loss increase (nats/token)")
        ax.set_title("Deleting k random units of a language model")
        legend(fig, ax)
    return fig, ax


def lm_prune_plot(judgment: pd.DataFrame):
    """Loss increase after pruning n layers as each rule chooses, against the median of random choices and the
    single-deletion oracle."""
    if judgment is None or judgment.empty:
        return None
    rules = list(dict.fromkeys(judgment["rule"]))
    pal = palette(rules + ["random (median)", "oracle (layers)"])
    with sns.axes_style("whitegrid"):
        fig, ax = subplots(figsize=(8, 4))
        ns = sorted(judgment["n"].unique())
        w = 0.8 / (len(rules) + 2)
        for j, rule in enumerate(rules):
            t = judgment[judgment["rule"] == rule].set_index("n").reindex(ns)
            x = np.arange(len(ns)) + (j - len(rules) / 2) * w
            y, err = _yerr(t, "delta_loss", "ci_low", "ci_high")
            ax.bar(x, y, w, yerr=err, color=pal[rule], capsize=2, label=rule)
        first = judgment.drop_duplicates("n").set_index("n").reindex(ns)
        for j, (col, name) in enumerate((("random_median", "random (median)"), ("oracle_layers", "oracle (layers)"))):
            x = np.arange(len(ns)) + (len(rules) + j - len(rules) / 2) * w
            ax.bar(x, first[col].to_numpy(float), w, color=pal[name], label=name, hatch="//" if j == 0 else None)
        ax.set_xticks(np.arange(len(ns)), [f"n = {n}" for n in ns])
        ax.set_yscale("symlog", linthresh=0.01)
        ax.set_ylabel("loss increase (nats/token)")
        ax.set_title("Pruning n layers: similarity rules against random choices and the oracle")
        legend(fig, ax)
    return fig, ax


def lm_similarity_plot(similarity: pd.DataFrame):
    """Each pruning rule's value per layer (sublayer for LLM-Drop) against the true loss increase of deleting it
    alone: one panel per rule."""
    if similarity is None or similarity.empty:
        return None
    rules = list(dict.fromkeys(similarity["rule"]))
    with sns.axes_style("whitegrid"):
        fig, axes = subplots(1, len(rules), figsize=(3.2 * len(rules), 3.4), squeeze=False)
        for ax, rule in zip(axes[0], rules):
            t = similarity[similarity["rule"] == rule]
            sc = ax.scatter(t["value"], t["delta_loss"], c=t["index"], cmap="viridis", s=14)
            ax.set_yscale("symlog", linthresh=0.01)
            ax.set_xlabel(f"{rule} value")
            ax.set_title(rule, fontsize=10)
        axes[0][0].set_ylabel("loss increase when deleted alone (nats)")
        fig.colorbar(sc, ax=axes[0].tolist(), label="layer / sublayer index")
    return fig, axes


def lm_identity_plot(table: pd.DataFrame, units: dict, metric: str = "branch_ratio"):
    """A per-unit identity measure of a language model by layer (attention left, MLP right; bars: 95% CI over
    documents)."""
    g = table[table["metric"] == metric]
    if g.empty:
        return None
    models = list(dict.fromkeys(g["model"]))
    pal = palette(models)
    with sns.axes_style("whitegrid"):
        fig, ax = subplots(figsize=(9, 3.8))
        for m in models:
            pos = _position(units.get(m, []))
            t = g[g["model"] == m]
            for part, (marker, name) in _PART_STYLE.items():
                s = t[t["part"] == part]
                if s.empty:
                    continue
                x = s["unit"].map(pos).to_numpy(float)
                y, err = _yerr(s, "value", "ci_low", "ci_high")
                ax.errorbar(x, y, yerr=err, fmt=marker, ms=4, color=pal[m], capsize=2, lw=0.8, label=f"{m}: {name}")
        if metric == "branch_ratio":
            ax.set_yscale("log")
        ax.set_xlabel("layer (attention left of the layer's position, MLP right)")
        ax.set_ylabel({"branch_ratio": "‖F(x)‖ / ‖x‖", "cos_in_out": "cos(x, x + F(x))"}.get(metric, metric))
        ax.set_title("How far each sublayer moves the residual stream")
        legend(fig, ax)
    return fig, ax


def lm_lens_plot(lens: pd.DataFrame):
    """The logit lens per layer: KL(output ‖ decoded stream) and top-1 agreement with the output (95% CI over
    documents)."""
    if lens is None or lens.empty:
        return None
    with sns.axes_style("whitegrid"):
        fig, axes = subplots(1, 2, figsize=(10, 3.6))
        pal = palette(list(dict.fromkeys(lens["model"])))
        for m, t in lens.groupby("model", sort=False):
            for ax, col, pre in ((axes[0], "kl", "kl"), (axes[1], "agreement", "agree")):
                ax.plot(t["layer"], t[col], "-o", ms=3, color=pal[m], label=m)
                ax.fill_between(t["layer"].astype(float), t[f"{pre}_ci_low"], t[f"{pre}_ci_high"], color=pal[m],
                                alpha=0.2, lw=0)
        axes[0].set_yscale("symlog", linthresh=0.1)
        axes[0].set_ylabel("KL(output ‖ layer) (nats)")
        axes[1].set_ylabel("top-1 agreement with the output")
        for ax in axes:
            ax.set_xlabel("residual stream before layer (last: the output)")
        axes[0].set_title("Logit lens: distance to the final prediction", fontsize=10)
        axes[1].set_title("Logit lens: same top-1 token", fontsize=10)
        legend(fig, axes[1])
    return fig, axes


def lm_lens_heatmap(positions: pd.DataFrame, metric: str = "kl"):
    """The logit lens's KL per layer (rows) and token position (columns), mean over windows."""
    if positions is None or positions.empty:
        return None
    t = positions[(positions["kind"] == "lens") & (positions["metric"] == metric)]
    if t.empty:
        return None
    m = t["model"].iloc[0]
    t = t[t["model"] == m]
    grid = t.pivot_table(index="name", columns="position", values="value", sort=False)
    with sns.axes_style("white"):
        fig, ax = subplots(figsize=(9, 4.5))
        img = ax.imshow(np.log10(grid.to_numpy(float) + 1e-3), aspect="auto", cmap="magma_r")
        ax.set_yticks(range(len(grid)), [f"{i}" if i % 5 == 0 or i == len(grid) - 1 else "" for i in range(len(grid))])
        ax.set_ylabel("residual stream before layer")
        ax.set_xlabel("token position in the window")
        ax.set_title(f"{m}: logit lens, log10 KL(output ‖ layer) by position")
        fig.colorbar(img, ax=ax, label="log10 KL (nats)")
    return fig, ax

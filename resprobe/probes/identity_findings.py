"""Summaries and findings (sentences computed from the numbers) of an identity table."""
from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd

from .. import fmt

__all__ = ["effective_depth", "overview", "stage_summary", "findings", "NEAR_IDENTITY"]


NEAR_IDENTITY = 0.3   # the default near-identity threshold of ‖F‖/‖S‖ (IdentityOptions.threshold)


def effective_depth(df: pd.DataFrame, threshold: float = NEAR_IDENTITY) -> dict:
    """Per model: units whose whole 95% CI of ‖F‖/‖S‖ lies above ``threshold`` (active: the effective
    depth), below it (near identity), or across it (undecided)."""
    out = {}
    for model, g in df[df["metric"] == "residual_ratio"].groupby("model", sort=False):
        active = g[g["ci_low"] > threshold]["unit"].tolist()
        near = g[g["ci_high"] < threshold]["unit"].tolist()
        undecided = g[~g["unit"].isin(active + near)]["unit"].tolist()
        out[str(model)] = dict(threshold=threshold, effective_depth=len(active), n_units=len(g), active_units=active,
                               near_identity_units=near, undecided_units=undecided)
    return out


def overview(df: pd.DataFrame) -> list[dict]:
    """Per model and metric: mean, median, min and max over units (layers for response_std)."""
    g = df.groupby(["model", "metric"], sort=False)["value"]
    s = g.agg(["mean", "median", "min", "max", "count"]).reset_index()
    return s.to_dict("records")


def stage_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Mean of each per-unit metric over the units of each stage (and the first block vs the rest)."""
    d = df[df["metric"] != "response_std"]
    g = d.groupby(["model", "stage", "metric"], sort=False)["value"]
    s = g.mean().rename("mean").to_frame()
    s["first_block"] = d[d["index_in_stage"] == 0].groupby(["model", "stage", "metric"], sort=False)["value"].mean()
    s["later_blocks"] = d[d["index_in_stage"] > 0].groupby(["model", "stage", "metric"], sort=False)["value"].mean()
    s["n_units"] = g.size()
    return s.reset_index()


def _runs(units: list[str], stages: dict[str, int], order: list[str]) -> list[list[str]]:
    """Group units into runs that are consecutive in forward order and within one stage."""
    pos = {b: i for i, b in enumerate(order)}
    runs: list[list[str]] = []
    for b in sorted(units, key=pos.get):
        if runs and pos[b] == pos[runs[-1][-1]] + 1 and stages[b] == stages[runs[-1][-1]]:
            runs[-1].append(b)
        else:
            runs.append([b])
    return runs


def _fmt_ci(v: float, lo: float, hi: float, nd: int = 3) -> str:
    return fmt.ci(v, lo, hi, nd)


def findings(df: pd.DataFrame, threshold: float = NEAR_IDENTITY, lesion: Optional[dict] = None,
             roles: Optional[dict] = None) -> list[str]:
    """Plain-language findings, each computed from ``df``; comparisons only where the CIs separate."""
    out = []
    eff = effective_depth(df, threshold)
    for model, e in eff.items():
        g = df[(df["model"] == model) & (df["metric"] == "residual_ratio")]
        stages = dict(zip(g["unit"], g["stage"]))
        order = g["unit"].tolist()
        vals = dict(zip(g["unit"], g["value"]))
        br = df[(df["model"] == model) & (df["metric"] == "branch_ratio")]["value"]
        out.append(f"**{model}**: effective depth {e['effective_depth']} of {e['n_units']} residual units (95% CI of "
                   f"‖F‖/‖S‖ above {threshold}); {len(e['near_identity_units'])} near identity (CI below), "
                   f"{len(e['undecided_units'])} undecided. ‖F‖/‖S‖ over units: median {np.median(list(vals.values())):.3f}, "
                   f"mean {np.mean(list(vals.values())):.3f}, range {min(vals.values()):.3f}–{max(vals.values()):.3f}"
                   + (f"; ‖F‖/‖x‖: median {br.median():.3f}, range {br.min():.3f}–{br.max():.3f}." if len(br) else "."))
        lows = dict(zip(g["unit"], g["ci_low"]))
        above = [u for u, v in vals.items() if lows[u] > 1]
        if above:
            out.append(f"{model}: in {len(above)} units the branch outweighs the shortcut (95% CI of ‖F‖/‖S‖ above "
                       "1): " + ", ".join(f"{u} {vals[u]:.2f}" for u in above) + ".")
        for run_ in _runs(e["near_identity_units"], stages, order):
            name = run_[0] if len(run_) == 1 else f"{run_[0]}–{run_[-1]}"
            out.append(f"{model}: unit{'s' if len(run_) > 1 else ''} {name}: ‖F‖/‖S‖ ≤ "
                       f"{max(vals[b] for b in run_):.3f}, CI below {threshold} — near identity.")
        out += _first_vs_later(df, model)
        gc = df[(df["model"] == model) & (df["metric"] == "grad_cosine")]
        if len(gc):
            out.append(f"{model}: cos(F(x), ∂L/∂x) is negative (95% CI below 0) in {int((gc['ci_high'] < 0).sum())} "
                       f"of {len(gc)} units, positive in {int((gc['ci_low'] > 0).sum())}; median {gc['value'].median():.3f}.")
        if lesion and model in lesion:
            le = lesion[model]
            out.append(f"{model}: deleting the {le['n_deleted']} near-identity units together changes the error from "
                       f"{le['baseline_error']:.4f} to {_fmt_ci(le['error'], le['ci_low'], le['ci_high'], 4)}.")
    rs = df[df["metric"] == "response_std"]
    if rs["model"].nunique() >= 1:
        stats = rs.groupby("model", sort=False)["value"].agg(["median", "mean", "count"])
        out.append("Response std (He et al. Fig. 7), median over layers: "
                   + "; ".join(f"{m} {r['median']:.3f} (mean {r['mean']:.3f}, {int(r['count'])} layers)"
                               for m, r in stats.iterrows()) + ".")
    return out


def _first_vs_later(df: pd.DataFrame, model: str) -> list[str]:
    """Per stage, the first block's ‖F‖/‖x‖ and ‖F‖/‖S‖ against the later blocks' (Jastrzebski: the first
    block of a stage changes the representation most), a ranking stated only where the CIs separate."""
    out = []
    for metric in ("branch_ratio", "residual_ratio"):
        g = df[(df["model"] == model) & (df["metric"] == metric)]
        if g.empty:
            continue
        for stage, s in g.groupby("stage"):
            first, later = s[s["index_in_stage"] == 0], s[s["index_in_stage"] > 0]
            if first.empty or later.empty:
                continue
            f = first.iloc[0]
            lmax, lmin = later["ci_high"].max(), later["ci_low"].min()
            if f["ci_low"] > lmax:
                rel = "larger than every later block's"
            elif f["ci_high"] < lmin:
                rel = "smaller than every later block's"
            else:
                rel = "not distinguishable from the later blocks' (CIs overlap)"
            label = "‖F‖/‖x‖" if metric == "branch_ratio" else "‖F‖/‖S‖"
            out.append(f"{model}, stage {int(stage) + 1}: first block {f['unit']} {label} "
                       f"{_fmt_ci(f['value'], f['ci_low'], f['ci_high'])}, {rel} "
                       f"(later blocks {later['value'].min():.3f}–{later['value'].max():.3f}).")
    return out

"""The identity-distance study: metrics for one or more models, CSV/JSON, plots, report.md/html with
findings computed from the numbers."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch.nn as nn

from ..io.data import Dataset
from ..probes.identity import METRIC_GROUPS, effective_depth, identity_profile, stage_summary
from .document import Document
from .plots import identity_metric_plot, response_std_plot, save_figure
from .tables import provenance, write_json, write_table

__all__ = ["identity_study", "identity_findings"]

METRIC_ORDER = ["residual_ratio", "relative_change", "cosine", "cka", "grad_cosine"]


def _runs(blocks: list[str], stages: dict[str, int], order: list[str]) -> list[list[str]]:
    """Group blocks into runs that are consecutive in forward order and within one stage."""
    pos = {b: i for i, b in enumerate(order)}
    runs: list[list[str]] = []
    for b in sorted(blocks, key=pos.get):
        if runs and pos[b] == pos[runs[-1][-1]] + 1 and stages[b] == stages[runs[-1][-1]]:
            runs[-1].append(b)
        else:
            runs.append([b])
    return runs


def identity_findings(df: pd.DataFrame, threshold: float = 0.3, lesion: Optional[dict] = None) -> list[str]:
    """Plain-language findings, each computed from ``df`` (never canned)."""
    out = []
    eff = effective_depth(df, threshold)
    for model, e in eff.items():
        g = df[(df["model"] == model) & (df["metric"] == "residual_ratio")]
        stages = dict(zip(g["block"], g["stage"]))
        order = g["block"].tolist()
        vals = dict(zip(g["block"], g["value"]))
        out.append(f"**{model}**: effective depth {e['effective_depth']} of {e['n_blocks']} blocks "
                   f"(mean ‖F(x)‖/‖S(x)‖ > {threshold}); median ratio {np.median(list(vals.values())):.3f}.")
        for run in _runs(e["near_identity_blocks"], stages, order):
            name = run[0] if len(run) == 1 else f"{run[0]}–{run[-1]}"
            hi = max(vals[b] for b in run)
            out.append(f"{model}: block{'s' if len(run) > 1 else ''} {name}: ‖F‖/‖S‖ ≤ {hi:.3f} (≤ {threshold}) — "
                       "near identity.")
        ss = stage_summary(df[df["model"] == model])
        r = ss[ss["metric"] == "residual_ratio"]
        for _, row in r.iterrows():
            if row["n_blocks"] > 1 and row["later_blocks"] == row["later_blocks"]:
                rel = "larger" if row["first_block"] > row["later_blocks"] else "smaller"
                out.append(f"{model}, stage {int(row['stage'])}: first block ‖F‖/‖S‖ = {row['first_block']:.3f}, "
                           f"{rel} than the later blocks' mean {row['later_blocks']:.3f}.")
        gc = df[(df["model"] == model) & (df["metric"] == "grad_cosine")]
        if len(gc):
            neg = gc[gc["ci_high"] < 0]
            pos = gc[gc["ci_low"] > 0]
            out.append(f"{model}: cos(F(x), ∂L/∂x) is negative (95% CI below 0) in {len(neg)} of {len(gc)} blocks, "
                       f"positive in {len(pos)}; median {gc['value'].median():.3f}.")
        if lesion and model in lesion:
            le = lesion[model]
            out.append(f"{model}: deleting the {le['n_deleted']} near-identity blocks together changes the error from "
                       f"{le['baseline_error']:.4f} to {le['error']:.4f} (95% CI {le['ci_low']:.4f}–{le['ci_high']:.4f}).")
    rs = df[df["metric"] == "response_std"]
    if rs["model"].nunique() > 1:
        stats = rs.groupby("model", sort=False)["value"].agg(["median", "mean", "count"])
        ordered = stats.sort_values("count")
        desc = "; ".join(f"{m} ({int(r['count'])} layers): median {r['median']:.3f}, mean {r['mean']:.3f}"
                         for m, r in ordered.iterrows())
        shallow, deep = ordered.index[0], ordered.index[-1]
        if ordered.loc[deep, "count"] > ordered.loc[shallow, "count"]:
            smaller = ordered.loc[deep, "median"] < ordered.loc[shallow, "median"]
            out.append(f"Response std (He et al. Fig. 7): {desc}. The deeper {deep} has a "
                       f"{'smaller' if smaller else 'larger'} median response std than {shallow} — "
                       f"{'as' if smaller else 'unlike'} He et al. report.")
        else:
            out.append(f"Response std (He et al. Fig. 7): {desc}.")
        for cnt, grp in ordered.groupby("count", sort=False):  # twins: same number of 3x3 layers
            if len(grp) > 1:
                lo_m = grp["median"].idxmin()
                others = ", ".join(f"{m} {r['median']:.3f}" for m, r in grp.iterrows() if m != lo_m)
                out.append(f"Among the {int(cnt)}-layer nets, {lo_m} has the smallest median response std "
                           f"({grp.loc[lo_m, 'median']:.3f}; {others}).")
        rr = df[df["metric"] == "residual_ratio"].groupby("model", sort=False)["value"].median()
        if shallow in rr and deep in rr and shallow != deep and ordered.loc[deep, "count"] > ordered.loc[shallow, "count"]:
            out.append(f"Median ‖F‖/‖S‖: {deep} {rr[deep]:.3f} vs {shallow} {rr[shallow]:.3f} "
                       f"({'smaller' if rr[deep] < rr[shallow] else 'larger'} in the deeper net).")
    return out


def identity_study(models: Sequence[tuple[str, nn.Module, dict]], data: Dataset, batch_size: int = 256,
                   normalize: str = "none", device="cpu", grad: bool = False, threshold: float = 0.3,
                   lesion_check: bool = False, seed: int = 0, n_boot: int = 1000, cka_minibatch: int = 32,
                   out: Optional[str | Path] = None, progress: bool = True,
                   metrics: Sequence[str] = METRIC_GROUPS) -> pd.DataFrame:
    """Identity metrics for each ``(label, model, provenance)``; with ``out`` writes identity.csv,
    identity.json, plots and report.md/report.html. Returns the long DataFrame."""
    t0 = time.time()
    frames = [identity_profile(m, data, label, batch_size, normalize, device, grad, cka_minibatch, seed, n_boot,
                               progress, metrics) for label, m, _ in models]
    df = pd.concat(frames, ignore_index=True)
    if out is None:
        return df
    out = Path(out)
    lesion = {}
    if lesion_check:
        from ..probes.lesion import run_lesion
        eff = effective_depth(df, threshold)
        for label, m, _ in models:
            near = eff.get(label, {}).get("near_identity_blocks", [])
            if near:
                ld = run_lesion(m, data, "set", label, blocks=near, seed=seed, batch_size=batch_size,
                                normalize=normalize, device=device, progress=False)
                base, row = ld[ld["mode"] == "baseline"].iloc[0], ld[ld["mode"] == "set"].iloc[0]
                lesion[label] = dict(n_deleted=len(near), baseline_error=float(base["error"]),
                                     error=float(row["error"]), ci_low=float(row["ci_low"]),
                                     ci_high=float(row["ci_high"]))
    write_table(df, out / "identity.csv")
    findings = identity_findings(df, threshold, lesion)
    images = []
    for metric in METRIC_ORDER:
        if (df["metric"] == metric).any():
            fig, _ = identity_metric_plot(df, metric, threshold if metric == "residual_ratio" else None)
            images.append((save_figure(fig, out / f"identity_{metric}"), metric))
    if (df["metric"] == "response_std").any():
        fig, _ = response_std_plot(df)
        images.append((save_figure(fig, out / "response_std"), "response_std"))
    summ = stage_summary(df)
    prov = provenance([dict(p, label=lab) for lab, _, p in models], data.describe(), seed, str(device),
                      time.time() - t0, normalize, probe="identity", grad=grad, threshold=threshold,
                      cka_minibatch=cka_minibatch, n_boot=n_boot, batch_size=batch_size)
    write_json(dict(provenance=prov, effective_depth=effective_depth(df, threshold), lesion_check=lesion,
                    stage_summary=summ.to_dict("records"), findings=findings,
                    files=[p.name for ps, _ in images for p in ps]), out / "identity.json")
    doc = Document("resprobe: how close is each residual block to the identity?")
    doc.paragraph(f"Data: `{data.spec}` [{data.split}], {len(data)} images, normalization `{normalize}`; models: "
                  + ", ".join(f"`{lab}` ({p.get('model')}, weights sha256 {str(p.get('weights_sha256'))[:12]})"
                              for lab, _, p in models) + f". Wall time {time.time() - t0:.1f} s.")
    doc.heading("Findings")
    doc.bullets(findings)
    doc.heading("Per-block metrics")
    wide = df[df["metric"] != "response_std"].pivot_table(index=["model", "block"], columns="metric", values="value",
                                                          sort=False).reset_index()
    doc.table(wide[[c for c in ["model", "block"] + METRIC_ORDER if c in wide.columns]])
    doc.heading("Stage summaries")
    doc.table(summ)
    doc.heading("Plots")
    for paths, cap in images:
        doc.image(paths[0], cap)
    doc.write(out, "report")
    return df

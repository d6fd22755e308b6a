"""Summaries and findings (sentences computed from the numbers) of a lesion table."""
from __future__ import annotations

import pandas as pd

from .. import fmt
from ..metrics.stats import holm
from ..verdict import Role
from .lesion_verdicts import core_units, relative_increases

__all__ = ["summarize", "findings"]


def summarize(table: pd.DataFrame, units: dict[str, list[dict]]) -> dict:
    """Per model: baseline error, median and worst single deletion, downsampling units, random-k and
    reorder medians, single deletions that change the error significantly (exact McNemar, Holm)."""
    out = {}
    for model, g in table.groupby("model", sort=False):
        s: dict = {}
        base = g[g["mode"] == "baseline"]
        if len(base):
            s["baseline_error"] = float(base["error"].iloc[0])
        single = g[(g["mode"] == "single") & g["error"].notna()]
        tab = units.get(model, [])
        if len(single):
            worst = single.loc[single["error"].idxmax()]
            s["worst_unit"] = dict(unit=worst["deleted"], error=float(worst["error"]))
            core = single[single["deleted"].isin(core_units(tab))]
            s["median_single_deletion_error"] = float(core["error"].median()) if len(core) else None
            ds = {u["name"] for u in tab if u["downsample"]}
            s["downsampling_units"] = {r["deleted"]: float(r["error"]) for _, r in single.iterrows()
                                       if r["deleted"] in ds}
            p = holm(single["p_mcnemar"].fillna(1.0).to_numpy())
            sig = single.assign(p_holm=p)[p < 0.05]
            s["significant_single_deletions"] = {
                r["deleted"]: dict(error=float(r["error"]), p_holm=float(r["p_holm"]),
                                   direction="raises" if r["n_broken"] > r["n_fixed"] else "lowers")
                for _, r in sig.iterrows()}
        for mode, key in (("random-k", "random_k_median_error"), ("reorder", "reorder_median_error_by_swaps"),
                          ("prune", "pruned_range_error")):
            m = g[g["mode"] == mode]
            if len(m):
                s[key] = {int(k): float(v) for k, v in m.groupby("k")["error"].median().items()}
        out[str(model)] = s
    return out


def _worst(table: pd.DataFrame, model: str) -> str:
    """The costliest single deletion, ranked against the next only where the CIs separate them."""
    g = table[(table["model"] == model) & (table["mode"] == "single") & table["error"].notna()]
    g = g.sort_values("error", ascending=False)
    a = g.iloc[0]
    text = f"costliest single deletion {a['deleted']} {fmt.ci(a['error'], a['ci_low'], a['ci_high'], 4)}"
    if len(g) > 1:
        b = g.iloc[1]
        text += (f", above the next ({b['deleted']} {b['error']:.4f}, CIs separate)" if a["ci_low"] > b["ci_high"]
                 else f", not distinguishable from {b['deleted']} {fmt.ci(b['error'], b['ci_low'], b['ci_high'], 4)}")
    return text


def findings(table: pd.DataFrame, units: dict[str, list[dict]], roles: dict[str, Role]) -> list[str]:
    out = []
    summ = summarize(table, units)
    for model, s in summ.items():
        if "baseline_error" not in s:
            continue
        b, inc = relative_increases(table, model, units[model])
        line = f"{model}: intact error {s['baseline_error']:.4f}"
        if s.get("median_single_deletion_error") is not None:
            line += (f"; median single deletion {s['median_single_deletion_error']:.4f} (median relative increase "
                     f"{fmt.num(inc.median())} over {len(inc)} non-downsampling units)")
        if "worst_unit" in s:
            line += "; " + _worst(table, model)
        out.append(line + ".")
        sig = s.get("significant_single_deletions", {})
        lowers = [u for u, d in sig.items() if d["direction"] == "lowers"]
        if "significant_single_deletions" in s:
            out.append(f"{model}: {len(sig)} single deletions change the error significantly (exact McNemar test "
                       f"against the intact network, Holm-corrected p < 0.05); "
                       + (f"{len(lowers)} lower it ({', '.join(lowers)})." if lowers else "none lowers it."))
        if "random_k_median_error" in s:
            out.append(f"{model}: median error after k random deletions: "
                       + ", ".join(f"k={k}: {v:.3f}" for k, v in s["random_k_median_error"].items()) + ".")
        if "pruned_range_error" in s:
            rk = s.get("random_k_median_error", {})
            out.append(f"{model}: deleting the most similar consecutive range of k units: "
                       + ", ".join(f"k={k}: {v:.3f} (random k: median {rk.get(k, float('nan')):.3f})"
                                   for k, v in s["pruned_range_error"].items()) + ".")
    return out

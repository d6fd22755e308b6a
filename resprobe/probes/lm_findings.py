"""What a language-model lesion table says, in numbers: the intact loss, the deletions that cost most and least,
the random-k curve and Painters' edits (descriptions, not verdicts)."""
from __future__ import annotations

import pandas as pd

__all__ = ["summarize", "findings"]


def _ci(r) -> str:
    return f"{r['delta_loss']:+.3f} [{r['delta_ci_low']:+.3f}, {r['delta_ci_high']:+.3f}]"


def summarize(table: pd.DataFrame, units: dict) -> dict:
    out = {}
    for label, t in table.groupby("model", sort=False):
        base = t[t["mode"] == "baseline"]
        single = t[(t["mode"] == "single") & t["delta_loss"].notna()]
        out[label] = dict(intact_loss=float(base["loss"].iloc[0]) if len(base) else None,
                          n_single=int(len(single)),
                          worst_single=single.loc[single["delta_loss"].idxmax(), "deleted"] if len(single) else None,
                          max_delta=float(single["delta_loss"].max()) if len(single) else None,
                          n_units=len(units.get(label, [])))
    return out


def findings(table: pd.DataFrame, units: dict, small: float = 0.1) -> list[str]:
    """Lines of numbers: the intact loss; how many single deletions cost less than ``small`` nats (whole CI
    below it) and the three that cost most; each Painters edit's loss increase by k; random-k medians."""
    out = []
    for label, t in table.groupby("model", sort=False):
        base = t[t["mode"] == "baseline"]
        if len(base) and pd.notna(base["loss"].iloc[0]):
            b = base.iloc[0]
            out.append(f"{label}: intact loss {b['loss']:.3f} nats/token [{b['loss_ci_low']:.3f}, "
                       f"{b['loss_ci_high']:.3f}] (perplexity {b['perplexity']:.1f}) on {int(b['n_windows'])} "
                       f"windows from {int(b['n_documents'])} documents (95% CIs resample documents)")
        single = t[(t["mode"] == "single") & t["delta_loss"].notna()]
        if len(single):
            cheap = int((single["delta_ci_high"] < small).sum())
            worst = single.sort_values("delta_loss", ascending=False).head(3)
            out.append(f"{label}: {cheap} of {len(single)} single deletions cost less than {small} nats (whole CI "
                       f"below); the costliest: " + "; ".join(f"{r['deleted']} {_ci(r)}" for _, r in worst.iterrows()))
        for mode in ("skip", "parallel", "repeat", "middle-reversed"):
            m = t[(t["mode"] == mode) & t["delta_loss"].notna()]
            if len(m):
                out.append(f"{label}: {mode} of the middle blocks — loss increase by k: " + "; ".join(
                    f"k={int(r['k'])}{' ' + r['deleted'].split('(')[-1].rstrip(')') if mode == 'parallel' else ''} "
                    f"{r['delta_loss']:+.3f}" for _, r in m.iterrows()))
        rk = t[(t["mode"] == "random-k") & t["delta_loss"].notna()]
        if len(rk):
            med = rk.groupby("k")["delta_loss"].median()
            out.append(f"{label}: random-k deletions, median loss increase by k: "
                       + "; ".join(f"k={int(k)} {v:+.3f}" for k, v in med.items()))
    return out


def pruning_findings(correlations: pd.DataFrame, judgment: pd.DataFrame) -> list[str]:
    """Does each pruning rule's ranking predict the damage, and does pruning by it beat random choices?"""
    out = []
    for _, r in correlations.iterrows():
        out.append(f"{r['model']}: {r['rule']} ranking vs the true single-deletion loss increase of the "
                   f"{r['items']}: Spearman {r['spearman']:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}] over "
                   f"{int(r['n_items'])} {r['items']}")
    for _, r in judgment.iterrows():
        rand = "" if r["random_median"] is None or pd.isna(r["random_median"]) else (
            f"; random {int(r['n_random'])} draws: median {r['random_median']:+.3f}, "
            f"{r['random_better']:.0%} of them better")
        out.append(f"{r['model']}: pruning {int(r['n'])} layer(s) by {r['rule']}: loss {r['delta_loss']:+.3f} "
                   f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]{rand}; oracle {r['oracle_layers']:+.3f} (layers), "
                   f"{r['oracle_sublayers']:+.3f} ({2 * int(r['n'])} sublayers)")
    return out


def identity_findings(table: pd.DataFrame, lens: pd.DataFrame) -> list[str]:
    """Closeness to the identity per unit kind, and the layer from which the logit lens agrees with the output."""
    out = []
    for label, t in table.groupby("model", sort=False):
        r = t[t["metric"] == "branch_ratio"]
        if r.empty:
            continue
        by = r.groupby("part")["value"].median()
        lo, hi = r.loc[r["value"].idxmin()], r.loc[r["value"].idxmax()]
        out.append(f"{label}: ‖F(x)‖/‖x‖ median " + ", ".join(f"{p or 'unit'} {v:.3f}" for p, v in by.items())
                   + f"; smallest {lo['unit']} {lo['value']:.3f} [{lo['ci_low']:.3f}, {lo['ci_high']:.3f}], largest "
                   f"{hi['unit']} {hi['value']:.3f} [{hi['ci_low']:.3f}, {hi['ci_high']:.3f}]")
        near = int((r["ci_high"] < 0.3).sum())
        out.append(f"{label}: {near} of {len(r)} units have ‖F(x)‖/‖x‖ below 0.3 with the whole CI (near the identity)")
    for label, t in lens.groupby("model", sort=False):
        t = t[t["stream"] != "output"]
        half = t[t["agreement"] >= 0.5]
        first = f"layer {int(half['layer'].iloc[0])}" if len(half) else "no layer"
        out.append(f"{label}: logit lens — the top-1 of the decoded stream agrees with the output's on half the tokens "
                   f"from {first} on (of {len(t)}); KL(output ‖ layer) " + ", ".join(
                       f"{int(r['layer'])}: {r['kl']:.2f}" for _, r in t.iloc[::max(1, len(t) // 6)].iterrows()))
    return out

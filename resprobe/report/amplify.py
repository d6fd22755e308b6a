"""The amplification study: CSV, JSON with a verdict computed from the numbers, plots."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from ..probes.amplify import amplification_profile
from .plots import amplify_plots, save_figure
from .tables import provenance, write_json, write_table

__all__ = ["amplify_study", "amplify_verdict"]


def amplify_verdict(df: pd.DataFrame, plain_models: Sequence[str] = ()) -> dict:
    """Per model: median gains and amplifier ratios over blocks; residual vs plain; depth trend."""
    e0 = df["eps"].dropna().min()
    out: dict = {"eps_used": float(e0) if e0 == e0 else None, "models": {}, "statements": []}
    for m, g in df[df["block"] != "network"].groupby("model", sort=False):
        def med(metric, eps=e0):
            s = g[(g["metric"] == metric) & ((g["eps"] == eps) if eps is not None else g["eps"].isna())]
            return (float(s["value"].median()) if len(s) else None), s
        wb, _ = med("worst_gain_block", None)
        wf, _ = med("worst_gain_branch", None)
        rb, _ = med("random_gain_block")
        ar, ars = med("amplifier_ratio")
        war, wars = med("weight_amplifier_ratio")
        info = dict(median_worst_gain_block=wb, median_worst_gain_branch=wf, median_random_gain_block=rb,
                    median_amplifier_ratio=ar, median_weight_amplifier_ratio=war)
        if len(ars) > 2:
            vals = ars["value"].to_numpy()
            # a constant profile has no rank correlation: nan, without scipy's warning
            rho = spearmanr(np.arange(len(ars)), vals).statistic if np.ptp(vals) > 0 else float("nan")
            info.update(blocks_amplifier_ratio_above_1=int((ars["ci_low"] > 1).sum()),
                        blocks_amplifier_ratio_below_1=int((ars["ci_high"] < 1).sum()), n_blocks=len(ars),
                        amplifier_ratio_depth_spearman=float(rho))
        if len(wars):
            info.update(blocks_weight_ratio_above_1=int((wars["ci_low"] > 1).sum()))
        out["models"][str(m)] = info
        if ar is not None:
            out["statements"].append(
                f"{m}: input perturbations change the residual branch relatively "
                f"{'more' if ar > 1 else 'less'} than the block output (median (‖ΔF‖/‖F‖)/(‖Δy‖/‖y‖) = {ar:.3f}; "
                f"{info.get('blocks_amplifier_ratio_above_1', 0)} of {info.get('n_blocks', 0)} blocks with CI above 1, "
                f"{info.get('blocks_amplifier_ratio_below_1', 0)} below); the ratio's Spearman correlation with block "
                f"index is {info.get('amplifier_ratio_depth_spearman', float('nan')):.2f}.")
        if war is not None:
            out["statements"].append(
                f"{m}: weight perturbations change F relatively {'more' if war > 1 else 'less'} than y "
                f"(median ratio {war:.3f}; {info.get('blocks_weight_ratio_above_1', 0)} blocks with CI above 1).")
        if wb is not None:
            def fmt(v):
                return "n/a" if v is None else f"{v:.3f}"
            out["statements"].append(f"{m}: median worst-case block gain {fmt(wb)}, branch {fmt(wf)}; "
                                     f"median random block gain {fmt(rb)} at ε = {e0:g}.")
    res = [m for m in out["models"] if m not in plain_models]
    for p in plain_models:
        for r in res:
            a, b = out["models"][r]["median_worst_gain_block"], out["models"][p]["median_worst_gain_block"]
            if a is not None and b is not None:
                out["statements"].append(
                    f"Residual vs plain: {r}'s blocks amplify worst-case perturbations "
                    f"{'more' if a > b else 'less'} than {p}'s (median spectral norm {a:.3f} vs {b:.3f}).")
    ratios = [v["median_amplifier_ratio"] for m, v in out["models"].items() if m in res and v["median_amplifier_ratio"]]
    if ratios:
        out["verdict"] = ("supported" if min(ratios) > 1 else "not supported" if max(ratios) < 1 else "inconclusive")
        out["criterion"] = ("the differential-amplifier reading is supported when every residual model's median "
                            "amplifier ratio (‖ΔF‖/‖F‖)/(‖Δy‖/‖y‖) for input perturbations exceeds 1, not supported "
                            "when every one is below 1, inconclusive otherwise")
    return out


def amplify_study(models, data, eps: Sequence[float] = (1e-4, 1e-3, 1e-2), power_iters: int = 10,
                  batch_size: int = 128, normalize: str = "none", device="cpu", seed: int = 0,
                  out: Optional[str | Path] = None, progress: bool = True) -> pd.DataFrame:
    from ..anatomy import anatomy
    t0 = time.time()
    frames, timings, plain = [], {}, []
    for label, model, _ in models:
        df, timing = amplification_profile(model, data, label, eps, power_iters, batch_size, normalize, device,
                                           seed, progress=progress)
        frames.append(df)
        timings[label] = timing
        if not any(b.residual for b in anatomy(model)):
            plain.append(label)
    df = pd.concat(frames, ignore_index=True)
    if out is None:
        return df
    out = Path(out)
    write_table(df, out / "amplify.csv")
    verdict = amplify_verdict(df, plain)
    files = []
    for name, (fig, _) in amplify_plots(df).items():
        files += save_figure(fig, out / f"amplify_{name}")
    prov = provenance([dict(p, label=lab) for lab, _, p in models], data.describe(), seed, str(device),
                      time.time() - t0, normalize, probe="amplify", eps=list(eps), power_iters=power_iters,
                      batch_size=batch_size)
    write_json(dict(provenance=prov, verdict=verdict, timing=timings, files=[p.name for p in files]),
               out / "amplify.json")
    return df

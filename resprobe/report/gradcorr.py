"""The synthetic shattered-gradients study: sweep, CSV/JSON with fits, Fig. 1–2 style plots."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from ..metrics.signal import correlation_matrix
from ..probes.gradcorr import KINDS, fits, grid, synthetic_sweep
from .plots import correlation_heatmaps_plot, gradient_traces_plot, lag1_vs_depth_plot, save_figure, spectra_plot
from .tables import write_json, write_table

__all__ = ["gradcorr_synthetic_study"]


def _pick(grads: dict, kind: str, depth: int):
    keys = [k for k in grads if k[0] == kind]
    if not keys:
        return None
    return min(keys, key=lambda k: abs(k[1] - depth))


def gradcorr_synthetic_study(kinds: Sequence[str] = KINDS, depths: Sequence[int] = (1, 2, 4, 8, 16, 24, 32, 50),
                             seeds: int = 20, width: int = 200, points: int = 256, beta: float = 0.1, seed: int = 0,
                             out: Optional[str | Path] = None, progress: bool = True) -> pd.DataFrame:
    t0 = time.time()
    df, grads = synthetic_sweep(kinds, depths, seeds, width, points, beta, seed, progress=progress)
    if out is None:
        return df
    out = Path(out)
    write_table(df, out / "gradcorr.csv")
    f = fits(df)
    # Fig. 1: 1-layer feedforward, deep BN feedforward, deep BN ResNet, beside brown and white noise
    wanted = [("ff", 1), ("ff-bn", 24), ("res-bn", 50)]
    shown = {}
    for kind, depth in wanted:
        k = _pick(grads, kind, depth)
        if k is not None:
            shown[k] = grads[k]
    shown[("brown-noise", 0)] = grads[("brown-noise", 0)]
    shown[("white-noise", 0)] = grads[("white-noise", 0)]
    files = []
    files += save_figure(gradient_traces_plot({k: g[0] for k, g in shown.items()}, grid(points))[0],
                         out / "gradcorr_traces")
    files += save_figure(correlation_heatmaps_plot({k: correlation_matrix(g) for k, g in shown.items()})[0],
                         out / "gradcorr_covariance")
    files += save_figure(lag1_vs_depth_plot(df, f)[0], out / "gradcorr_lag1_vs_depth")
    files += save_figure(spectra_plot(shown)[0], out / "gradcorr_spectra")
    from ..api import versions
    meta = dict(provenance=dict(probe="gradcorr synthetic", kinds=list(kinds), depths=list(depths), seeds=seeds,
                                width=width, points=points, input_range=[-2.0, 2.0], beta=beta, seed=seed,
                                batchnorm="statistics computed on the grid, then held constant (eval mode) "
                                          "when differentiating",
                                init="He (kaiming normal) for ReLU layers; ff-ll: orthogonal W0 in [W0, -W0]",
                                versions=versions(), wall_time_s=round(time.time() - t0, 3)),
                fits=f, paper=dict(ff_bn="2^-L (log2 slope -1 per layer)", res_bn="L^-1/2 (log-log slope -0.5)"),
                files=[p.name for p in files])
    write_json(meta, out / "gradcorr.json")
    return df


def gradcorr_trained_findings(df: pd.DataFrame) -> list[str]:
    out = []
    agg = df[(df["seed"] == "all") & (df["metric"] == "lag1")]
    for m, g in agg.groupby("model", sort=False):
        inp = g[g["layer"] == "input"].iloc[0]
        blocks = g[g["layer"] != "input"]
        lo, hi = blocks.loc[blocks["value"].idxmin()], blocks.loc[blocks["value"].idxmax()]
        out.append(f"{m}: lag-1 autocorrelation of the input gradient along the lines {inp['value']:.3f} "
                   f"(95% CI {inp['ci_low']:.3f}–{inp['ci_high']:.3f}); at block inputs from {lo['value']:.3f} "
                   f"({lo['layer']}) to {hi['value']:.3f} ({hi['layer']}).")
    if agg["model"].nunique() > 1:
        inp = agg[agg["layer"] == "input"].set_index("model")["value"]
        best, worst = inp.idxmax(), inp.idxmin()
        out.append(f"Input gradients are most correlated along the lines for {best} ({inp[best]:.3f}) and least "
                   f"for {worst} ({inp[worst]:.3f}).")
    return out


def gradcorr_trained_study(models, data, lines: int = 8, points: int = 256, mode: str = "direction",
                           span: float = 0.1, target: str = "loss", seed: int = 0, normalize: str = "none",
                           device="cpu", out: Optional[str | Path] = None, progress: bool = True) -> pd.DataFrame:
    from ..probes.gradcorr import trained_profile
    from .plots import block_profile_plot
    from .tables import provenance
    t0 = time.time()
    frames, traces = [], {}
    for label, model, _ in models:
        df, tr = trained_profile(model, data, label, lines, points, mode, span, target, seed, normalize, device,
                                 progress=progress)
        frames.append(df)
        traces.update(tr)
    df = pd.concat(frames, ignore_index=True)
    if out is None:
        return df
    out = Path(out)
    write_table(df, out / "gradcorr.csv")
    files = save_figure(block_profile_plot(df)[0], out / "gradcorr_block_profile")
    tvals = np.arange(points) / points
    files += save_figure(gradient_traces_plot({(m, 0): g for m, g in traces.items()}, tvals)[0],
                         out / "gradcorr_traces")
    prov = provenance([dict(p, label=lab) for lab, _, p in models], data.describe(), seed, str(device),
                      time.time() - t0, normalize, probe="gradcorr trained", lines=lines, points=points,
                      line_mode=mode, span=span, target=target,
                      statistic="lag-1 autocorrelation of the gradient vectors along each line: "
                                "sum_t <d_t, d_t+1> / sum_t |d_t|^2, d_t = g_t - mean_t g")
    write_json(dict(provenance=prov, findings=gradcorr_trained_findings(df), files=[p.name for p in files]),
               out / "gradcorr.json")
    return df

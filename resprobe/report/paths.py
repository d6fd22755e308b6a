"""The path-length study: distribution, gradient per path length, effective range, graph export, plots."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterable, Optional, Sequence

import networkx as nx
import pandas as pd
import torch.nn as nn

from ..anatomy import anatomy
from ..io.data import Dataset
from ..probes.paths import effective_range, gradient_per_path_length, unraveled_graph
from .plots import paths_plots, save_figure
from .tables import provenance, write_json, write_table

__all__ = ["paths_study", "summarize_paths"]


def summarize_paths(df: pd.DataFrame, share: float = 0.9) -> dict:
    """Per model: the shortest path-length range carrying ``share`` of the total gradient, and the
    fraction of all paths it holds (Veit et al.: 5–17 of 54 blocks, 0.45% of paths, ResNet-110)."""
    out = {}
    for m, g in df.groupby("model", sort=False):
        g = g.sort_values("k")
        if list(g["k"]) != list(range(len(g))):
            out[str(m)] = dict(note="effective range needs every k from 0 to n (use --k 0:n)")
            continue
        lo, hi = effective_range(g["total_grad"].tolist(), share)
        n = len(g) - 1
        in_range = int(g[(g["k"] >= lo) & (g["k"] <= hi)]["n_paths"].sum())
        peak = int(g.loc[g["total_grad"].idxmax(), "k"])
        out[str(m)] = dict(n_blocks=n, share=share, range=[lo, hi], paths_in_range=in_range,
                           fraction_of_paths=in_range / 2 ** n, peak_k=peak,
                           mean_path_length=n / 2)
    return out


def paths_study(models: Sequence[tuple[str, nn.Module, dict]], data: Dataset, ks: Optional[Iterable[int]] = None,
                samples: int = 20, seed: int = 0, batch_size: int = 64, normalize: str = "none", device="cpu",
                share: float = 0.9, out: Optional[str | Path] = None, progress: bool = True) -> pd.DataFrame:
    t0 = time.time()
    frames = [gradient_per_path_length(m, data, label, ks, samples, seed, batch_size, normalize, device,
                                       progress=progress) for label, m, _ in models]
    df = pd.concat(frames, ignore_index=True)
    if out is None:
        return df
    out = Path(out)
    write_table(df, out / "paths.csv")
    files = []
    for label, m, _ in models:
        g = unraveled_graph(anatomy(m, data.input_shape))
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
        nx.write_graphml(g, out / f"graph_{safe}.graphml")
        (out / f"graph_{safe}.json").write_text(json.dumps(nx.node_link_data(g, edges="links"), indent=1))
        files += [f"graph_{safe}.graphml", f"graph_{safe}.json"]
    files += [p.name for p in save_figure(paths_plots(df)[0], out / "paths")]
    summary = summarize_paths(df, share)
    prov = provenance([dict(p, label=lab) for lab, _, p in models], data.describe(), seed, str(device),
                      time.time() - t0, normalize, probe="paths", samples=samples, batch_size=batch_size,
                      magnitude="mean over images of the L2 norm of dL/dh at the first block's input "
                                "(L = summed cross-entropy); grad_per_path_image: at the image",
                      path_length="number of residual branches on the path; shortcuts of any kind count 0")
    write_json(dict(provenance=prov, summary=summary, files=files), out / "paths.json")
    return df

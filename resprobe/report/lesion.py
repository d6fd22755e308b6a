"""The lesion study: run the probe for one or more models, write CSV, JSON (provenance + summary), plots."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable, Optional, Sequence

import pandas as pd
import torch.nn as nn

from ..anatomy import anatomy
from ..io.data import Dataset
from ..probes.lesion import _order_rows, _read_csv, lesion_summary, run_lesion
from .plots import lesion_random_k_plot, lesion_reorder_plot, lesion_single_plot, save_figure
from .tables import provenance, write_json, write_table

__all__ = ["lesion_study"]


def lesion_study(models: Sequence[tuple[str, nn.Module, dict]], data: Dataset, mode: str = "single",
                 blocks: Optional[Iterable[str]] = None, k: Optional[str] = None, samples: int = 20, seed: int = 0,
                 exclude_downsampling: bool = False, batch_size: int = 256, normalize: str = "none",
                 device="cpu", out: Optional[str | Path] = None, progress: bool = True,
                 chunk: int = 64) -> pd.DataFrame:
    """Run a lesion sweep for each ``(label, model, provenance)``; with ``out``, write
    ``lesion.csv``, ``lesion.json`` and the plots (PNG + SVG). Returns the long DataFrame."""
    t0 = time.time()
    frames, tables, views = [], {}, {}
    for label, model, prov in models:
        df = run_lesion(model, data, mode, label, blocks, k, samples, seed, exclude_downsampling, batch_size,
                        normalize, device, out, chunk=chunk, progress=progress,
                        run_meta=dict(weights_sha256=prov.get("weights_sha256"), spec=prov.get("model")))
        frames.append(df)
        views[label] = anatomy(model, data.input_shape)
        tables[label] = views[label].table()
    df = pd.concat(frames, ignore_index=True)
    if out is None:
        return df
    out = Path(out)
    # the folder may hold other modes' rows from earlier runs: the files describe all of them
    everything = _order_rows(_read_csv(out / "lesion.csv"))
    write_table(everything, out / "lesion.csv")
    summary = {m: lesion_summary(everything[everything["model"] == m], views[m])[m] for m in views}
    prov = provenance([dict(p, label=lab) for lab, _, p in models], data.describe(), seed, str(device), time.time() - t0, normalize,
                      probe="lesion", mode=mode, k=k, samples=samples, blocks=list(blocks or []),
                      exclude_downsampling=exclude_downsampling, batch_size=batch_size,
                      bootstrap="95% percentile bootstrap over images (binomial resampling of the error count)")
    plots = []
    shown = everything[everything["model"].isin(list(views))]
    if (shown["mode"] == "single").any():
        plots += save_figure(lesion_single_plot(shown, tables)[0], out / "lesion_single")
    if (shown["mode"] == "random-k").any():
        plots += save_figure(lesion_random_k_plot(shown)[0], out / "lesion_random_k")
    if (shown["mode"] == "reorder").any():
        plots += save_figure(lesion_reorder_plot(shown)[0], out / "lesion_reorder")
    write_json(dict(provenance=prov, summary=summary, blocks=tables, files=[p.name for p in plots]),
               out / "lesion.json")
    return df

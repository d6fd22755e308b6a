"""Shattered gradients (Balduzzi et al. 2017): how correlated are input gradients along a line?

**On a trained network** (the verdict): gradients of the loss at every point of seeded lines in input
space (``direction``: x0 + t·u; ``between``: the segment between two images), at the image and at every
unit's input (a per-unit shattering profile), in one batched backward pass per line. Statistics per
line: lag-1 autocorrelation of the gradient vectors along the line, Σ_t ⟨d_t, d_t+1⟩ / Σ_t ‖d_t‖²
(d_t = g_t − mean g), and the spectral slope of their periodogram (white noise ≈ 0, brown ≈ −2).

**Synthetic reproduction at initialisation**: networks f: R -> R of width 200, inputs = ``points``
evenly spaced values on [-2, 2); kinds ``ff`` (feedforward, no BN), ``ff-bn``, ``res`` (residual, no BN,
branch scale beta), ``res-bn`` and ``ff-ll`` (CReLU with looks-linear initialisation). BN statistics
are computed on the grid (one forward pass in training mode) and then *held constant* when
differentiating, so that each point's gradient is a property of the function there. Per (kind, depth)
across inits: the mean lag-1 autocorrelation and spectral slope (bootstrap CIs over inits), the mean
correlation between gradients at neighbouring points (``corr_neighbor``) and at points a quarter of
the range apart (``corr_far``, inputs 1.0 apart: their ReLU patterns are nearly independent, the
regime of the paper's 2^-L), and the fraction of last-layer ReLUs with the same sign at neighbouring
and at far points (``coactive_neighbor``, ``coactive_far``). White and brown noise go through the same
statistics as a calibration.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .. import distributed as dist
from ..anatomy import anatomy, frozen_eval
from ..engine import RunSpec, check_finite, require_memory
from .. import checks
from ..errors import UsageError
from ..io.data import Dataset
from ..metrics.signal import (lag1_vectors, spectral_slope_vectors)
from ..metrics.stats import bootstrap_mean_ci, stable_seed
from ..progress import progress
from ..study import StudyResult, Subject
from . import common
from .gradcorr_verdicts import NOT_SHATTERED, shattering_verdicts, synthetic_verdicts
from .gradcorr_synthetic import (COLUMNS, KINDS, SyntheticDetail, SyntheticOptions, fits, grid, input_gradients,
                                 make_net, run_synthetic, synthetic_sweep)

__all__ = ["SyntheticDetail", "LinesDetail", "KINDS", "make_net", "grid", "input_gradients", "SyntheticOptions", "LineOptions", "line_profiles", "synthetic_sweep",
           "fits", "run_synthetic", "run", "make_lines", "line_gradients", "trained_profile", "COLUMNS",
           "TRAINED_COLUMNS", "shattering_verdicts", "synthetic_verdicts", "NOT_SHATTERED"]

TRAINED_COLUMNS = ["model", "layer", "seed", "metric", "value", "ci_low", "ci_high"]


@dataclass(frozen=True)
class LinesDetail:
    """One gradient trace per network along the first line (None where not measured), for its figure."""

    traces: dict
    points: int


@dataclass(frozen=True)
class LineOptions:
    lines: int = 8
    points: int = 256
    mode: str = "direction"
    span: float = 0.1
    target: str = "loss"

    def __post_init__(self):
        checks.fields(self)
        if self.mode not in ("direction", "between"):
            raise UsageError(f"line mode must be 'direction' or 'between', got {self.mode!r}")
        if self.target not in ("loss", "logit"):
            raise UsageError(f"--grad-target must be 'loss' or 'logit', got {self.target!r}")
        if self.lines < 2:
            raise UsageError(f"--lines must be at least 2 (statistics across lines), got {self.lines}")
        if self.points < 16:
            raise UsageError(f"--points must be at least 16 (lag-1 and spectra need a line of points), got {self.points}")
        checks.number("--span", self.span, 1e-6, 100)   # below 1e-6 of |x0| the points differ by float32 rounding

    def describe(self) -> dict:
        return dict(lines=self.lines, points=self.points, line=self.mode, span=self.span, target=self.target)


# --- on trained networks ------------------------------------------------------------------------------

def make_lines(data: Dataset, options: LineOptions, seed: int = 0, normalize: str = "none"):
    """``options.lines`` seeded lines in (normalized) input space, each ``points`` × C × H × W, with the
    label used for the loss. ``direction``: x0 + t·u, u a random unit vector, t ∈ [−span, span)·‖x0‖;
    ``between``: the straight segment from one image to another, t ∈ [0, 1)."""
    if len(data) < 2 * options.lines:
        raise UsageError(f"{options.lines} lines need {2 * options.lines} images; the data has {len(data)}",
                         "lower --lines or raise --limit")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data), generator=g)[: 2 * options.lines]
    chosen = Dataset(data.images[idx], data.labels[idx], data.classes, data.spec, data.split, data.source)
    imgs, labels, _ = next(chosen.batches(len(idx), normalize))
    points = options.points
    out = []
    for j in range(options.lines):
        x0, y0 = imgs[2 * j], labels[2 * j]
        if options.mode == "direction":
            u = torch.randn(x0.shape, generator=g)
            u = u / u.norm()
            t = (torch.arange(points, dtype=torch.float32) / points * 2 - 1) * options.span * x0.norm()
            xs = x0.unsqueeze(0) + t.view(-1, *[1] * x0.dim()) * u.unsqueeze(0)
        else:
            x1 = imgs[2 * j + 1]
            t = torch.arange(points, dtype=torch.float32) / points
            xs = x0.unsqueeze(0) + t.view(-1, *[1] * x0.dim()) * (x1 - x0).unsqueeze(0)
        out.append((xs, torch.full((points,), int(y0), dtype=torch.long)))
    return out


def line_gradients(view, xs: torch.Tensor, y: torch.Tensor, target: str = "loss",
                   chunk: Optional[int] = None) -> list[torch.Tensor]:
    """Gradients at every point of a line (batched backward passes of ``chunk`` points, default all;
    eval mode, so the points are independent and the chunking changes nothing): with respect to the
    image, then to each unit's input. ``target``: cross-entropy ``loss`` or the true-class ``logit``."""
    if chunk is not None and chunk < len(xs):
        out = None  # each chunk's gradients copied into place: no list of parts beside their concatenation
        for s in range(0, len(xs), chunk):
            gs = line_gradients(view, xs[s:s + chunk], y[s:s + chunk], target)
            if out is None:
                out = [g.new_empty((len(xs),) + tuple(g.shape[1:])) for g in gs]
            for o, g in zip(out, gs):
                o[s:s + len(g)] = g
            del gs
        return out
    with torch.enable_grad():
        x = xs.clone().requires_grad_(True)
        h = view.stem(x)
        inputs = []
        for i in range(len(view)):
            inputs.append(h)
            h = view.run_unit(i, h)
        logits = view.head(h)
        out = (F.cross_entropy(logits, y, reduction="sum") if target == "loss"
               else logits.gather(1, y[:, None]).sum())
        grads = torch.autograd.grad(out, [x] + inputs)
    return [g.detach() for g in grads]


def trained_profile(subject: Subject, data: Dataset, spec: RunSpec, options: LineOptions = LineOptions()):
    """Per line: lag-1 autocorrelation and spectral slope of the gradients, at the image and at each
    unit's input. Returns (per-line values ``{(layer, metric): array over lines}`` on rank 0, a trace)."""
    view = anatomy(subject.model, data.input_shape)
    layers = ["input"] + view.names
    numel = int(np.prod(data.input_shape))
    per_point = numel + sum(int(np.prod(u.in_shape)) for u in view if u.in_shape is not None)
    require_memory(options.lines * options.points * numel * 4 + options.points * per_point * 12,
                   f"--lines {options.lines} × --points {options.points} (lines of {'×'.join(map(str, data.input_shape))} "
                   f"inputs, gradients at {len(layers)} layers)", "lower --points or --lines")
    lines = make_lines(data, options, spec.seed, subject.normalize)
    subject.model.to(spec.torch_device)
    dev = spec.torch_device

    def grads_of(j):
        xs, y = lines[j]
        return line_gradients(view, xs.to(dev), y.to(dev), options.target, chunk=spec.batch_size)  # memory: batch
    return line_profiles(subject, view, len(lines), grads_of, spec, "input")


def line_profiles(subject: Subject, view, n_lines: int, grads_of, spec: RunSpec, where: str):
    """Per line ``j`` of ``n_lines`` (this rank's share): ``grads_of(j)`` gives the gradients along the line at
    the input, then at each unit's input; their lag-1 autocorrelation and spectral slope per layer. Returns
    (``{(layer, metric): array over lines}`` on rank 0, the first line's busiest input coordinate, ``view``)."""
    layers = ["input"] + view.names
    mine = list(dist.shard(n_lines))
    vals = {(layer, m): [] for layer in layers for m in ("lag1", "spectral_slope")}
    trace = None
    with frozen_eval(subject.model), progress(len(mine), f"gradcorr {subject.label}", "lines",
                                              enabled=spec.progress) as bar:
        for j in mine:
            grads = grads_of(j)
            check_finite(grads[0], f"the {where} gradients of {subject.label}", spec)
            for layer, g in zip(layers, grads):
                g = g.flatten(1).double().cpu().numpy()
                vals[(layer, "lag1")].append(lag1_vectors(g))
                vals[(layer, "spectral_slope")].append(spectral_slope_vectors(g))
                if j == 0 and layer == "input":
                    trace = g[:, int(np.argmax(np.abs(g).sum(0)))]  # the busiest input coordinate
            bar.update(1)
    keys = sorted(vals)
    got = dist.gather_rows(np.asarray(mine), {f"{a}|{b}": np.asarray(vals[(a, b)]) for a, b in keys})
    if got is None:
        return None, None, view
    return {k: got[f"{k[0]}|{k[1]}"] for k in keys}, trace, view


def trained_rows(label: str, values: dict, layers: list[str], spec: RunSpec) -> list[dict]:
    rows = []
    for layer in layers:
        for metric in ("lag1", "spectral_slope"):
            v = values[(layer, metric)]
            for s, val in enumerate(v):
                rows.append(dict(model=label, layer=layer, seed=str(s), metric=metric, value=float(val),
                                 ci_low=np.nan, ci_high=np.nan))
            ok = v[~np.isnan(v)]      # NaN: a line whose gradient is zero (an output that ignores its input)
            lo, hi = bootstrap_mean_ci(ok, n_boot=spec.n_boot, seed=stable_seed(spec.seed, label, layer, metric))
            rows.append(dict(model=label, layer=layer, seed="all", metric=metric,
                             value=float(ok.mean()) if len(ok) else float("nan"),
                             ci_low=lo, ci_high=hi))
    return rows


def run(subjects: Sequence[Subject], data: Dataset, spec: RunSpec = RunSpec(),
        options: LineOptions = LineOptions()) -> StudyResult:
    """Gradients along lines through each subject's input space; verdict: shattered or not. Token windows:
    lines through the input embeddings (:func:`resprobe.probes.lm_gradcorr.run_text`)."""
    from ..io.text import TextData
    if isinstance(data, TextData):
        from .lm_gradcorr import run_text
        return run_text(subjects, data, spec, options)
    common.check_labels(subjects)
    rows, values, traces, views, units = [], {}, {}, {}, {}
    for s in subjects:
        v, trace, view = trained_profile(s, data, spec, options)
        views[s.label] = view
        units[s.label] = view.table()
        if v is None:
            continue
        values[s.label] = v
        traces[s.label] = trace
        rows += trained_rows(s.label, v, ["input"] + view.names, spec)
    common.assess(subjects, data, spec)  # every rank together, before the main rank's verdicts
    if not dist.is_main():
        return StudyResult("gradcorr", pd.DataFrame(columns=TRAINED_COLUMNS))
    table = pd.DataFrame(rows, columns=TRAINED_COLUMNS)
    roles = common.roles(subjects, views, data, spec)
    return StudyResult("gradcorr", table, summary={}, verdicts=shattering_verdicts(values, roles),
                       findings=trained_findings(table), provenance=common.provenance(
                           subjects, data, spec, statistic="lag-1 autocorrelation of the gradient vectors along each "
                           "line: sum_t <d_t, d_t+1> / sum_t |d_t|^2, d_t = g_t - mean_t g"),
                       settings=options.describe(), units=units, roles=roles, detail=LinesDetail(traces, options.points))


def trained_findings(df: pd.DataFrame) -> list[str]:
    from .. import fmt
    out = []
    agg = df[(df["seed"] == "all") & (df["metric"] == "lag1")]
    for m, g in agg.groupby("model", sort=False):
        inp = g[g["layer"] == "input"].iloc[0]
        units = g[g["layer"] != "input"]
        lo, hi = units.loc[units["value"].idxmin()], units.loc[units["value"].idxmax()]
        out.append(f"{m}: lag-1 autocorrelation of the input gradient along the lines "
                   f"{fmt.ci(inp['value'], inp['ci_low'], inp['ci_high'])}; at unit inputs from {lo['value']:.3f} "
                   f"({lo['layer']}) to {hi['value']:.3f} ({hi['layer']}).")
    inp = agg[agg["layer"] == "input"].set_index("model")
    if len(inp) > 1:
        best = inp["value"].idxmax()
        others = [m for m in inp.index if m != best]
        separated = all(inp.loc[best, "ci_low"] > inp.loc[m, "ci_high"] for m in others)
        out.append(f"Input gradients are most correlated for {best} ({inp.loc[best, 'value']:.3f})"
                   if separated else
                   "The networks' input-gradient lag-1 values are not distinguishable (their 95% CIs overlap): "
                   + ", ".join(f"{m} {fmt.ci(r['value'], r['ci_low'], r['ci_high'])}" for m, r in inp.iterrows()) + ".")
    return out

"""Shattered gradients on language models (Balduzzi et al. 2017): gradients of the next-token loss along
straight lines through the space of input embeddings.

A window's input embeddings are the stem's output e = stem(ids), ``(T, d)``: the residual stream before the
first unit (token embeddings, and position embeddings where the model adds them). Lines:

- ``between`` (the analogue of Balduzzi's lines between inputs): e(t) = (1 − t)·e_A + t·e_B, t ∈ [0, 1), from
  the embeddings of one real window to those of another;
- ``direction``: e(t) = e_A + t·u, u a random unit direction, t ∈ [−span, span)·‖e_A‖.

Each point is run from the first unit with window A's attention masks and positions; the loss is window A's
summed next-token cross-entropy (its targets). Gradients are taken at the embeddings (``input``) and at every
unit's input, and each line gives the lag-1 autocorrelation and the spectral slope of the gradient vectors
along it (:mod:`resprobe.probes.gradcorr`: white noise 0, brown noise 0.97 over 256 points). The verdicts are
the image study's: per residual model, gradients not shattered; per equal-recipe twin pair, less shattered than
the plain twin's; CIs over lines.
"""
from __future__ import annotations

from typing import Sequence

import pandas as pd
import torch
import torch.nn.functional as F

from .. import distributed as dist
from ..anatomy import anatomy
from ..engine import RunSpec
from ..errors import UsageError
from ..io.text import TextData
from ..study import StudyResult, Subject
from . import common
from .gradcorr import TRAINED_COLUMNS, LineOptions, LinesDetail, line_profiles, trained_rows, trained_findings
from .gradcorr_verdicts import shattering_verdicts
from .lm_common import text_roles
from .lm_lesion import backward_spec

__all__ = ["text_lines", "embedding_line_gradients", "run_text"]


def text_lines(data: TextData, options: LineOptions, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``options.lines`` seeded pairs of windows ``(ids_A, ids_B)``, each ``(seq_len + 1,)``: the line runs
    from A's embeddings (to B's, or along a random direction) with A's next-token targets."""
    if len(data) < 2 * options.lines:
        raise UsageError(f"{options.lines} lines need {2 * options.lines} token windows; the data has {len(data)}",
                         "lower --lines or raise --limit")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data), generator=g)[: 2 * options.lines]
    return [(data.ids[idx[2 * j]], data.ids[idx[2 * j + 1]]) for j in range(options.lines)]


def embedding_line_gradients(view, a: torch.Tensor, b: torch.Tensor, options: LineOptions, seed: int,
                             chunk: int) -> list[torch.Tensor]:
    """Gradients ``(points, T, d)`` along one line, at the embeddings and at each unit's input (chunks of
    ``chunk`` points run as one batch; eval mode, so the points are independent)."""
    dev = next(view.model.parameters()).device
    xa, ya, xb = a[:-1].to(dev), a[1:].to(dev), b[:-1].to(dev)
    with torch.no_grad():
        ea = view.stem(xa[None])[0]
        eb = view.stem(xb[None])[0] if options.mode == "between" else None
    points = options.points
    if options.mode == "between":
        t = torch.arange(points, dtype=torch.float32, device=dev) / points
        line = lambda tt: ea[None] + tt.view(-1, 1, 1) * (eb - ea)[None]            # noqa: E731
    else:
        u = torch.randn(ea.shape, generator=torch.Generator().manual_seed(seed)).to(dev, ea.dtype)
        u = u / u.norm()
        t = (torch.arange(points, dtype=torch.float32, device=dev) / points * 2 - 1) * options.span * ea.norm()
        line = lambda tt: ea[None] + tt.view(-1, 1, 1) * u[None]                     # noqa: E731
    out = None
    for s in range(0, points, chunk):
        tt = t[s:s + chunk].to(ea.dtype)
        n = len(tt)
        with torch.no_grad():
            view.stem(xa[None].expand(n, -1))      # records window A's masks and positions for n points
        with torch.enable_grad():
            h = line(tt).detach().requires_grad_(True)
            inputs, x = [], h
            for i in range(len(view)):
                inputs.append(x)
                x = view.run_unit(i, x)
            logits = view.head(x)
            if options.target == "loss":
                obj = F.cross_entropy(logits.flatten(0, 1).float(), ya.repeat(n), reduction="sum")
            else:
                obj = logits.gather(2, ya.view(1, -1, 1).expand(n, -1, 1)).sum()
            grads = torch.autograd.grad(obj, [h] + inputs)
        if out is None:
            out = [g.new_empty((points,) + tuple(g.shape[1:])) for g in grads]
        for o, g in zip(out, grads):
            o[s:s + n] = g.detach()
    return out


def trained_profile_text(subject: Subject, data: TextData, spec: RunSpec, options: LineOptions):
    view = anatomy(subject.model, (data.seq_len,))
    lines = text_lines(data, options, spec.seed)

    def grads_of(j):
        a, b = lines[j]
        return embedding_line_gradients(view, a, b, options, spec.seed * 1000 + j, spec.batch_size)
    return line_profiles(subject, view, len(lines), grads_of, spec, "embedding")


def run_text(subjects: Sequence[Subject], data: TextData, spec: RunSpec, options: LineOptions) -> StudyResult:
    """The shattering study on language models (see the module docstring)."""
    common.check_labels(subjects)
    rows, values, traces, views, units = [], {}, {}, {}, {}
    for s in subjects:
        v, trace, view = trained_profile_text(s, data, backward_spec(spec, data, s.model), options)
        views[s.label] = view
        units[s.label] = view.table()
        if v is None:
            continue
        values[s.label] = v
        traces[s.label] = trace
        rows += trained_rows(s.label, v, ["input"] + view.names, spec)
    roles = text_roles(subjects, views, data, spec)
    if not dist.is_main():
        return StudyResult("gradcorr", pd.DataFrame(columns=TRAINED_COLUMNS))
    table = pd.DataFrame(rows, columns=TRAINED_COLUMNS)
    verdicts = [_text_wording(v) for v in shattering_verdicts(values, roles)]
    return StudyResult("gradcorr", table, summary={}, verdicts=verdicts, findings=trained_findings(table),
                       provenance=common.provenance(
                           subjects, data, spec, statistic="lag-1 autocorrelation of the gradient vectors along each "
                           "line through the input embeddings: sum_t <d_t, d_t+1> / sum_t |d_t|^2, d_t = g_t - mean_t g"),
                       settings=dict(options.describe(), text=True), units=units, roles=roles,
                       detail=LinesDetail(traces, options.points))


def _text_wording(v):
    import dataclasses
    return dataclasses.replace(v, criterion=v.criterion.replace("gradient at the image", "gradient at the input "
                                                                "embeddings"),
                               statistic_name=v.statistic_name.replace("at the image", "at the input embeddings"))

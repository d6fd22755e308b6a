"""Perturbation amplification on language models: the image study's measures on the residual stream.

For every unit and every token window, with the window's residual stream x (T × d: all its token positions)
as the unit's input and norms taken over the whole window:

- random directions δ with ‖δ‖ = ε‖x‖ (one direction per window and unit, shared by every ε): the gains of
  the unit (‖Δy‖/‖δ‖), of its branch (‖ΔF‖/‖δ‖) and of its shortcut, κ = (‖ΔF‖/‖F‖)/ε, and for residual units
  the arithmetic ratio (‖ΔF‖/‖F‖)/(‖Δy‖/‖y‖) beside ‖y‖/‖F‖ (see :mod:`resprobe.probes.amplify`);
- the worst case: σ_max of the Jacobians of the branch and of the unit with respect to the window's stream, by
  power iteration on J v and Jᵀ u from one linearization and one pullback (no Jacobian materialised), and
  κ_worst = σ_max(∂F/∂x)·‖x‖/‖F‖.

A window's attention mixes its positions, so each window is one input: the Jacobian is block-diagonal over
windows and the power iteration runs on all windows of a batch at once. Every value is a mean over windows with
a 95% CI that resamples **documents** (``n_images`` counts windows). The verdict is the image study's (a
residual LM against its plain twin, one recipe, paired by seed), its CI resampling documents.
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from .. import distributed as dist
from ..anatomy import anatomy, frozen_eval
from ..engine import PerImageStore, RunSpec, batch_generator, check_finite
from ..io.text import TextData
from ..metrics.lm import document_ratio_ci, per_document
from ..metrics.similarity import per_image_norm
from ..metrics.stats import stable_seed
from ..progress import progress
from ..study import StudyResult, Subject
from . import common
from .amplify import COLUMNS, AmplifyDetail, AmplifyOptions, findings, summarize, unit_random_gains
from .amplify_jacobian import random_unit, unit_spectral_norms
from .amplify_verdicts import amplifier_verdicts
from .lm_common import text_roles
from .lm_lesion import text_spec, windows_in_batches

__all__ = ["profile_text", "run_text"]


def profile_text(subject: Subject, data: TextData, spec: RunSpec, options: AmplifyOptions = AmplifyOptions()):
    """Per-window values ``{(unit, metric, eps): array}`` in window order (rank 0), the view and timings."""
    view = anatomy(subject.model, (data.seq_len,))
    store = PerImageStore(len(data))
    timing = dict(forward_s=0.0, power_iteration_s=0.0, images=0)
    n_batches = len(dist.shard(-(-len(data) // spec.batch_size)))
    with frozen_eval(subject.model), torch.no_grad(), \
            progress(n_batches, f"amplify {subject.label}", "batches", enabled=spec.progress) as bar:
        for x, _, idx in windows_in_batches(data, spec):
            rows = store.mark(idx)

            def add(unit, metric, e, t, rows=rows):
                store.put((unit, metric, e), rows, t.detach().double().cpu())

            gen = [batch_generator(spec, "amplify", int(i)) for i in rows]  # one per window
            t0 = time.perf_counter()
            hs = view.unit_inputs(x)
            check_finite(hs[-1], f"the residual stream of {subject.label}", spec)
            timing["forward_s"] += time.perf_counter() - t0
            timing["images"] += len(x)
            _random(view, hs, options.eps, gen, add)
            t0 = time.perf_counter()
            with torch.enable_grad():
                for i, u in enumerate(view):
                    h = hs[i].detach()
                    sig_f, sig_y, f = unit_spectral_norms(u, h, options.power_iters, gen)
                    add(u.name, "worst_gain_branch", None, sig_f)
                    add(u.name, "worst_gain_unit", None, sig_y)
                    add(u.name, "kappa_worst", None,
                        sig_f * per_image_norm(h) / per_image_norm(f.detach()).clamp_min(1e-12))
            timing["power_iteration_s"] += time.perf_counter() - t0
            bar.update(1)
    keys = sorted(store.columns, key=str)
    pos = {k: j for j, k in enumerate(keys)}
    got = store.gather(lambda k: str(pos[k]))
    timing = dist.reduce_sum(timing)
    if got is None:
        return None, view, None
    timing["power_iterations"] = options.power_iters
    timing["power_iteration_per_forward"] = timing["power_iteration_s"] / max(timing["forward_s"], 1e-12)
    return {k: got[str(j)] for j, k in enumerate(keys)}, view, timing


def _random(view, hs, eps, gen, add) -> None:
    f0 = [u.branch(hs[i]) for i, u in enumerate(view)]
    nf0 = [per_image_norm(f) for f in f0]
    dirs = [random_unit(h.shape, gen, h.device, h.dtype) for h in hs[:-1]]
    for i, u in enumerate(view):
        if u.residual:
            add(u.name, "output_branch_ratio", None, per_image_norm(hs[i + 1]) / nf0[i].clamp_min(1e-12))
    for e in eps:
        for i in range(len(view)):
            unit_random_gains(view, i, (hs[i], hs[i + 1], f0[i], nf0[i]), dirs[i], e, add)


def _rows(label: str, values: dict, docs: np.ndarray, spec: RunSpec) -> list[dict]:
    rows = []
    for (unit, metric, e), v in values.items():
        by_doc, _ = per_document(np.stack([v, np.ones_like(v)], 1), docs)
        m, lo, hi = document_ratio_ci(by_doc[:, 0], by_doc[:, 1], spec.n_boot,
                                      seed=stable_seed(spec.seed, label, unit, metric, e))
        rows.append(dict(model=label, unit=unit, metric=metric, eps=e, value=float(m), ci_low=float(lo),
                         ci_high=float(hi), n_images=len(v)))
    return rows


def run_text(subjects: Sequence[Subject], data: TextData, spec: RunSpec,
             options: AmplifyOptions = AmplifyOptions()) -> StudyResult:
    """The amplification study on token windows (see the module docstring)."""
    common.check_labels(subjects)
    rows, per_window, timings, views = [], {}, {}, {}
    docs = data.docs.numpy()
    for s in subjects:
        sp = text_spec(spec, data, s.model)
        values, view, timing = profile_text(s, data, sp, options)
        views[s.label] = view
        if values is None:
            continue
        rows += _rows(s.label, values, docs, sp)
        per_window[s.label] = values
        timings[s.label] = timing
    roles = text_roles(subjects, views, data, spec)
    if not dist.is_main():
        return StudyResult("amplify", pd.DataFrame(columns=COLUMNS))
    order = {lab: {u.name: u.index for u in v} for lab, v in views.items()}
    table = pd.DataFrame(rows, columns=COLUMNS)
    table = table.assign(_u=[order[m].get(u, 10 ** 6) for m, u in zip(table["model"], table["unit"])]) \
        .sort_values(["model", "metric", "eps", "_u"], kind="stable", key=lambda c: c if c.name != "model" else
                     c.map({lab: i for i, lab in enumerate(order)})).drop(columns="_u").reset_index(drop=True)
    verdicts = amplifier_verdicts(roles, per_window, min(options.eps), spec.n_boot, spec.seed, clusters=docs)
    prov = dict(common.provenance(subjects, data, spec), ci="95% percentile bootstrap over documents; n_images "
                "counts token windows")
    return StudyResult("amplify", table, summary=summarize(table, roles), verdicts=verdicts,
                       findings=findings(table, roles), provenance=prov,
                       settings=dict(options.describe(), text=True), roles=roles,
                       units={lab: v.table() for lab, v in views.items()}, detail=AmplifyDetail(timings))

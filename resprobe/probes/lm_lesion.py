"""Lesions on language models: every configuration of a lesion plan (single sublayers or layers, sets, random-k,
reorders, Painters' edits) evaluated on token windows, from its first modified unit (the prefix engine of
:mod:`.lesion_sweep`, the same as for images).

Per configuration and window the sweep keeps four sums (:func:`resprobe.metrics.lm.window_sums`): next-token
loss, tokens, tokens whose top-1 prediction agrees with the intact model's, and KL(intact ‖ edited). Rows give,
each with a 95% percentile CI that resamples **documents**: the mean loss (nats/token) and perplexity, the loss
increase over the intact model (paired: the same documents in every resample) with a paired sign-flip test over
documents (``p_paired``), the top-1 agreement with the intact model and the mean KL. Memory follows the batch of
windows (logits ``batch × seq_len × vocabulary``), never the number of configurations × tokens: only the four
sums per window and configuration are kept.

With a ``store`` (:class:`.lm_store.TextStore`) the window sums of finished configurations are written chunk by
chunk, and a rerun with the same settings resumes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from .. import distributed as dist
from ..anatomy import ResidualView, anatomy, preserved_state
from ..engine import PerImageStore, RunSpec, check_finite
from ..errors import UsageError
from ..io.text import TextData
from ..models.lm import is_placed
from ..metrics.lm import document_ratio_ci, per_document, reference, sign_flip_p, window_sums, windows_per_batch
from ..metrics.stats import stable_seed
from ..progress import progress
from ..study import StudyResult, Subject
from . import common
from .lesion_plans import LesionConfig, LesionMode, LesionPlan, make_configs
from .lesion_sweep import stream_logits

__all__ = ["COLUMNS", "TextDetail", "text_sweep", "rows_for", "order_text", "run_text", "Slot", "stored_sweep", "run_key", "windows_in_batches", "text_spec", "backward_spec", "configs_for"]

COLUMNS = ["model", "mode", "deleted", "k", "kendall_tau", "loss", "loss_ci_low", "loss_ci_high", "perplexity",
           "delta_loss", "delta_ci_low", "delta_ci_high", "p_paired", "agreement", "agree_ci_low", "agree_ci_high",
           "kl", "kl_ci_low", "kl_ci_high", "n_windows", "n_tokens", "n_documents", "seed", "order", "note", "run"]


@dataclass(frozen=True)
class TextDetail:
    """Beyond the table: per network, the per-window sums of every configuration (key: the configuration's
    key; ``(windows, 4)``: loss, tokens, agreement, KL), the windows' documents, how many configurations
    were reused from the store, and named tables beyond the main one (pruning: ``correlations``, ``pruning``),
    each written as ``lesion.<name>.csv``."""

    sums: dict
    docs: np.ndarray
    reused: dict
    tables: dict = field(default_factory=dict)


def windows_in_batches(data: TextData, spec: RunSpec):
    """This process's share of ``(input ids, targets, window indices)`` batches, on the run's device."""
    n_batches = -(-len(data) // spec.batch_size)
    dev = spec.torch_device
    for b in dist.shard(n_batches):
        s = b * spec.batch_size
        idx = np.arange(s, min(s + spec.batch_size, len(data)))
        x, y = data.inputs_and_targets(slice(int(idx[0]), int(idx[-1]) + 1))
        yield x.to(dev), y.to(dev), idx


def text_sweep(view: ResidualView, data: TextData, configs: Sequence[LesionConfig], spec: RunSpec,
               desc: str = "lesion") -> list[Optional[np.ndarray]]:
    """Per-window sums ``(windows, 4)`` of every runnable configuration over ``data`` (None for the others); in
    a distributed run, on rank 0 in window order (None elsewhere)."""
    n = len(view)
    order = sorted((i for i, c in enumerate(configs) if c.runnable), key=lambda i: configs[i].signature(n))
    store = PerImageStore(len(data))
    n_batches = len(dist.shard(-(-len(data) // spec.batch_size)))
    with preserved_state(view.model), torch.no_grad(), spec.autocast(), \
            progress(n_batches * max(1, len(order)), desc, "configurations × batches", enabled=spec.progress) as bar:
        view.model.eval()
        for x, y, idx in windows_in_batches(data, spec):
            i_np = store.mark(idx)
            hs = view.unit_inputs(x)
            base = view.head(hs[-1])
            check_finite(base, "the intact model's logits", spec, lambda: common.locate_nonfinite(view, x))
            ref = reference(base)
            for ci, logits in stream_logits(view, x, configs, order, hs, base):
                sums = window_sums(logits, y, ref)
                # the sums are finite iff the logits are, the intact reference being finite (tested): one pass fewer
                if not check_finite(sums[:, [0, 3]], f"the logits of configuration {configs[ci].key()}", spec):
                    sums[:, [0, 3]] = float("nan")
                store.put(ci, i_np, sums)
                bar.update(1)
            del hs, base, ref
    got = dist.gather_rows(store.index(), {str(i): store.columns.get(i, np.full((len(data), 4), np.nan))[store.index()]
                                           for i in order})
    if got is None:
        return [None] * len(configs)
    return [got.get(str(i)) for i in range(len(configs))]


def rows_for(configs: Sequence[LesionConfig], sums: dict, docs: np.ndarray, ctx: dict) -> list[dict]:
    """One row per configuration from its window sums (``sums[key]``) and the intact model's (the baseline)."""
    base = per_document(sums[LesionConfig("baseline").key()], docs)[0]
    out = []
    for c in configs:
        row = dict(model=ctx["label"], mode=c.mode, deleted=c.label, k=c.k if c.k is not None else
                   (0 if c.mode == "baseline" else None), kendall_tau=c.kendall_tau, seed=ctx["seed"],
                   order="" if c.order is None else " ".join(map(str, c.order)), note=c.note, run=ctx["run"])
        s = sums.get(c.key())
        if s is None:
            out.append(row)
            continue
        d = per_document(s, docs)[0]
        seed = stable_seed(ctx["seed"], c.key())
        nb = ctx["n_boot"]
        loss, llo, lhi = document_ratio_ci(d[:, 0], d[:, 1], nb, seed=seed)
        delta, dlo, dhi = document_ratio_ci(d[:, 0] - base[:, 0], d[:, 1], nb, seed=seed)
        agree, alo, ahi = document_ratio_ci(d[:, 2], d[:, 1], nb, seed=seed)
        kl, klo, khi = document_ratio_ci(d[:, 3], d[:, 1], nb, seed=seed)
        row.update(loss=loss, loss_ci_low=llo, loss_ci_high=lhi, perplexity=float(np.exp(loss)), delta_loss=delta,
                   delta_ci_low=dlo, delta_ci_high=dhi, agreement=agree, agree_ci_low=alo, agree_ci_high=ahi, kl=kl,
                   kl_ci_low=klo, kl_ci_high=khi, n_windows=len(s), n_tokens=int(s[:, 1].sum()),
                   n_documents=len(d), p_paired=None if c.mode == "baseline" else
                   sign_flip_p(d[:, 0] - base[:, 0], nb, seed=seed))
        if not np.isfinite(s[:, 0]).all():
            row["note"] = (row["note"] + "; " if row["note"] else "") + "non-finite logits"
        out.append(row)
    return out


_MODE_RANK = {"baseline": 0, "single": 1, "set": 2, "random-k": 3, "reorder": 4, "skip": 5, "parallel": 6,
              "repeat": 7, "middle-reversed": 8, "prune": 9}


def typed(df: pd.DataFrame) -> pd.DataFrame:
    df = df.reindex(columns=COLUMNS).copy()
    for c in ("model", "mode", "deleted", "order", "note", "run"):
        df[c] = df[c].astype(object).where(df[c].notna(), "").astype(str)
    for c in ("k", "n_windows", "n_tokens", "n_documents", "seed"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
    for c in COLUMNS:
        if c not in ("model", "mode", "deleted", "order", "note", "run", "k", "n_windows", "n_tokens",
                     "n_documents", "seed"):
            df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    return df


def text_spec(spec: RunSpec, data: TextData, model) -> RunSpec:
    """The run's settings with at most as many windows per batch as keep a batch's logits (and the intact model's
    probabilities beside them) within :data:`resprobe.metrics.lm.LOGITS_BUDGET` each: results do not depend on
    the batch size, and the default 256 images per batch would be gigabytes of logits for a large vocabulary."""
    cap = windows_per_batch(data.seq_len, model.get_output_embeddings().weight.shape[0])
    return spec if spec.batch_size <= cap else spec.replace(batch_size=cap)


def backward_spec(spec: RunSpec, data: TextData, model) -> RunSpec:
    """:func:`text_spec` with half its windows per batch, for probes that backpropagate: the backward keeps every
    unit's graph and the logits' gradient beside the logits (SmolLM2-135M, 64 windows of 256 tokens: paths 4.0 GB
    and gradcorr 5.5 GB at the full budget). Results do not depend on the batch size."""
    sp = text_spec(spec, data, model)
    return sp.replace(batch_size=max(1, sp.batch_size // 2))


def order_text(table: pd.DataFrame, labels: Sequence[str]) -> pd.DataFrame:
    """Rows by network (in ``labels`` order), mode, then k (stable within)."""
    if table.empty:
        return table
    table = table.assign(_m=table["mode"].map(_MODE_RANK).fillna(99)).sort_values(
        ["_m", "k"], kind="stable").drop(columns="_m").reset_index(drop=True)
    order = {lab: i for i, lab in enumerate(labels)}
    return table.iloc[np.argsort(table["model"].map(order).fillna(len(order)).to_numpy(), kind="stable")].reset_index(
        drop=True)


def configs_for(view: ResidualView, plan: LesionPlan, seed: int, label: str) -> list[LesionConfig]:
    try:
        return make_configs(view, plan, seed)
    except UsageError as e:
        raise UsageError(f"{label}: {e.message}", e.hint) from e


class Slot(NamedTuple):
    """Where a sweep keeps its finished configurations: a store (None: nowhere), the network, the run key and the
    settings behind it."""

    store: Any
    label: str
    key: str
    settings: dict
    what: str = "lesion"
    chunk: int = 64


def stored_sweep(view: ResidualView, data: TextData, configs: Sequence[LesionConfig], spec: RunSpec,
                 slot: Slot) -> tuple[dict, int]:
    """``{configuration key: window sums}`` of ``configs``: those the store holds for this run are reused, the
    others swept ``slot.chunk`` at a time and stored as each chunk finishes (a crash loses one chunk at most).
    Returns the sums and how many were reused."""
    wanted = {c.key() for c in configs}
    done = slot.store.done(slot.label, slot.key, slot.settings) if slot.store is not None and dist.is_main() else {}
    done = {k: v for k, v in dist.broadcast(done).items() if k in wanted}
    todo = [c for c in configs if c.key() not in done and c.runnable]
    todo.sort(key=lambda c: c.signature(len(view)))
    sums = dict(done)
    for s in range(0, len(todo), slot.chunk):
        ch = todo[s:s + slot.chunk]
        got = text_sweep(view, data, ch, spec, f"{slot.what} {slot.label} ({s + len(ch)}/{len(todo)} configurations)")
        new = {c.key(): g for c, g in zip(ch, got) if g is not None}
        sums.update(new)
        if slot.store is not None and dist.is_main():
            slot.store.add(slot.label, slot.key, slot.settings, new)
    return sums, len(done)


def run_key(subject: Subject, data: TextData, spec: RunSpec, mode: dict) -> tuple[str, dict]:
    """The run key (a hash of the network, the windows, the seed, the bootstrap, the dtype and the mode's
    settings) and the settings behind it."""
    net = dict(model=subject.label, spec=subject.provenance.get("model"),
               weights_sha256=subject.provenance.get("weights_sha256"), data=data.describe(), seed=spec.seed,
               n_boot=spec.n_boot, dtype=spec.dtype)
    settings = dict(network=net, mode=mode)
    return common.settings_key(settings), settings


def _one(subject: Subject, data: TextData, spec: RunSpec, plan: LesionPlan, store, chunk: int):
    view = anatomy(subject.model, (data.seq_len,))
    spec = text_spec(spec, data, subject.model)
    if not is_placed(subject.model):
        subject.model.to(spec.torch_device)
    configs = configs_for(view, plan, spec.seed, subject.label)
    key, settings = run_key(subject, data, spec, plan.describe())
    sums, n_done = stored_sweep(view, data, configs, spec, Slot(store, subject.label, key, settings,
                                                                f"lesion {plan.mode.value}", chunk))
    return view, configs, sums, key, n_done


def run_text(subjects: Sequence[Subject], data: TextData, spec: RunSpec = RunSpec(),
             plan: LesionPlan | Sequence[LesionPlan] = LesionPlan(), store=None, chunk: int = 64) -> StudyResult:
    """Lesion plans on language models over token windows (what :func:`resprobe.probes.lesion.run` does on text):
    one row per configuration (``COLUMNS``), per-window sums in the detail (for paired statistics); single
    deletions also give the verdicts of :mod:`.lm_lesion_verdicts`. A prune-by-similarity plan runs :func:`.lm_prune.run_text`."""
    plans = (plan,) if isinstance(plan, LesionPlan) else tuple(plan)
    if any(p.mode is LesionMode.PRUNE for p in plans):
        from .lm_prune import PruneTextOptions, run_text as prune
        if len(plans) > 1:
            raise UsageError("prune-by-similarity on a language model runs alone", "give it as the only plan")
        return prune(subjects, data, spec, PruneTextOptions(plans[0].ks, plans[0].samples), store)
    common.check_labels(subjects)
    rows, units, all_sums, reused, singles, views = [], {}, {}, {}, {}, {}
    docs = data.docs.numpy()
    for p in plans:
        for s in subjects:
            view, configs, sums, key, n_done = _one(s, data, spec, p, store, chunk)
            units[s.label] = view.table()
            views[s.label] = view
            if p.mode is LesionMode.SINGLE:
                singles.setdefault(s.label, []).extend(configs)
            all_sums.setdefault(s.label, {}).update(sums)
            reused[s.label] = reused.get(s.label, 0) + n_done
            if dist.is_main():
                ctx = dict(label=s.label, seed=spec.seed, n_boot=spec.n_boot, run=key)
                rows += [r for r in rows_for(configs, sums, docs, ctx)
                         if not (r["mode"] == "baseline" and any(q["model"] == s.label and q["mode"] == "baseline"
                                                                  for q in rows))]
    verdicts, roles = [], {}
    if singles:   # the single-deletion verdicts (lm_lesion_verdicts): competence measured on every rank together
        from .lm_common import text_roles
        from .lm_lesion_verdicts import single_loss_verdicts
        roles = text_roles(subjects, views, data, spec)
        if dist.is_main():
            grain = "layer" if any(p.mode is LesionMode.SINGLE and p.granularity == "block" for p in plans) else "unit"
            verdicts = single_loss_verdicts(all_sums, singles, docs, roles, spec, grain)
    table = order_text(typed(pd.DataFrame(rows, columns=COLUMNS)), [s.label for s in subjects])
    from .lm_findings import findings, summarize
    prov = dict(models=[s.describe() for s in subjects], data=data.describe(), run=spec.describe())
    return StudyResult("lesion", table, summary=summarize(table, units), findings=findings(table, units),
                       verdicts=verdicts, roles=roles,
                       provenance=prov, settings=dict(plans=[p.describe() for p in plans], chunk=chunk, text=True),
                       units=units, detail=TextDetail(all_sums, docs, reused))

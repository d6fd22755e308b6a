"""Lesion experiments (Veit, Wilber & Belongie 2016): delete, sample and reorder residual units.

A lesion drops a unit's residual branch and keeps its shortcut (identity, projection or zero-pad)
and its post-operation, as the authors' code did; in a plain twin a shape-preserving unit is replaced
by the identity (shape-changing ones, and non-residual transitions, cannot be deleted and are
reported as such). ``granularity="block"`` deletes whole blocks (a transformer block's attention and
MLP units together).

Method, per batch: compute the stem output and every unit's input once; evaluate each configuration
from its first modified unit, with configurations sorted by their per-unit edit codes so that the
prefix shared with the previous configuration is reused (lexicographic order walks the prefix tree
of the configurations depth first, so every node of the tree is computed once). Only counts and one
bit per image and configuration (wrong or not) are kept, so memory follows the batch size.

Rows: error, loss, bootstrap CI, and the paired comparison with the intact network (``n_broken``:
images it got right that the lesioned network gets wrong; ``n_fixed``: the reverse; exact McNemar
``p_mcnemar``). With a ``store`` (see :mod:`resprobe.probes.lesion_store`) finished configurations are
written chunk by chunk and a rerun resumes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional, Protocol, Sequence

import numpy as np
import pandas as pd

from .. import distributed as dist
from ..anatomy import ResidualView, anatomy
from ..engine import RunSpec
from ..errors import UsageError
from ..io.data import Dataset
from ..io.text import TextData
from ..metrics.stats import bootstrap_proportion_ci, mcnemar_exact, stable_seed
from ..study import StudyResult, Subject
from ..verdict import Role
from . import common
from .lesion_findings import findings, summarize
from .lesion_plans import LesionConfig, LesionMode, LesionPlan, make_configs
from .lesion_sweep import Counts, stream_logits, sweep
from .lesion_verdicts import (CLIFF_THRESHOLD, LESION_CONTRAST_MARGIN, LESION_RELATIVE_INCREASE, no_cliff_verdicts,
                              relative_increases, single_deletion_verdicts)

__all__ = ["LesionMode", "LesionPlan", "LesionConfig", "LesionDetail", "make_configs", "run", "sweep", "stream_logits",
           "summarize", "findings", "COLUMNS", "single_deletion_verdicts", "no_cliff_verdicts", "verdicts",
           "relative_increases", "typed", "order_rows", "LESION_RELATIVE_INCREASE", "LESION_CONTRAST_MARGIN",
           "CLIFF_THRESHOLD"]

COLUMNS = ["model", "mode", "deleted", "k", "kendall_tau", "error", "loss", "n_images", "n_wrong", "ci_low",
           "ci_high", "n_broken", "n_fixed", "p_mcnemar", "seed", "top5_error", "order", "note", "run"]


@dataclass(frozen=True)
class LesionDetail:
    """Beyond the table: per network, one bit per image and configuration (packed; key: the configuration's
    key) for paired statistics, how many configurations were reused from the store, and the chance error."""

    bits: dict
    reused: dict
    chance: float


class Store(Protocol):
    """Where a sweep keeps finished rows (see :class:`resprobe.probes.lesion_store.LesionStore`)."""

    def done(self, model: str, run: str, settings: dict) -> dict[str, tuple[dict, Optional[np.ndarray]]]: ...

    def add(self, rows: list[dict], bits: dict[str, np.ndarray]) -> None: ...


class RowContext(NamedTuple):
    """What every row of one network's sweep shares."""

    label: str
    seed: int
    n_classes: int
    n_boot: int
    run_key: str


def _row(c: LesionConfig, cnt: Optional[Counts], ctx: RowContext) -> dict:
    label, seed, n_classes, n_boot, run_key = ctx
    row = dict(model=label, mode=c.mode, deleted=c.label, k=c.k if c.k is not None else (0 if c.mode == "baseline"
               else None), kendall_tau=c.kendall_tau, seed=seed,
               order="" if c.order is None else " ".join(map(str, c.order)), note=c.note, run=run_key)
    if cnt is None or cnt.n == 0:
        row.update(error=None, loss=None, n_images=0 if cnt is None else cnt.n, n_wrong=None, ci_low=None,
                   ci_high=None, n_broken=None, n_fixed=None, p_mcnemar=None, top5_error=None)
        return row
    lo, hi = bootstrap_proportion_ci(cnt.wrong, cnt.n, n_boot=n_boot, seed=stable_seed(seed, c.key()))
    note = c.note
    if cnt.nonfinite:
        note = (note + "; " if note else "") + f"non-finite logits in {cnt.nonfinite} batches"
    row.update(error=cnt.wrong / cnt.n, loss=cnt.loss / cnt.n, n_images=cnt.n, n_wrong=cnt.wrong, ci_low=lo,
               ci_high=hi, n_broken=cnt.broken, n_fixed=cnt.fixed,
               p_mcnemar=None if c.mode == "baseline" else mcnemar_exact(cnt.broken, cnt.fixed),
               top5_error=(cnt.top5_wrong / cnt.n) if n_classes >= 10 else None, note=note)
    return row


_TEXT = ["model", "mode", "deleted", "order", "note", "run"]
_FLOAT = ["kendall_tau", "error", "loss", "ci_low", "ci_high", "top5_error", "p_mcnemar"]
_INT = ["k", "n_images", "n_wrong", "seed", "n_broken", "n_fixed"]
_MODE_RANK = {"baseline": 0, "single": 1, "set": 2, "random-k": 3, "reorder": 4, "prune": 5}


def typed(df: pd.DataFrame) -> pd.DataFrame:
    """One dtype per column, whether rows come from this run or from an earlier one's CSV."""
    df = df.reindex(columns=COLUMNS).copy()
    for c in _TEXT:
        df[c] = df[c].astype(object).where(df[c].notna(), "").astype(str)
    for c in _FLOAT:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    for c in _INT:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
    return df


def order_rows(df: pd.DataFrame, unit_order: Optional[dict] = None) -> pd.DataFrame:
    """Rows by model (first appearance), mode, k, then the deleted units in forward order."""
    models = {m: i for i, m in enumerate(dict.fromkeys(df["model"]))}
    pos = unit_order or {}
    df = df.assign(_m=df["mode"].map(_MODE_RANK).fillna(9), _o=df["model"].map(models),
                   _u=df["deleted"].map(lambda s: pos.get(s.split("+")[0], 10 ** 6) if s else -1))
    df = df.sort_values(["_o", "_m", "k", "_u", "deleted", "order"], kind="stable", na_position="first")
    return df.drop(columns=["_m", "_o", "_u"]).reset_index(drop=True)


def _settings(subject: Subject, data: Dataset, spec: RunSpec, plan: LesionPlan) -> tuple[str, dict]:
    """The run key ``<network settings>:<mode>:<mode settings>`` and the full settings behind it."""
    net = dict(model=subject.label, spec=subject.provenance.get("model"),
               weights_sha256=subject.provenance.get("weights_sha256"), normalize=subject.normalize,
               data=common.data_key(data), n_boot=spec.n_boot, seed=spec.seed, dtype=spec.dtype)
    mode = plan.describe()
    key = f"{common.settings_key(net)}:{plan.mode.value}:{common.settings_key(mode)}"
    return key, dict(network=net, mode=mode)


def _one(subject: Subject, data: Dataset, spec: RunSpec, plan: LesionPlan, store: Optional[Store],
         chunk: int) -> tuple[pd.DataFrame, dict, ResidualView]:
    view = anatomy(subject.model, data.input_shape)
    subject.model.to(spec.torch_device)
    distances = None
    if plan.mode is LesionMode.PRUNE:
        from .prune import range_distances
        distances = range_distances(view, data, spec, subject.normalize, plan.ks or (1,))
    try:
        configs = make_configs(view, plan, spec.seed, distances)
    except UsageError as e:
        raise UsageError(f"{subject.label}: {e.message}", e.hint) from e
    run_key, settings = _settings(subject, data, spec, plan)
    done = store.done(subject.label, run_key, settings) if store is not None and dist.is_main() else {}
    done = dist.broadcast(done)
    todo = [c for c in configs if c.key() not in done]
    todo.sort(key=lambda c: (not c.runnable, c.signature(len(view))))
    rows, bits = [], {}
    for s in range(0, len(todo), chunk):
        ch = todo[s:s + chunk]
        counts = sweep(view, data, ch, spec, subject.normalize,
                       f"lesion {plan.mode.value} {subject.label} ({s + len(ch)}/{len(todo)} configurations)")
        if not dist.is_main():
            continue
        ctx = RowContext(subject.label, spec.seed, data.num_classes, spec.n_boot, run_key)
        new = [_row(c, cnt, ctx) for c, cnt in zip(ch, counts)]
        newbits = {c.key(): np.packbits(cnt.bits) for c, cnt in zip(ch, counts) if cnt is not None}
        rows += new
        bits.update(newbits)
        if store is not None:
            store.add(new, newbits)
    wanted = {c.key() for c in configs}
    reused = [(k, r, b) for k, (r, b) in done.items() if k in wanted]
    for k, _, b in reused:
        if b is not None:
            bits[k] = b
    df = typed(pd.DataFrame([r for _, r, _ in reused] + rows, columns=COLUMNS))
    return order_rows(df, {u.name: u.index for u in view}), dict(bits=bits, reused=len(reused)), view


def _baseline_once(df: pd.DataFrame) -> pd.DataFrame:
    """One intact row per network when several plans each measured (or reused) it."""
    base = df["mode"] == "baseline"
    return df[~base | ~df.duplicated(["model", "mode"])]


def run(subjects: Sequence[Subject], data: Dataset, spec: RunSpec = RunSpec(),
        plan: LesionPlan | Sequence[LesionPlan] = LesionPlan(), store: Optional[Store] = None,
        chunk: int = 64) -> StudyResult:
    """Run one lesion plan, or several in turn, for each subject (a plan with ``residual_only`` skips networks
    without residual units); the long table has one row per configuration (``COLUMNS``) and the verdicts
    are those the modes in it allow, decided once over all of them. On token windows (``data`` a
    :class:`~resprobe.io.text.TextData`): :func:`resprobe.probes.lm_lesion.run_text`."""
    if isinstance(data, TextData):  # language models over token windows
        from .lm_lesion import run_text
        return run_text(subjects, data, spec, plan, store, chunk)
    plans = (plan,) if isinstance(plan, LesionPlan) else tuple(plan)
    common.check_labels(subjects)
    frames, views, bits, reused = [], {}, {}, {}
    for p in plans:
        for s in subjects:
            if p.residual_only and not any(u.residual for u in anatomy(s.model, data.input_shape)):
                continue
            df, ex, view = _one(s, data, spec, p, store, chunk)
            frames.append(df)
            views[s.label] = view
            bits.setdefault(s.label, {}).update(ex["bits"])
            reused[s.label] = reused.get(s.label, 0) + ex["reused"]
    detail = LesionDetail(bits, reused, 1 - 1 / data.num_classes)
    if not dist.is_main():
        return StudyResult("lesion", typed(pd.DataFrame(columns=COLUMNS)), detail=detail)
    table = typed(pd.concat(frames, ignore_index=True)) if frames else typed(pd.DataFrame(columns=COLUMNS))
    order = {lab: {u.name: u.index for u in v} for lab, v in views.items()}
    table = pd.concat([order_rows(_baseline_once(table[table["model"] == s.label]), order.get(s.label))
                       for s in subjects], ignore_index=True)
    _record_competence(subjects, table, data)
    roles = common.roles(subjects, views, data, spec)
    units = {lab: v.table() for lab, v in views.items()}
    return StudyResult("lesion", table, summary=summarize(table, units),
                       verdicts=verdicts(table, roles, units, detail.chance, spec, bits),
                       findings=findings(table, units, roles), provenance=common.provenance(subjects, data, spec),
                       settings=dict(plans[0].describe() if len(plans) == 1 else
                                     dict(plans=[p.describe() for p in plans]), chunk=chunk),
                       units=units, roles=roles, detail=detail)


def _record_competence(subjects: Sequence[Subject], table: pd.DataFrame, data: Dataset) -> None:
    """Competence from the sweep's own intact configuration (no extra pass)."""
    for s in subjects:
        base = table[(table["model"] == s.label) & (table["mode"] == "baseline")]
        if (len(base) and pd.notna(base["n_wrong"].iloc[0]) and int(base["n_images"].iloc[0]) == len(data)
                and not common.known_competence(s, data)):
            common.record_competence(s, data, int(base["n_wrong"].iloc[0]), len(data))


# --- verdicts --------------------------------------------------------------------------------------------

def verdicts(table: pd.DataFrame, roles: dict[str, Role], units: dict, chance: float, spec: RunSpec,
             bits: Optional[dict] = None) -> list:
    """The verdicts that the modes present in ``table`` allow (see :mod:`.lesion_verdicts`)."""
    out = []
    if (table["mode"] == "single").any():
        out += single_deletion_verdicts(table, roles, units, spec.n_boot, spec.seed, bits)
    if (table["mode"] == "random-k").any():
        out += no_cliff_verdicts(table, roles, chance, spec.n_boot, spec.seed)
    return out



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
``p_mcnemar``). With a ``store`` (see :mod:`resprobe.report.store`) finished configurations are
written chunk by chunk and a rerun resumes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from itertools import combinations
from typing import Optional, Protocol, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .. import distributed as dist
from .. import fmt
from ..anatomy import AnatomyError, Edits, ResidualView, anatomy, preserved_state
from ..engine import PerImageStore, RunSpec, batches, check_finite
from .. import checks
from ..errors import UsageError
from ..io.data import Dataset
from ..metrics.stats import bootstrap_proportion_ci, holm, mcnemar_exact, stable_seed
from ..study import StudyResult, Subject
from ..verdict import Role
from . import common
from .lesion_verdicts import (CLIFF_THRESHOLD, LESION_CONTRAST_MARGIN, LESION_RELATIVE_INCREASE, core_units,
                              no_cliff_verdicts, relative_increases, single_deletion_verdicts)

__all__ = ["LesionMode", "LesionPlan", "LesionConfig", "make_configs", "run", "sweep", "summarize", "COLUMNS",
           "single_deletion_verdicts", "no_cliff_verdicts", "verdicts", "relative_increases", "LESION_RELATIVE_INCREASE",
           "LESION_CONTRAST_MARGIN", "CLIFF_THRESHOLD"]

COLUMNS = ["model", "mode", "deleted", "k", "kendall_tau", "error", "loss", "n_images", "n_wrong", "ci_low",
           "ci_high", "n_broken", "n_fixed", "p_mcnemar", "seed", "top5_error", "order", "note", "run"]

class LesionMode(str, Enum):
    SINGLE = "single"
    SET = "set"
    RANDOM_K = "random-k"
    REORDER = "reorder"
    PRUNE = "prune-by-similarity"


@dataclass(frozen=True)
class LesionPlan:
    """What to delete: ``mode``; ``units`` (mode set: unit or block names); ``ks`` (random-k: numbers of
    deleted units; reorder: numbers of random swaps; prune: lengths of the deleted ranges); ``samples``
    per k; ``exclude_downsampling`` (random-k); ``granularity`` ``unit`` or ``block``."""

    mode: LesionMode = LesionMode.SINGLE
    units: tuple = ()
    ks: Optional[tuple] = None
    samples: int = 20
    exclude_downsampling: bool = False
    granularity: str = "unit"

    def __post_init__(self):
        checks.fields(self, ks=(0, 10 ** 6))
        try:
            object.__setattr__(self, "mode", LesionMode(self.mode))
        except ValueError:
            raise UsageError(f"unknown lesion mode {self.mode!r}",
                             f"choose one of {', '.join(m.value for m in LesionMode)}") from None
        if self.granularity not in ("unit", "block"):
            raise UsageError(f"granularity must be unit or block, got {self.granularity!r}")
        if self.samples < 1:
            raise UsageError(f"--samples must be >= 1, got {self.samples}")
        if self.mode is LesionMode.SET and not self.units:
            raise UsageError("--mode set needs the units to delete", "pass --units NAME,NAME,...")

    def describe(self) -> dict:
        return dict(mode=self.mode.value, units=list(self.units), ks=None if self.ks is None else list(self.ks),
                    samples=self.samples, exclude_downsampling=self.exclude_downsampling,
                    granularity=self.granularity)


@dataclass(frozen=True)
class LesionConfig:
    """One modified network: units deleted and/or residual branches permuted (``order[i]``: the unit
    whose branch unit ``i`` runs). ``label``: what the ``deleted`` column shows."""

    mode: str
    deleted: tuple = ()
    order: Optional[tuple] = None
    k: Optional[int] = None
    kendall_tau: Optional[float] = None
    note: str = ""
    label: str = ""

    @property
    def runnable(self) -> bool:
        return not self.note.startswith("not deletable")

    def edits(self) -> Edits:
        moved = {i: j for i, j in enumerate(self.order or ()) if i != j}
        return Edits(delete=frozenset(self.deleted), branch_from=moved)

    def signature(self, n: int) -> tuple:
        e = self.edits()
        return tuple(e.code(i) for i in range(n))

    def key(self) -> str:
        order = "" if self.order is None else " ".join(map(str, self.order))
        return f"{self.mode}|{self.label}|{order}"


class Store(Protocol):
    """Where a sweep keeps finished rows (see :class:`resprobe.report.store.LesionStore`)."""

    def done(self, model: str, run: str, settings: dict) -> dict[str, tuple[dict, Optional[np.ndarray]]]: ...

    def add(self, rows: list[dict], bits: dict[str, np.ndarray]) -> None: ...


# --- configurations -----------------------------------------------------------------------------------

def _kendall_tau(order: Sequence[int]) -> float:
    from scipy.stats import kendalltau
    return float(kendalltau(np.arange(len(order)), np.asarray(order)).statistic)


def _targets(view: ResidualView, granularity: str) -> list[tuple[str, tuple]]:
    """``(name, unit indices)`` of what one deletion removes: each unit, or each block."""
    if granularity == "unit":
        return [(u.name, (u.index,)) for u in view]
    return [(b.name, tuple(b.units)) for b in view.blocks]


def _deletable(view: ResidualView, units: tuple) -> str:
    """"" if all ``units`` can be deleted, else the reason."""
    for i in units:
        u = view[i]
        if u.kind == "transition":
            return "not deletable: non-residual transition"
        if not view.deletable(i):
            return "not deletable: plain unit changes shape"
    return ""


def _swap_groups(view: ResidualView) -> list[list[int]]:
    """Units whose residual branches can be exchanged: same kind, part and shapes (no downsampling)."""
    groups: dict = {}
    for u in view:
        if u.in_shape is None:
            raise AnatomyError("unit shapes unknown: call view.infer_shapes(input_shape) first")
        if tuple(u.in_shape) == tuple(u.out_shape) and u.kind != "transition":
            groups.setdefault((u.residual, u.part, tuple(u.in_shape)), []).append(u.index)
    return [g for g in groups.values() if len(g) >= 2]


def _check_ks(ks: Sequence[int], lo: int, hi: int, what: str) -> list[int]:
    bad = [k for k in ks if not lo <= k <= hi]
    if bad or not ks:
        raise UsageError(f"{what} must lie in {lo}..{hi}; got {bad or 'nothing'}")
    return sorted(set(int(k) for k in ks))


def make_configs(view: ResidualView, plan: LesionPlan, seed: int = 0,
                 distances: Optional[pd.DataFrame] = None) -> list[LesionConfig]:
    """The configurations of a plan (always starting with the unmodified baseline). ``distances``: the
    angular distances of :func:`resprobe.probes.prune.range_distances` (mode prune-by-similarity)."""
    n = len(view)
    base = LesionConfig(mode="baseline")
    rng = np.random.default_rng(seed)
    mode = plan.mode
    targets = _targets(view, plan.granularity)
    if mode is LesionMode.SINGLE:
        return [base] + [LesionConfig("single", idx, k=1, note=_deletable(view, idx), label=name)
                         for name, idx in targets]
    if mode is LesionMode.SET:
        idx = tuple(sorted(set(view.indices(plan.units))))
        bad = [view[i].name for i in idx if _deletable(view, (i,))]
        if bad:
            raise AnatomyError(f"units {', '.join(bad)} cannot be deleted (plain units that change shape, or "
                               "non-residual transitions)")
        return [base, LesionConfig("set", idx, k=len(idx), label="+".join(view[i].name for i in idx))]
    if mode is LesionMode.RANDOM_K:
        pool = [(name, idx) for name, idx in targets if not _deletable(view, idx)
                and not (plan.exclude_downsampling and any(view[i].downsample for i in idx))]
        if not pool:
            raise AnatomyError("no deletable unit: random deletions need residual units")
        ks = _check_ks(plan.ks or range(1, len(pool) + 1), 1, len(pool), "numbers of deleted units (--k)")
        return [base] + _random_k(pool, ks, plan.samples, rng)
    if mode is LesionMode.REORDER:
        groups = _swap_groups(view)
        if not groups:
            raise AnatomyError("no two units have the same kind and shapes: nothing can be reordered")
        pairs = [(a, b) for g in groups for ai, a in enumerate(g) for b in g[ai + 1:]]
        ks = _check_ks(plan.ks or range(1, n + 1), 1, 10 * n, "numbers of swaps (--k)")
        out = [base]
        for kk in ks:
            seen = set()
            for _ in range(plan.samples):
                order = list(range(n))
                for _ in range(kk):
                    a, b = pairs[rng.integers(len(pairs))]
                    order[a], order[b] = order[b], order[a]
                t = tuple(order)
                if t == tuple(range(n)) or t in seen:
                    continue
                seen.add(t)
                out.append(LesionConfig("reorder", order=t, k=kk, kendall_tau=_kendall_tau(t)))
        return out
    if distances is None:
        raise UsageError("mode prune-by-similarity needs the angular distances of the ranges")
    pool = [(view[i].name, (i,)) for i in range(n) if not _deletable(view, (i,))]
    out = [base]
    for kk in _check_ks(plan.ks or (1,), 1, len(pool), "lengths of the pruned ranges (--k)"):
        d = distances[(distances["metric"] == "angular_distance") & (distances["n"] == kk) & distances["deletable"]]
        if d.empty:
            continue
        best = d.loc[d["angular_distance"].idxmin()]
        idx = tuple(range(int(best["start"]), int(best["start"]) + kk))
        out.append(LesionConfig("prune", idx, k=kk, label="+".join(view[i].name for i in idx),
                                note=f"most similar range: angular distance {best['angular_distance']:.4f}"))
        out += _random_k(pool, [kk], plan.samples, rng)
    return out


def _random_k(pool: list[tuple[str, tuple]], ks: list[int], samples: int, rng) -> list[LesionConfig]:
    out = []
    for kk in ks:
        if math.comb(len(pool), kk) <= samples:
            subsets = list(combinations(range(len(pool)), kk))
        else:
            seen: set = set()
            subsets = []
            while len(subsets) < samples:
                s = tuple(sorted(rng.choice(len(pool), size=kk, replace=False).tolist()))
                if s not in seen:
                    seen.add(s)
                    subsets.append(s)
        for s in subsets:
            units = tuple(sorted(i for j in s for i in pool[j][1]))
            out.append(LesionConfig("random-k", units, k=kk, label="+".join(pool[j][0] for j in s)))
    return out


# --- the engine ---------------------------------------------------------------------------------------

def _common_prefix(a: tuple, b: tuple) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@torch.no_grad()
def stream_logits(view: ResidualView, x: torch.Tensor, configs: Sequence[LesionConfig], order: Sequence[int],
                  hs: Optional[list] = None, clean_logits: Optional[torch.Tensor] = None):
    """Yield ``(config index, logits)`` for one batch, in ``order``, reusing the unit inputs that a
    configuration shares with the previous one (the prefix tree of the sorted configurations). ``hs``,
    ``clean_logits``: the intact network's unit inputs and logits, when already computed."""
    n = len(view)
    hs = list(hs) if hs is not None else view.unit_inputs(x)
    prev_sig = tuple((0,) for _ in range(n))
    prev_logits = clean_logits
    for ci in order:
        c = configs[ci]
        sig = c.signature(n)
        L = _common_prefix(prev_sig, sig)
        if L == n and prev_logits is not None:
            yield ci, prev_logits
            continue
        edits = c.edits()
        del hs[L + 1:]
        for i in range(L, n):
            hs.append(view.run_unit(i, hs[i], edits))
        prev_logits = view.head(hs[n])
        prev_sig = sig
        yield ci, prev_logits


class _Counts:
    __slots__ = ("wrong", "loss", "n", "top5_wrong", "broken", "fixed", "nonfinite", "bits")

    def __init__(self):
        self.wrong, self.loss, self.n, self.top5_wrong, self.broken, self.fixed, self.nonfinite = 0, 0.0, 0, 0, 0, 0, 0
        self.bits = None

    def add(self, logits: torch.Tensor, y: torch.Tensor, base_wrong: torch.Tensor, finite: bool) -> torch.Tensor:
        """Count one batch; returns the per-image wrong bits."""
        logits = logits.float()
        w = logits.argmax(1) != y
        self.wrong += int(w.sum())
        self.broken += int((w & ~base_wrong).sum())
        self.fixed += int((~w & base_wrong).sum())
        self.loss += float(F.cross_entropy(logits, y, reduction="sum")) if finite else float("nan")
        self.nonfinite += int(not finite)
        self.n += len(y)
        if logits.shape[1] >= 10:
            self.top5_wrong += int((~(logits.topk(5, 1).indices == y[:, None]).any(1)).sum())
        return w

    def scalars(self) -> list:
        return [self.wrong, self.loss, self.n, self.top5_wrong, self.broken, self.fixed, self.nonfinite]


def sweep(view: ResidualView, data: Dataset, configs: Sequence[LesionConfig], spec: RunSpec, normalize: str,
          desc: str = "lesion") -> list[Optional[_Counts]]:
    """Counts (and per-image wrong bits, in data order) of every runnable configuration over ``data``;
    None for the others. In a distributed run the totals are on rank 0."""
    n = len(view)
    order = sorted((i for i, c in enumerate(configs) if c.runnable), key=lambda i: configs[i].signature(n))
    counts = {i: _Counts() for i in order}
    store = PerImageStore(len(data))
    with preserved_state(view.model), torch.no_grad(), spec.autocast():
        view.model.eval()
        for x, y, idx in batches(data, spec, normalize, desc):
            hs = view.unit_inputs(x)
            base = view.head(hs[-1])
            check_finite(base, "the intact network's logits", spec, lambda: common.locate_nonfinite(view, x))
            base_wrong = base.argmax(1) != y
            i_np = store.mark(idx)
            for ci, logits in stream_logits(view, x, configs, order, hs, base):
                finite = check_finite(logits, f"the logits of configuration {configs[ci].key()}", spec)
                store.put(ci, i_np, counts[ci].add(logits, y, base_wrong, finite))
    totals = dist.reduce_sum({i: c.scalars() for i, c in counts.items()})
    bits = dist.gather_rows(store.index(), {str(i): store.columns.get(i, np.zeros(len(data), bool))[store.index()]
                                            for i in counts})
    if totals is None:
        return [None] * len(configs)
    out: list[Optional[_Counts]] = [None] * len(configs)
    for i in order:
        c = _Counts()
        c.wrong, c.loss, c.n, c.top5_wrong, c.broken, c.fixed, c.nonfinite = totals[i]
        c.bits = bits[str(i)]
        out[i] = c
    return out


def _row(label: str, c: LesionConfig, cnt: Optional[_Counts], seed: int, n_classes: int, n_boot: int,
         run_key: str) -> dict:
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
        new = [_row(subject.label, c, cnt, spec.seed, data.num_classes, spec.n_boot, run_key)
               for c, cnt in zip(ch, counts)]
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


def run(subjects: Sequence[Subject], data: Dataset, spec: RunSpec = RunSpec(), plan: LesionPlan = LesionPlan(),
        store: Optional[Store] = None, chunk: int = 64) -> StudyResult:
    """Run a lesion sweep for each subject; the long table has one row per configuration (``COLUMNS``)."""
    common.check_labels(subjects)
    frames, views, extras = [], {}, {"bits": {}, "reused": {}}
    for s in subjects:
        df, ex, view = _one(s, data, spec, plan, store, chunk)
        frames.append(df)
        views[s.label] = view
        extras["bits"][s.label] = ex["bits"]
        extras["reused"][s.label] = ex["reused"]
    if not dist.is_main():
        return StudyResult("lesion", typed(pd.DataFrame(columns=COLUMNS)), extras=extras)
    table = pd.concat(frames, ignore_index=True) if frames else typed(pd.DataFrame(columns=COLUMNS))
    for s in subjects:  # competence from the sweep's own intact configuration (no extra pass)
        base = table[(table["model"] == s.label) & (table["mode"] == "baseline")]
        if (len(base) and pd.notna(base["n_wrong"].iloc[0]) and int(base["n_images"].iloc[0]) == len(data)
                and not common.known_competence(s, data)):
            common.record_competence(s, data, int(base["n_wrong"].iloc[0]), len(data))
    roles = common.roles(subjects, views, data, spec)
    units = {lab: v.table() for lab, v in views.items()}
    chance = 1 - 1 / data.num_classes
    extras.update(units=units, roles=roles, chance=chance)
    return StudyResult("lesion", table, summary=summarize(table, units),
                       verdicts=verdicts(table, roles, units, chance, spec, extras["bits"]),
                       findings=findings(table, units, roles), provenance=common.provenance(subjects, data, spec),
                       settings=dict(plan.describe(), chunk=chunk), extras=extras)


# --- summaries, findings, verdicts --------------------------------------------------------------------

def verdicts(table: pd.DataFrame, roles: dict[str, Role], units: dict, chance: float, spec: RunSpec,
             bits: Optional[dict] = None) -> list:
    """The verdicts that the modes present in ``table`` allow (see :mod:`.lesion_verdicts`)."""
    out = []
    if (table["mode"] == "single").any():
        out += single_deletion_verdicts(table, roles, units, spec.n_boot, spec.seed, bits)
    if (table["mode"] == "random-k").any():
        out += no_cliff_verdicts(table, roles, chance, spec.n_boot, spec.seed)
    return out


def summarize(table: pd.DataFrame, units: dict[str, list[dict]]) -> dict:
    """Per model: baseline error, median and worst single deletion, downsampling units, random-k and
    reorder medians, single deletions that change the error significantly (exact McNemar, Holm)."""
    out = {}
    for model, g in table.groupby("model", sort=False):
        s: dict = {}
        base = g[g["mode"] == "baseline"]
        if len(base):
            s["baseline_error"] = float(base["error"].iloc[0])
        single = g[(g["mode"] == "single") & g["error"].notna()]
        tab = units.get(model, [])
        if len(single):
            worst = single.loc[single["error"].idxmax()]
            s["worst_unit"] = dict(unit=worst["deleted"], error=float(worst["error"]))
            core = single[single["deleted"].isin(core_units(tab))]
            s["median_single_deletion_error"] = float(core["error"].median()) if len(core) else None
            ds = {u["name"] for u in tab if u["downsample"]}
            s["downsampling_units"] = {r["deleted"]: float(r["error"]) for _, r in single.iterrows()
                                       if r["deleted"] in ds}
            p = holm(single["p_mcnemar"].fillna(1.0).to_numpy())
            sig = single.assign(p_holm=p)[p < 0.05]
            s["significant_single_deletions"] = {
                r["deleted"]: dict(error=float(r["error"]), p_holm=float(r["p_holm"]),
                                   direction="raises" if r["n_broken"] > r["n_fixed"] else "lowers")
                for _, r in sig.iterrows()}
        for mode, key in (("random-k", "random_k_median_error"), ("reorder", "reorder_median_error_by_swaps"),
                          ("prune", "pruned_range_error")):
            m = g[g["mode"] == mode]
            if len(m):
                s[key] = {int(k): float(v) for k, v in m.groupby("k")["error"].median().items()}
        out[str(model)] = s
    return out


def _worst(table: pd.DataFrame, model: str) -> str:
    """The costliest single deletion, ranked against the next only where the CIs separate them."""
    g = table[(table["model"] == model) & (table["mode"] == "single") & table["error"].notna()]
    g = g.sort_values("error", ascending=False)
    a = g.iloc[0]
    text = f"costliest single deletion {a['deleted']} {fmt.ci(a['error'], a['ci_low'], a['ci_high'], 4)}"
    if len(g) > 1:
        b = g.iloc[1]
        text += (f", above the next ({b['deleted']} {b['error']:.4f}, CIs separate)" if a["ci_low"] > b["ci_high"]
                 else f", not distinguishable from {b['deleted']} {fmt.ci(b['error'], b['ci_low'], b['ci_high'], 4)}")
    return text


def findings(table: pd.DataFrame, units: dict[str, list[dict]], roles: dict[str, Role]) -> list[str]:
    out = []
    summ = summarize(table, units)
    for model, s in summ.items():
        if "baseline_error" not in s:
            continue
        b, inc = relative_increases(table, model, units[model])
        line = f"{model}: intact error {s['baseline_error']:.4f}"
        if s.get("median_single_deletion_error") is not None:
            line += (f"; median single deletion {s['median_single_deletion_error']:.4f} (median relative increase "
                     f"{fmt.num(inc.median())} over {len(inc)} non-downsampling units)")
        if "worst_unit" in s:
            line += "; " + _worst(table, model)
        out.append(line + ".")
        sig = s.get("significant_single_deletions", {})
        lowers = [u for u, d in sig.items() if d["direction"] == "lowers"]
        if "significant_single_deletions" in s:
            out.append(f"{model}: {len(sig)} single deletions change the error significantly (exact McNemar test "
                       f"against the intact network, Holm-corrected p < 0.05); "
                       + (f"{len(lowers)} lower it ({', '.join(lowers)})." if lowers else "none lowers it."))
        if "random_k_median_error" in s:
            out.append(f"{model}: median error after k random deletions: "
                       + ", ".join(f"k={k}: {v:.3f}" for k, v in s["random_k_median_error"].items()) + ".")
        if "pruned_range_error" in s:
            rk = s.get("random_k_median_error", {})
            out.append(f"{model}: deleting the most similar consecutive range of k units: "
                       + ", ".join(f"k={k}: {v:.3f} (random k: median {rk.get(k, float('nan')):.3f})"
                                   for k, v in s["pruned_range_error"].items()) + ".")
    return out

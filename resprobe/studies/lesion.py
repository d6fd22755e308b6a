"""The lesion study (Veit et al. 2016): delete, sample and reorder residual units."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd

from .. import distributed as dist
from .. import figures
from ..anatomy import anatomy
from ..flags import RangeSpec, positive_int, str_list
from ..probes import lesion
from ..probes.lesion_store import LesionStore
from ..progress import note
from ..study import Command, Figure, Invocation, ReportRun, Study, StudyResult
from . import register
from ._common import has, used, competent_on_all

# the full report's budgets: images (None: all), random deletions k and subsets per k
BUDGET = {"fast": (500, (1, 2, 4, 8), 5), "full": (None, tuple(range(1, 21)), 20)}


def report(run: ReportRun) -> StudyResult:
    """Random-k deletions on the residual networks, then every single deletion, in one sweep per network;
    the verdicts are decided once over both."""
    images, randomk, samples = BUDGET[run.budget]
    residual = run.residual()
    n = min(sum(u.residual for u in run.view(s)) for s in residual) if residual else 0
    ks = tuple(k for k in randomk if k <= n)
    plans = [lesion.LesionPlan(lesion.LesionMode.RANDOM_K, ks=ks, samples=samples, residual_only=True)] if ks else []
    plans.append(lesion.LesionPlan(lesion.LesionMode.SINGLE))
    store = LesionStore(run.out) if dist.is_main() else None
    r = lesion.run(run.subjects, run.capped(images), run.spec, plans, store)
    r.settings = dict(modes=[p.mode.value for p in plans], ks=list(ks), samples=samples)
    return r


# the language-model report: token windows, and the pruning rules' choices of n layers (random choices per n)
TEXT_BUDGET = {"fast": (16, (), 0), "full": (64, (1, 2, 4, 8), 10)}   # fast: single deletions only


def text_report(run: ReportRun) -> StudyResult:
    """Language models: every single deletion (sublayers; each path of a parallel layer) with the verdicts,
    then the pruning rules against the true single-deletion effects on the residual models (for the figure
    of similarity against effect)."""
    from ..probes.lm_lesion import TextDetail
    from ..probes.lm_store import TextStore
    competent_on_all(run)
    windows, ns, samples = TEXT_BUDGET[run.budget]
    data = run.capped(windows)
    store = TextStore(run.out) if dist.is_main() else None
    r = lesion.run(run.subjects, data, run.spec, [lesion.LesionPlan(lesion.LesionMode.SINGLE)], store)
    residual = run.residual()
    n = min((len(run.view(s).blocks) for s in residual), default=0)
    ks = tuple(k for k in ns if k <= n - 2)
    if residual and ks:
        p = lesion.run(residual, data, run.spec, lesion.LesionPlan(lesion.LesionMode.PRUNE, ks=ks, samples=samples),
                       store)
        if dist.is_main():
            d1, d2 = r.detail, p.detail
            r = dataclasses.replace(r, table=pd.concat([r.table, p.table[p.table["mode"] != "baseline"]],
                                                       ignore_index=True),
                                    findings=r.findings + p.findings,
                                    detail=TextDetail({k: {**d1.sums.get(k, {}), **d2.sums.get(k, {})}
                                                       for k in {**d1.sums, **d2.sums}}, d1.docs,
                                                      {k: d1.reused.get(k, 0) + d2.reused.get(k, 0)
                                                       for k in {**d1.reused, **d2.reused}}, d2.tables))
    return r


def text_budget(name: str, n: int) -> str:
    windows, ns, samples = TEXT_BUDGET[name]
    return f"single deletions on {used(windows, n)} token windows" + (
        f"; pruning n = {', '.join(map(str, ns))} layers by each similarity rule against {samples} random choices "
        "and the oracle" if ns else "")


def budget(name: str, n: int) -> str:
    images, randomk, samples = BUDGET[name]
    return (f"lesions on {used(images, n)} images; random deletions k = {', '.join(map(str, randomk))} "
            f"({samples} subsets each)")


def _images(r: StudyResult) -> bool:
    return not r.settings.get("text")


def _text_files(result: StudyResult, out: Path) -> list[Path]:
    """Language models: the pruning judgment's tables as ``lesion.<name>.csv``."""
    from ..io.tables import write_table
    tables = getattr(result.detail, "tables", None) or {}
    return [write_table(t, out / f"lesion.{name}.csv") for name, t in tables.items() if len(t)]


def _text_tables(result: StudyResult) -> list:
    tables = getattr(result.detail, "tables", None) or {}
    names = {"correlations": "Does the similarity ranking predict the damage? (Spearman, 95% CI over documents)",
             "pruning": "Pruning n layers: each rule against random choices and the oracle (loss increase, nats)"}
    return [(names[k], t.drop(columns=[c for c in ("pruned",) if c in t])) for k, t in tables.items()
            if len(t) and k in names]


def _merge_text(result: StudyResult, out: Path) -> StudyResult:
    """A language model's rows of other (network, mode) pairs already in ``lesion.csv`` are kept."""
    from ..probes import lm_lesion
    path = out / "lesion.csv"
    if not path.is_file():
        return result
    try:
        old = pd.read_csv(path, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return result
    if "delta_loss" not in old.columns:
        return result
    mine = set(zip(result.table["model"], result.table["mode"]))
    keep = old[[(m, mode) not in mine and mode != "baseline" or m not in set(result.table["model"])
                for m, mode in zip(old["model"], old["mode"])]]
    table = lm_lesion.typed(pd.concat([result.table, keep], ignore_index=True))
    return dataclasses.replace(result, table=lm_lesion.order_text(table, list(dict.fromkeys(table["model"]))))


def merge(result: StudyResult, out: Path) -> StudyResult:
    """The folder's lesion files describe every run in it: rows (and unit tables) of other (network, mode)
    pairs are kept, and the figures show them all (images; a language model's run writes its own table)."""
    if not _images(result):
        return _merge_text(result, out)
    table = result.table
    old = LesionStore(out).rows()
    units = dict(result.units)
    meta = out / "lesion.json"
    if meta.is_file():
        try:
            units = {**(json.loads(meta.read_text()).get("units") or {}), **units}
        except ValueError:
            pass
    if not old.empty:
        mine = set(zip(table["model"], table["mode"]))
        keep = old[[(m, mode) not in mine and not (mode == "baseline" and m in set(table["model"]))
                    for m, mode in zip(old["model"], old["mode"])]]
        table = lesion.order_rows(lesion.typed(pd.concat([keep, table], ignore_index=True)))
        table = table[table["model"].isin(units)] if units else table
    return dataclasses.replace(result, table=table, units=units)


def add_arguments(q) -> None:
    q.add_argument("--mode", default="single", choices=[m.value for m in lesion.LesionMode],
                   help="single: each unit alone; set: --units together; random-k: k random units; reorder: k "
                        "random swaps of branches; prune-by-similarity: the most similar range of k units vs random k "
                        "(language models: Gromov, ShortGPT and LLM-Drop rankings judged against the true effects); "
                        "Painters' edits of the k middle blocks: skip, parallel (mean and sum), repeat (the centre "
                        "block), middle-reversed")
    q.add_argument("--units", "--blocks", type=str_list, help="mode set: unit or block names, comma separated")
    q.add_argument("--k", type=RangeSpec, help="random-k/prune: numbers of deleted units (language models, prune: of "
                                               "layers); reorder: numbers of swaps; Painters' modes: numbers of middle "
                                               "blocks. "
                                               "K, LO:HI (inclusive), LO:HI:STEP or a,b,c; n = number of units "
                                               "(default: 1:n)")
    q.add_argument("--samples", type=positive_int, default=20, help="random subsets or orders per k")
    q.add_argument("--exclude-downsampling", action="store_true", help="random-k: never delete downsampling units")
    q.add_argument("--granularity", default="unit", choices=["unit", "block"],
                   help="delete units, or whole blocks (a transformer block's attention and MLP together)")


def _counts_layers(mode: str) -> bool:
    """Whether ``--k`` counts layers (blocks) rather than units: pruning a language model, Painters' edits."""
    return mode in ("prune-by-similarity", "skip", "parallel", "repeat", "middle-reversed")


def _text(inv: Invocation, data, subjects, plan_of) -> StudyResult:
    """Language models over token windows (:mod:`resprobe.probes.lm_lesion`; prune-by-similarity:
    :mod:`resprobe.probes.lm_prune`)."""
    from ..probes.lm_store import TextStore
    views = [anatomy(s.model, (data.seq_len,)) for s in subjects]
    n = min(len(v.blocks) if _counts_layers(inv.args.mode) else len(v) for v in views)
    return lesion.run(subjects, data, inv.spec, plan_of(n), TextStore(inv.out) if dist.is_main() else None)


def execute(inv: Invocation) -> StudyResult:
    args = inv.args
    data, subjects = inv.load()

    def plan_of(n: int):
        ks = args.k.resolve(10 * n if args.mode == "reorder" else n, lo=1) if args.k else None
        return lesion.LesionPlan(args.mode, units=args.units or (), ks=ks, samples=args.samples,
                                 exclude_downsampling=args.exclude_downsampling, granularity=args.granularity)
    if not hasattr(data, "input_shape"):
        result = _text(inv, data, subjects, plan_of)
        n_reused = result.detail.reused if result.detail else {}
        for label, k in n_reused.items():
            if k:
                note(f"{label}: resumed — {k} configurations reused from {inv.out / 'lesion.text.npz'}")
        return result
    plan = plan_of(min(len(anatomy(s.model)) for s in subjects))
    result = lesion.run(subjects, data, inv.spec, plan, LesionStore(inv.out) if dist.is_main() else None)
    for label, n_reused in (result.detail.reused if result.detail else {}).items():
        if n_reused:
            note(f"{label}: resumed — {n_reused} configurations reused from {inv.out / 'lesion.csv'}")
    return result


STUDY = register(Study(
    name="lesion", order=10, title="Lesions: deleting, sampling and reordering residual units (Veit et al. 2016)",
    run=lesion.run, options=lesion.LesionPlan,
    verdict_keys=("lesion-single", "lesion-contrast", "lesion-random-k"),
    figures=(
        Figure("lesion_single", lambda r: figures.lesion_single_plot(r.table, r.units)
               if _images(r) and has(r, "mode", "single") else None,
               "Test error when one unit is deleted (band: 95% CI over images), units placed by stage; dashed: the "
               "intact network; squares: downsampling units; crosses: units that cannot be deleted. Look for a flat "
               "curve near the intact error (an ensemble of paths) against a jump to chance (a plain network)."),
        Figure("lesion_random_k", lambda r: figures.lesion_random_k_plot(r.table)
               if _images(r) and has(r, "mode", "random-k") else None,
               "Median test error after deleting k random units (band: interquartile range over the sampled "
               "subsets). Look for a smooth rise without a cliff."),
        Figure("lesion_reorder", lambda r: figures.lesion_reorder_plot(r.table)
               if _images(r) and has(r, "mode", "reorder") else None,
               "Test error against the Kendall τ between the shuffled and the original unit order (dots: single "
               "orders; line: binned median). Look for a gradual rise as τ falls."),
        Figure("lesion_lm_single", lambda r: None if _images(r) else figures.lm_single_plot(r.table, r.units),
               "Language model: loss increase (nats per token, symmetric log scale) when one attention sublayer "
               "(dots, left), one MLP sublayer (squares, right) or one whole layer (open diamonds) is deleted; bars: "
               "95% CI resampling documents. Look for which layers are indispensable (the papers: the first and "
               "the last) and how small the middle ones' effects are."),
        Figure("lesion_lm_painters", lambda r: None if _images(r) else figures.lm_painters_plot(r.table),
               "Language model: loss increase of Painters' edits of the k middle layers (skip; parallel, outputs "
               "averaged or updates summed; the centre layer repeated; order reversed) against k; band: 95% CI "
               "over documents. Look for which edits degrade gracefully."),
        Figure("lesion_lm_random_k", lambda r: None if _images(r) else figures.lm_random_k_plot(r.table),
               "Language model: median loss increase after deleting k random units (band: interquartile range over "
               "the draws). Look for a smooth rise without a cliff."),
        Figure("lesion_lm_pruning", lambda r: None if _images(r) else figures.lm_prune_plot(
               r.detail.tables.get("pruning") if r.detail is not None else None),
               "Language model: loss increase after pruning n layers as each similarity rule chooses (bars: 95% CI "
               "over documents), against the median of random choices of n layers (hatched) and the n layers of "
               "smallest single-deletion effect (oracle). A rule worth using beats random and nears the oracle."),
        Figure("lesion_lm_similarity", lambda r: None if _images(r) else figures.lm_similarity_plot(
               r.detail.tables.get("similarity") if r.detail is not None else None),
               "Language model: each pruning rule's value per layer (per sublayer for LLM-Drop) against the true loss "
               "increase of deleting it alone (colour: position). A rule that predicts the damage puts the points "
               "on a rising curve; look at the middle layers, not only the first and last."),
    ),
    sections={"lesion-single": ("lesion_single", "lesion_lm_single", "lesion_lm_similarity"),
              "lesion-contrast": ("lesion_single", "lesion_lm_single"), "lesion-random-k": ("lesion_random_k",)},
    report=report, budget=budget, text_report=text_report, text_budget=text_budget, merge=merge, json=lambda r: {"units": r.units}, files=_text_files,
    tables=_text_tables, text=True,
    command=Command("delete, sample or reorder residual units (Veit et al. 2016)", add_arguments, execute,
                    same_settings=False),
))

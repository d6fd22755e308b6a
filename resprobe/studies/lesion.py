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
from ._common import has, used

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


def budget(name: str, n: int) -> str:
    images, randomk, samples = BUDGET[name]
    return (f"lesions on {used(images, n)} images; random deletions k = {', '.join(map(str, randomk))} "
            f"({samples} subsets each)")


def merge(result: StudyResult, out: Path) -> StudyResult:
    """The folder's lesion files describe every run in it: rows (and unit tables) of other (network, mode)
    pairs are kept, and the figures show them all."""
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
                        "random swaps of branches; prune-by-similarity: the most similar range of k units vs random k")
    q.add_argument("--units", "--blocks", type=str_list, help="mode set: unit or block names, comma separated")
    q.add_argument("--k", type=RangeSpec, help="random-k/prune: numbers of deleted units; reorder: numbers of swaps. "
                                               "K, LO:HI (inclusive), LO:HI:STEP or a,b,c; n = number of units "
                                               "(default: 1:n)")
    q.add_argument("--samples", type=positive_int, default=20, help="random subsets or orders per k")
    q.add_argument("--exclude-downsampling", action="store_true", help="random-k: never delete downsampling units")
    q.add_argument("--granularity", default="unit", choices=["unit", "block"],
                   help="delete units, or whole blocks (a transformer block's attention and MLP together)")


def execute(inv: Invocation) -> StudyResult:
    args = inv.args
    data, subjects = inv.load()
    n = min(len(anatomy(s.model)) for s in subjects)
    ks = args.k.resolve(10 * n if args.mode == "reorder" else n, lo=1) if args.k else None
    plan = lesion.LesionPlan(args.mode, units=args.units or (), ks=ks, samples=args.samples,
                             exclude_downsampling=args.exclude_downsampling, granularity=args.granularity)
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
               if has(r, "mode", "single") else None,
               "Test error when one unit is deleted (band: 95% CI over images), units placed by stage; dashed: the "
               "intact network; squares: downsampling units; crosses: units that cannot be deleted. Look for a flat "
               "curve near the intact error (an ensemble of paths) against a jump to chance (a plain network)."),
        Figure("lesion_random_k", lambda r: figures.lesion_random_k_plot(r.table)
               if has(r, "mode", "random-k") else None,
               "Median test error after deleting k random units (band: interquartile range over the sampled "
               "subsets). Look for a smooth rise without a cliff."),
        Figure("lesion_reorder", lambda r: figures.lesion_reorder_plot(r.table) if has(r, "mode", "reorder") else None,
               "Test error against the Kendall τ between the shuffled and the original unit order (dots: single "
               "orders; line: binned median). Look for a gradual rise as τ falls."),
    ),
    sections={"lesion-single": ("lesion_single",), "lesion-contrast": ("lesion_single",),
              "lesion-random-k": ("lesion_random_k",)},
    report=report, budget=budget, merge=merge, json=lambda r: {"units": r.units},
    command=Command("delete, sample or reorder residual units (Veit et al. 2016)", add_arguments, execute,
                    same_settings=False),
))

"""The layer-pruning metrics (Gromov et al. 2024; Men et al. 2024): similarity of unit ranges."""
from __future__ import annotations

from .. import figures
from ..flags import int_list
from ..probes import prune
from ..study import Command, Figure, Invocation, Study, StudyResult
from . import register


def add_arguments(q) -> None:
    q.add_argument("--n", type=int_list, default=None, help="range lengths (default: 1,2,4, those that fit the network)")


def execute(inv: Invocation) -> StudyResult:
    data, subjects = inv.load()
    return prune.run(subjects, data, inv.spec, inv.options)


STUDY = register(Study(
    name="prune", order=60, title="Layer-pruning metrics (Gromov et al. 2024; Men et al. 2024)",
    run=prune.run, options=prune.PruneOptions,
    figures=(Figure("prune", lambda r: figures.prune_plot(r.table, r.units) if r.units else None,
                    "Left: angular distance between the inputs of unit ℓ and unit ℓ + n (band: 95% CI over images); "
                    "the smallest marks the most prunable range. Right: block influence per unit."),),
    command=Command("angular distance between unit ranges and block influence (Gromov et al.; ShortGPT)",
                    add_arguments, execute, options=lambda a: prune.PruneOptions(ns=a.n)),
))

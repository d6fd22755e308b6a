"""The paths study (Veit et al. 2016 Fig. 6): path lengths and the gradient each length carries."""
from __future__ import annotations

import json
from pathlib import Path


from .. import figures
from ..anatomy import anatomy
from ..flags import RangeSpec, fraction, positive_int
from ..io.atomic import write_text
from ..probes import paths
from ..study import Command, Figure, Invocation, ReportRun, Study, StudyResult
from . import register
from ._common import used, competent_on_all

BUDGET = {"fast": (64, 5), "full": (512, 20)}   # images, routings per path length


def report(run: ReportRun) -> StudyResult:
    images, samples = BUDGET[run.budget]
    return paths.run(run.residual(), run.capped(images), run.spec.replace(batch_size=64),
                     paths.PathsOptions(samples=samples))


TEXT_BUDGET = {"fast": (4, 2), "full": (16, 5)}   # token windows, routings per path length


def text_report(run: ReportRun) -> StudyResult:
    competent_on_all(run)
    windows, samples = TEXT_BUDGET[run.budget]
    return paths.run(run.residual(), run.capped(windows), run.spec, paths.PathsOptions(samples=samples))


def text_budget(name: str, n: int) -> str:
    windows, samples = TEXT_BUDGET[name]
    return f"paths on {used(windows, n)} token windows ({samples} routings per length)"


def budget(name: str, n: int) -> str:
    images, samples = BUDGET[name]
    return f"paths on {used(images, n)} images ({samples} routings per length)"


def files(result: StudyResult, out: Path) -> list[Path]:
    """Each network's unraveled graph, as GraphML and node-link JSON."""
    import networkx as nx
    written = []
    for label, g in (result.detail.graphs if result.detail else {}).items():
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
        nx.write_graphml(g, out / f"graph_{safe}.graphml")
        write_text(out / f"graph_{safe}.json", json.dumps(nx.node_link_data(g, edges="links"), indent=1))
        written += [out / f"graph_{safe}.graphml", out / f"graph_{safe}.json"]
    return written


def add_arguments(q) -> None:
    q.add_argument("--samples", type=positive_int, default=20, help="routings sampled per path length k")
    q.add_argument("--k", type=RangeSpec, help="path lengths (K, LO:HI, a,b,c; n = number of residual units); "
                                               "default: every length 0:n")
    q.add_argument("--share", type=fraction, default=0.9, help="gradient share of the effective range (80%%, 90%% "
                                                               "and 95%% are reported too)")


def execute(inv: Invocation) -> StudyResult:
    data, subjects = inv.load()
    n = min(sum(u.residual for u in anatomy(s.model)) for s in subjects)
    options = paths.PathsOptions(ks=inv.args.k.resolve(n) if inv.args.k else None, samples=inv.args.samples,
                                 share=inv.args.share)
    return paths.run(subjects, data, inv.spec, options)


STUDY = register(Study(
    name="paths", order=20, title="Path lengths and the gradient they carry (Veit et al. 2016 Fig. 6)",
    run=paths.run, options=paths.PathsOptions, verdict_keys=("paths",),
    figures=(Figure("paths", lambda r: figures.paths_plots(r.table),
                    "(a) Number of paths of each length (binomial); (b) gradient magnitude carried by one path of "
                    "length k (band: 95% CI over images and routings); (c) the total by length (band: 95% CI). Look "
                    "at where (c) peaks against where (a) does."),),
    sections={"paths": ("paths",)}, report=report, budget=budget, files=files, text=True,
    text_report=text_report, text_budget=text_budget,
    command=Command("path lengths and the gradient per path length (Veit et al. 2016 Fig. 6)", add_arguments,
                    execute, batch_size=64),
))

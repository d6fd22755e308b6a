"""The amplification study: is a residual unit a differential amplifier of small perturbations?"""
from __future__ import annotations

from .. import figures
from ..flags import float_list, positive_int
from ..probes import amplify
from ..study import Command, Figure, Invocation, ReportRun, Study, StudyResult
from . import register
from ._common import has, used, competent_on_all

BUDGET = {"fast": (64, 5), "full": (512, 10)}   # images, power iterations


def report(run: ReportRun) -> StudyResult:
    images, iters = BUDGET[run.budget]
    return amplify.run(run.subjects, run.capped(images), run.spec.replace(batch_size=128),
                       amplify.AmplifyOptions(power_iters=iters))


TEXT_BUDGET = {"fast": (8, 5), "full": (32, 10)}   # token windows, power iterations


def text_report(run: ReportRun) -> StudyResult:
    competent_on_all(run)
    windows, iters = TEXT_BUDGET[run.budget]
    return amplify.run(run.subjects, run.capped(windows), run.spec, amplify.AmplifyOptions(power_iters=iters))


def text_budget(name: str, n: int) -> str:
    windows, iters = TEXT_BUDGET[name]
    return f"amplification on {used(windows, n)} token windows ({iters} power iterations)"


def budget(name: str, n: int) -> str:
    images, iters = BUDGET[name]
    return f"amplification on {used(images, n)} images ({iters} power iterations)"


def add_arguments(q) -> None:
    q.add_argument("--eps", type=float_list, default=(1e-4, 1e-3, 1e-2), help="relative perturbation sizes")
    q.add_argument("--power-iters", type=positive_int, default=10, help="power iterations for Jacobian spectral norms")


def execute(inv: Invocation) -> StudyResult:
    data, subjects = inv.load()
    return amplify.run(subjects, data, inv.spec, inv.options)


STUDY = register(Study(
    name="amplify", order=40, title="Perturbation amplification: the differential-amplifier conjecture",
    run=amplify.run, options=amplify.AmplifyOptions, verdict_keys=("amplify",),
    figures=(
        Figure("amplify_kappa", lambda r: figures.amplify_kappa_plot(r.table, r.units),
               "κ per unit — the relative change of the branch per relative change of its input — for random and "
               "worst-case directions (bands: 95% CI over images), residual networks and plain twins alike. The "
               "verdict compares matched units."),
        Figure("amplify_gains", lambda r: figures.amplify_gains_plot(r.table, r.units),
               "Per-unit gains ‖Δout‖/‖Δin‖ of the unit and of its branch, for random and worst-case directions "
               "(bands: 95% CI). A gain near 1 for the unit with a small branch gain is the identity shortcut "
               "carrying the perturbation."),
        Figure("amplify_cumulative", lambda r: None if r.settings.get("text") else
               figures.amplify_cumulative_plot(r.table, r.units),
               "End-to-end gains: from the image to each unit's output, and from each unit's input to the logits "
               "(bands: 95% CI)."),
        Figure("amplify_arithmetic", lambda r: figures.amplify_arithmetic_plot(r.table)
               if has(r, "metric", "amplifier_ratio") else None,
               "The arithmetic reading: the ratio (‖ΔF‖/‖F‖)/(‖Δy‖/‖y‖) against ‖y‖/‖F‖ for residual units (bars: "
               "95% CI). Points near the diagonal show that the ratio restates ‖y‖/‖F‖; it is not evidence. Plain "
               "units have no shortcut and no such ratio."),
    ),
    sections={"amplify": ("amplify_kappa", "amplify_gains", "amplify_arithmetic")}, report=report, budget=budget, text=True,
    text_report=text_report, text_budget=text_budget,
    json=lambda r: {"timing": r.detail.timing if r.detail else None},
    command=Command("perturbation gains per unit: is a residual unit a differential amplifier?", add_arguments,
                    execute, batch_size=64,
                    options=lambda a: amplify.AmplifyOptions(eps=a.eps, power_iters=a.power_iters)),
))

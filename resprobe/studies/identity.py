"""The identity study (He et al. 2016 Fig. 7; Jastrzebski et al. 2018): how close each unit is to the identity."""
from __future__ import annotations

import pandas as pd

from .. import checks, figures, fmt
from ..flags import int_or_all, positive_int, str_list, typed
from ..probes import identity
from ..study import Command, Figure, Invocation, ReportRun, Study, StudyResult
from . import register
from ._common import has, used, competent_on_all

BUDGET = {"fast": 500, "full": None}   # images


def report(run: ReportRun) -> StudyResult:
    return identity.run(run.subjects, run.capped(BUDGET[run.budget]), run.spec, lesions=run.results.get("lesion"))


TEXT_BUDGET = {"fast": 32, "full": 128}   # token windows


def text_report(run: ReportRun) -> StudyResult:
    competent_on_all(run)
    from ..probes import lm_identity
    return lm_identity.run_text(run.subjects, run.capped(TEXT_BUDGET[run.budget]), run.spec)


def text_budget(name: str, n: int) -> str:
    return f"identity and the logit lens on {used(TEXT_BUDGET[name], n)} token windows"


def budget(name: str, n: int) -> str:
    return f"identity on {used(BUDGET[name], n)} images"


def wide(result: StudyResult) -> list[tuple[str, pd.DataFrame]]:
    """Every per-unit metric as ``mean [95% CI]``, one row per unit in forward order."""
    d = result.table[result.table["metric"] != "response_std"]
    if d.empty:
        return [("Per-unit metrics (mean over images [95% CI]), in forward order", d)]
    d = d.assign(shown=[fmt.ci(v, lo, hi) for v, lo, hi in zip(d["value"], d["ci_low"], d["ci_high"])])
    w = d.pivot_table(index=["model", "unit"], columns="metric", values="shown", aggfunc="first", sort=False)
    return [("Per-unit metrics (mean over images [95% CI]), in forward order", w.reset_index())]


def _text(r: StudyResult) -> bool:
    return bool(r.settings.get("text"))


def _metric(metric: str, caption: str) -> Figure:
    return Figure(f"identity_{metric}",
                  lambda r: figures.identity_metric_plot(r.table, metric, r.units,
                                                         r.settings.get("threshold") if metric == "residual_ratio"
                                                         else None) if has(r, "metric", metric) and not _text(r)
                  else None, caption)


def _lens(r: StudyResult, name: str):
    d = r.detail if _text(r) else None
    return None if d is None else getattr(d, name)


def _text_files(result: StudyResult, out) -> list:
    """Language models: the logit lens and the per-position means as ``identity.lens.csv``, ``identity.positions.csv``."""
    from ..io.tables import write_table
    if not _text(result) or result.detail is None:
        return []
    return [write_table(result.detail.lens, out / "identity.lens.csv"),
            write_table(result.detail.positions, out / "identity.positions.csv")]


TEXT_FIGURES = (
    Figure("identity_lm_branch_ratio", lambda r: figures.lm_identity_plot(r.table, r.units) if _text(r) else None,
           "Language model: ‖F(x)‖/‖x‖ of each attention (dots, left) and MLP (squares, right) sublayer, mean over "
           "tokens (bars: 95% CI over documents; log scale). Small values: the sublayer barely moves the residual "
           "stream. Look for the middle layers against the first and last."),
    Figure("identity_lm_lens", lambda r: figures.lm_lens_plot(_lens(r, "lens")) if _text(r) else None,
           "Logit lens: the residual stream before each layer decoded with the model's own final norm and "
           "unembedding. Left: KL(output ‖ layer); right: top-1 agreement with the model's output (bands: 95% CI "
           "over documents). Look for the layer where the decoded stream starts to predict what the model will."),
    Figure("identity_lm_lens_positions", lambda r: figures.lm_lens_heatmap(_lens(r, "positions")) if _text(r)
           else None,
           "Logit lens by token position: log10 KL(output ‖ layer), mean over windows. The first positions have "
           "little context; look at whether they settle earlier or later than the rest."),
)


def add_arguments(q) -> None:
    q.add_argument("--grad", action="store_true", help="also cos(F(x), dL/dx) (one backward pass per batch)")
    q.add_argument("--threshold", type=typed(checks.number, 0, 1, lo_open=True), default=0.3,
                   help="near identity: the 95%% CI of ||F||/||S|| below it; active: above it")
    q.add_argument("--lesion-check", action="store_true", help="also the error with every near-identity unit deleted")
    q.add_argument("--cka-minibatch", type=positive_int, default=32, help="images per CKA minibatch (unbiased HSIC)")
    q.add_argument("--cka-images", type=int_or_all, default=identity.CKA_IMAGES,
                   help="images in CKA's seeded subset, or 'all'")
    q.add_argument("--metrics", type=str_list, default=identity.METRIC_GROUPS,
                   help="metric groups: norms (ratios, cosines, block influence), cka, response_std")


def options(a) -> identity.IdentityOptions:
    return identity.IdentityOptions(metrics=a.metrics, grad=a.grad, cka_minibatch=a.cka_minibatch,
                                    cka_images=a.cka_images, threshold=a.threshold, lesion_check=a.lesion_check)


def execute(inv: Invocation) -> StudyResult:
    data, subjects = inv.load()
    return identity.run(subjects, data, inv.spec, inv.options)


STUDY = register(Study(
    name="identity", order=30, title="Closeness to the identity (He et al. 2016 Fig. 7; Jastrzebski et al. 2018)",
    run=identity.run, options=identity.IdentityOptions, verdict_keys=("identity-near", "identity", "refinement"),
    figures=(
        _metric("residual_ratio", "‖F(x)‖/‖S(x)‖ per unit (band: 95% CI over images), the branch against the signal "
                "it is added to; dashed: the near-identity threshold. Units whose whole band lies below it are near "
                "identity; look at the stage's first units against its later ones."),
        _metric("branch_ratio", "‖F(x)‖/‖x‖ per unit, Jastrzebski et al.'s measure (band: 95% CI). It differs from "
                "‖F‖/‖S‖ at units with zero-pad or projection shortcuts."),
        _metric("block_influence", "ShortGPT's block influence 1 − cos(x, y) per unit (band: 95% CI): small values "
                "mark units that barely turn the representation."),
        _metric("cka", "Linear CKA between each unit's input and output on a seeded subset of images (band: bootstrap "
                "over minibatch groups): 1 means the same representation up to rotation and scale."),
        _metric("grad_cosine", "cos(F(x), ∂L/∂x) per unit (band: 95% CI): negative values mean the branch moves the "
                "representation down the loss gradient, like a gradient step."),
        Figure("response_std", lambda r: figures.response_std_plot(r.table) if has(r, "metric", "response_std")
               and not _text(r) else None,
               "Standard deviation of every layer's response (after BN, before addition or nonlinearity) in layer "
               "order (band: 95% CI over images) and sorted, as in He et al. Fig. 7. ResNets' responses are expected "
               "to be smaller than their plain twins'."),
    ) + TEXT_FIGURES,
    sections={"identity-near": ("identity_residual_ratio", "identity_branch_ratio", "identity_lm_branch_ratio",
                                "identity_lm_lens_positions", "identity_lm_lens"), "identity": ("response_std",),
              "refinement": ("identity_branch_ratio",)},
    report=report, budget=budget, text_report=text_report, text_budget=text_budget, needs=("lesion",), tables=wide, files=_text_files, text=True,
    command=Command("per-unit distance to the identity (He et al. Fig. 7, Jastrzebski et al.)", add_arguments,
                    execute, options=options),
))

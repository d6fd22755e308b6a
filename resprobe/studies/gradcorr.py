"""The shattered-gradient studies (Balduzzi et al. 2017): on trained networks along lines through input space
(``gradcorr``), and synthetic networks at initialisation (``gradcorr-synthetic``); one subcommand for both."""
from __future__ import annotations

import numpy as np

from .. import checks, figures
from ..errors import UsageError
from ..flags import int_list, positive_float, positive_int, str_list, typed
from ..metrics.signal import correlation_matrix
from ..probes import gradcorr
from ..study import Command, Figure, Invocation, Study, StudyResult
from . import register
from ._common import competent_on_all

# the full report's budgets: lines and points per line on trained networks; the synthetic sweep
LINES = {"fast": (4, 128), "full": (16, 256)}
SYNTHETIC = {"fast": gradcorr.SyntheticOptions(kinds=("ff-bn", "res-bn"), depths=(1, 4, 16), seeds=6, width=100,
                                               points=128),
             "full": gradcorr.SyntheticOptions()}


def _synthetic_figure(r: StudyResult, which: str):
    grads = r.detail.gradients

    def pick(kind, depth):
        keys = [k for k in grads if k[0] == kind]
        return min(keys, key=lambda k: abs(k[1] - depth)) if keys else None

    deep = max(d for k, d in grads if d and k in ("ff-bn", "res-bn")) if any(
        k in ("ff-bn", "res-bn") for k, _ in grads) else 0
    wanted = [("ff", 1), ("ff-bn", deep), ("res-bn", deep)]
    shown = {pick(k, d): grads[pick(k, d)] for k, d in wanted if pick(k, d) is not None}
    shown[("brown-noise", 0)] = grads[("brown-noise", 0)]
    shown[("white-noise", 0)] = grads[("white-noise", 0)]
    if which == "traces":
        return figures.gradient_traces_plot({k: g[0] for k, g in shown.items()}, gradcorr.grid(r.detail.points))
    if which == "covariance":
        return figures.correlation_heatmaps_plot({k: correlation_matrix(g) for k, g in shown.items()})
    return figures.spectra_plot(shown)


def add_arguments(q) -> None:
    q.add_argument("target", nargs="?", choices=["synthetic"], help="'synthetic': f: R -> R networks at "
                                                                    "initialisation; omit it for trained networks")
    g = q.add_argument_group("lines through input space (trained networks)")
    g.add_argument("--lines", type=positive_int, default=8, help="number of lines (at least 2)")
    g.add_argument("--line", default="direction", choices=["direction", "between"],
                   help="x0 + t*u (random unit u) or the segment between two images")
    g.add_argument("--span", type=positive_float, default=0.1, help="direction lines: t in [-span, span)*|x0|")
    g.add_argument("--grad-target", default="loss", choices=["loss", "logit"], help="what is differentiated")
    g = q.add_argument_group("synthetic")
    g.add_argument("--kinds", type=str_list, default=gradcorr.KINDS, help="ff, ff-bn, res, res-bn, ff-ll")
    g.add_argument("--depths", type=int_list, default=(1, 2, 4, 8, 16, 24, 32, 50), help="depths")
    g.add_argument("--seeds", type=positive_int, default=20, help="random initialisations per (kind, depth)")
    g.add_argument("--width", type=positive_int, default=200, help="units per layer")
    g.add_argument("--beta", type=typed(checks.number, 0, 100), default=0.1,
                   help="branch scale of the 'res' kind (no BN), in [0, 100]")
    q.add_argument("--points", type=positive_int, default=256, help="points per line (synthetic: on [-2, 2))")


TEXT_LINES = {"fast": (4, 64), "full": (8, 128)}   # lines between windows' embeddings, points per line


def text_report(run) -> StudyResult:
    competent_on_all(run)
    lines, points = TEXT_LINES[run.budget]
    return gradcorr.run(run.subjects, run.data, run.spec, gradcorr.LineOptions(lines=lines, points=points,
                                                                              mode="between"))


def options(a):
    """SyntheticOptions for ``gradcorr synthetic``, LineOptions for trained networks."""
    if a.target == "synthetic":
        return gradcorr.SyntheticOptions(kinds=a.kinds, depths=a.depths, seeds=a.seeds, width=a.width,
                                         points=a.points, beta=a.beta)
    if not a.model or not a.data:
        raise UsageError("resprobe gradcorr needs 'synthetic' or --model ... --data ...",
                         "e.g. resprobe gradcorr synthetic --out results/gc")
    return gradcorr.LineOptions(lines=a.lines, points=a.points, mode=a.line, span=a.span, target=a.grad_target)


def execute(inv: Invocation) -> StudyResult:
    if isinstance(inv.options, gradcorr.SyntheticOptions):
        return gradcorr.run_synthetic(inv.options, inv.spec)
    data, subjects = inv.load()
    return gradcorr.run(subjects, data, inv.spec, inv.options)


STUDY = register(Study(
    name="gradcorr", order=50, title="Shattered gradients on trained networks (Balduzzi et al. 2017)",
    run=gradcorr.run, options=gradcorr.LineOptions, verdict_keys=("gradcorr",),
    figures=(
        Figure("gradcorr_block_profile", lambda r: figures.block_profile_plot(r.table, r.units),
               "Lag-1 autocorrelation of the loss gradient along seeded lines in input space, at the image and at "
               "every unit's input (bars: 95% CI across lines). White noise is 0, brown noise 0.97: values near 1 "
               "mean the gradients are not shattered."),
        Figure("gradcorr_traces", lambda r: figures.gradient_traces_plot(
            {(m, 0): g for m, g in r.detail.traces.items() if g is not None},
            np.arange(r.detail.points) / r.detail.points, "position along the line"),
            "The gradient of one pixel along the first line, per network: a smooth curve is brown-noise-like, a "
            "jagged one white-noise-like."),
    ),
    sections={"gradcorr": ("gradcorr_block_profile",)}, text=True, text_report=text_report,
    text_budget=lambda name, n: f"{TEXT_LINES[name][0]} lines of {TEXT_LINES[name][1]} points between windows' "
                                "input embeddings for the gradients",
    report=lambda run: gradcorr.run(run.subjects, run.data, run.spec,
                                    gradcorr.LineOptions(lines=LINES[run.budget][0], points=LINES[run.budget][1])),
    budget=lambda name, n: f"{LINES[name][0]} lines of {LINES[name][1]} points for the gradients",
    command=Command("shattered gradients (Balduzzi et al. 2017): 'synthetic' at initialisation, or trained networks "
                    "(--model, --data)", add_arguments, execute, inputs="optional", batch_size=64,
                    options=options),
))

SYNTHETIC_STUDY = register(Study(
    name="gradcorr-synthetic", order=55, file_stem="gradcorr",
    title="Shattered gradients at initialisation, synthetic (Balduzzi et al. 2017 Figs. 1–2)",
    run=gradcorr.run_synthetic, options=gradcorr.SyntheticOptions, verdict_keys=("gradcorr-synthetic",),
    figures=(
        Figure("gradcorr_traces", lambda r: _synthetic_figure(r, "traces"),
               "Balduzzi Fig. 1 (top): df/dx along the input line for one initialisation of a 1-layer net, deep BN "
               "feedforward and BN residual nets of the same depth, beside brown and white noise."),
        Figure("gradcorr_covariance", lambda r: _synthetic_figure(r, "covariance"),
               "Balduzzi Fig. 1 (bottom): normalized covariance of df/dx between input points i and j across "
               "initialisations, same networks. A wide bright diagonal means correlated (brown-like) gradients."),
        Figure("gradcorr_lag1_vs_depth", lambda r: figures.lag1_vs_depth_plot(r.table, r.summary["fits"]["lag1"]),
               "Mean lag-1 autocorrelation of df/dx against depth (bars: 95% CI over initialisations) with the "
               "fitted decay over the depths the fit used (hollow markers: left out, below the noise floor)."),
        Figure("gradcorr_spectra", lambda r: _synthetic_figure(r, "spectra"),
               "Mean periodogram of df/dx along the line: flat for white noise, falling like f⁻² for brown noise."),
    ),
    sections={"gradcorr-synthetic": ("gradcorr_traces", "gradcorr_lag1_vs_depth")},
    report=lambda run: gradcorr.run_synthetic(SYNTHETIC[run.budget], run.spec),
    budget=lambda name, n: ("the synthetic sweep: " + ", ".join(SYNTHETIC[name].kinds) + " at depths "
                            + ", ".join(map(str, SYNTHETIC[name].depths)) + f", {SYNTHETIC[name].seeds} seeds"),
))

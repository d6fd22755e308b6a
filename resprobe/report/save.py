"""One writer for every study: ``save(result, out)`` writes ``<study>.csv`` (the long table), ``<study>.json``
(provenance, settings, summary, verdict records, findings; strict JSON), the study's figures (PNG +
SVG, each with a caption saying what it shows and what to look for) and ``report.md`` / ``report.html``
(one source)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import networkx as nx
import numpy as np
import pandas as pd

from .. import fmt
from ..io.atomic import write_text
from ..outputs import check_writable
from ..study import StudyResult
from . import plots
from .document import Document
from .tables import write_json, write_table

__all__ = ["save", "FIGURES", "TITLES", "figures_for", "study_document"]

TITLES = {
    "lesion": "Lesions: deleting, sampling and reordering residual units (Veit et al. 2016)",
    "identity": "Closeness to the identity (He et al. 2016 Fig. 7; Jastrzebski et al. 2018)",
    "paths": "Path lengths and the gradient they carry (Veit et al. 2016 Fig. 6)",
    "amplify": "Perturbation amplification: the differential-amplifier conjecture",
    "gradcorr": "Shattered gradients on trained networks (Balduzzi et al. 2017)",
    "gradcorr-synthetic": "Shattered gradients at initialisation, synthetic (Balduzzi et al. 2017 Figs. 1–2)",
    "prune": "Layer-pruning metrics (Gromov et al. 2024; Men et al. 2024)",
    "degradation": "Degradation: plain and residual networks of two depths (He et al. 2016 Fig. 1)",
}

FILE_STEMS = {"gradcorr-synthetic": "gradcorr"}  # the table's file name, where it is not the study's name
Fig = tuple[str, Callable[[StudyResult], Optional[tuple]], str]


def _has(r: StudyResult, col: str, value) -> bool:
    return not r.table.empty and col in r.table and (r.table[col] == value).any()


def _identity_metric(metric: str, caption: str) -> Fig:
    return (f"identity_{metric}",
            lambda r: plots.identity_metric_plot(r.table, metric, r.extras["units"],
                                                 r.settings.get("threshold") if metric == "residual_ratio" else None)
            if _has(r, "metric", metric) else None, caption)


def _gradcorr_synthetic(r: StudyResult, which: str):
    from ..metrics.signal import correlation_matrix
    from ..probes.gradcorr import grid
    grads = r.extras["gradients"]

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
        return plots.gradient_traces_plot({k: g[0] for k, g in shown.items()}, grid(r.extras["points"]))
    if which == "covariance":
        return plots.correlation_heatmaps_plot({k: correlation_matrix(g) for k, g in shown.items()})
    return plots.spectra_plot(shown)


FIGURES: dict[str, list[Fig]] = {
    "lesion": [
        ("lesion_single", lambda r: plots.lesion_single_plot(r.table, r.extras["units"])
         if _has(r, "mode", "single") else None,
         "Test error when one unit is deleted (band: 95% CI over images), units placed by stage; dashed: the intact "
         "network; squares: downsampling units; crosses: units that cannot be deleted. Look for a flat curve near the "
         "intact error (an ensemble of paths) against a jump to chance (a plain network)."),
        ("lesion_random_k", lambda r: plots.lesion_random_k_plot(r.table) if _has(r, "mode", "random-k") else None,
         "Median test error after deleting k random units (band: interquartile range over the sampled subsets). "
         "Look for a smooth rise without a cliff."),
        ("lesion_reorder", lambda r: plots.lesion_reorder_plot(r.table) if _has(r, "mode", "reorder") else None,
         "Test error against the Kendall τ between the shuffled and the original unit order (dots: single orders; "
         "line: binned median). Look for a gradual rise as τ falls."),
    ],
    "identity": [
        _identity_metric("residual_ratio", "‖F(x)‖/‖S(x)‖ per unit (band: 95% CI over images), the branch against the "
                         "signal it is added to; dashed: the near-identity threshold. Units whose whole band lies below "
                         "it are near identity; look at the stage's first units against its later ones."),
        _identity_metric("branch_ratio", "‖F(x)‖/‖x‖ per unit, Jastrzebski et al.'s measure (band: 95% CI). It "
                         "differs from ‖F‖/‖S‖ at units with zero-pad or projection shortcuts."),
        _identity_metric("block_influence", "ShortGPT's block influence 1 − cos(x, y) per unit (band: 95% CI): "
                         "small values mark units that barely turn the representation."),
        _identity_metric("cka", "Linear CKA between each unit's input and output on a seeded subset of images (band: "
                         "bootstrap over minibatch groups): 1 means the same representation up to rotation and scale."),
        _identity_metric("grad_cosine", "cos(F(x), ∂L/∂x) per unit (band: 95% CI): negative values mean the branch "
                         "moves the representation down the loss gradient, like a gradient step."),
        ("response_std", lambda r: plots.response_std_plot(r.table) if _has(r, "metric", "response_std") else None,
         "Standard deviation of every layer's response (after BN, before addition or nonlinearity) in layer order "
         "(band: 95% CI over images) and sorted, as in He et al. Fig. 7. ResNets' responses are expected to be "
         "smaller than their plain twins'."),
    ],
    "paths": [
        ("paths", lambda r: plots.paths_plots(r.table),
         "(a) Number of paths of each length (binomial); (b) gradient magnitude carried by one path of length k "
         "(band: 95% CI over images and routings); (c) the total by length (band: 95% CI). Look at where (c) "
         "peaks against where (a) does."),
    ],
    "amplify": [
        ("amplify_kappa", lambda r: plots.amplify_kappa_plot(r.table, r.extras["units"]),
         "κ per unit — the relative change of the branch per relative change of its input — for random and "
         "worst-case directions (bands: 95% CI over images), residual networks and plain twins alike. The verdict "
         "compares matched units."),
        ("amplify_gains", lambda r: plots.amplify_gains_plot(r.table, r.extras["units"]),
         "Per-unit gains ‖Δout‖/‖Δin‖ of the unit and of its branch, for random and worst-case directions (bands: "
         "95% CI). A gain near 1 for the unit with a small branch gain is the identity shortcut carrying the "
         "perturbation."),
        ("amplify_cumulative", lambda r: plots.amplify_cumulative_plot(r.table, r.extras["units"]),
         "End-to-end gains: from the image to each unit's output, and from each unit's input to the logits (bands: "
         "95% CI)."),
        ("amplify_arithmetic", lambda r: plots.amplify_arithmetic_plot(r.table)
         if _has(r, "metric", "amplifier_ratio") else None,
         "The arithmetic reading: the ratio (‖ΔF‖/‖F‖)/(‖Δy‖/‖y‖) against ‖y‖/‖F‖ for residual units (bars: 95% "
         "CI). Points near the diagonal show that the ratio restates ‖y‖/‖F‖; it is not evidence. Plain units have "
         "no shortcut and no such ratio."),
    ],
    "gradcorr": [
        ("gradcorr_block_profile", lambda r: plots.block_profile_plot(r.table, r.extras["units"]),
         "Lag-1 autocorrelation of the loss gradient along seeded lines in input space, at the image and at every "
         "unit's input (bars: 95% CI across lines). White noise is 0, brown noise 0.97: values near 1 mean the "
         "gradients are not shattered."),
        ("gradcorr_traces", lambda r: plots.gradient_traces_plot(
            {(m, 0): g for m, g in r.extras["traces"].items() if g is not None},
            np.arange(r.extras["points"]) / r.extras["points"], "position along the line"),
         "The gradient of one pixel along the first line, per network: a smooth curve is brown-noise-like, a jagged "
         "one white-noise-like."),
    ],
    "gradcorr-synthetic": [
        ("gradcorr_traces", lambda r: _gradcorr_synthetic(r, "traces"),
         "Balduzzi Fig. 1 (top): df/dx along the input line for one initialisation of a 1-layer net, deep BN "
         "feedforward and BN residual nets of the same depth, beside brown and white noise."),
        ("gradcorr_covariance", lambda r: _gradcorr_synthetic(r, "covariance"),
         "Balduzzi Fig. 1 (bottom): normalized covariance of df/dx between input points i and j across "
         "initialisations, same networks. A wide bright diagonal means correlated (brown-like) gradients."),
        ("gradcorr_lag1_vs_depth", lambda r: plots.lag1_vs_depth_plot(r.table, r.summary["fits"]["lag1"]),
         "Mean lag-1 autocorrelation of df/dx against depth (bars: 95% CI over initialisations) with the fitted "
         "decay over the depths the fit used (hollow markers: left out, below the noise floor)."),
        ("gradcorr_spectra", lambda r: _gradcorr_synthetic(r, "spectra"),
         "Mean periodogram of df/dx along the line: flat for white noise, falling like f⁻² for brown noise."),
    ],
    "prune": [
        ("prune", lambda r: plots.prune_plot(r.table, r.extras["units"]) if "units" in r.extras else None,
         "Left: angular distance between the inputs of unit ℓ and unit ℓ + n (band: 95% CI over images); the "
         "smallest marks the most prunable range. Right: block influence per unit."),
    ],
    "degradation": [
        ("curves", lambda r: plots.training_curves_plot(r.extras["curves"]),
         "Training (dashed) and test (solid) error per epoch; plain networks left, ResNets right. Degradation: the "
         "deeper plain network's training curve above the shallower one's."),
    ],
}


def figures_for(result: StudyResult, out: Path) -> list[tuple[Path, str, list[Path]]]:
    """Render and save the study's figures: ``(png path, caption, all paths)`` for each one drawn."""
    done = []
    for stem, fn, caption in FIGURES.get(result.study, []):
        made = fn(result)
        if made is None:
            continue
        paths = plots.save_figure(made[0], out / stem)
        done.append((paths[0], caption, paths))
    return done


def _identity_wide(table: pd.DataFrame) -> pd.DataFrame:
    d = table[table["metric"] != "response_std"]
    if d.empty:
        return d
    d = d.assign(shown=[fmt.ci(v, lo, hi) for v, lo, hi in zip(d["value"], d["ci_low"], d["ci_high"])])
    wide = d.pivot_table(index=["model", "unit"], columns="metric", values="shown", aggfunc="first", sort=False)
    return wide.reset_index()


def study_document(result: StudyResult, images, title: Optional[str] = None, level: int = 2) -> Document:
    doc = Document(title or TITLES.get(result.study, result.study))
    prov = result.provenance
    models = prov.get("models", [])
    if models:
        data = prov.get("data", {})
        doc.paragraph("Networks: " + "; ".join(
            f"`{m.get('label')}` ({m.get('model')}, weights "
            f"{str(m.get('weights_sha256') or 'random init')[:12]}, normalization {m.get('normalize')})" for m in models)
            + (f". Data: `{data.get('spec')}` [{data.get('split')}], {data.get('n_images')} images." if data else "."))
    doc.verdicts(result.verdicts)
    for v in result.verdicts:
        doc.heading(v.conjecture, level)
        doc.verdict(v)
    doc.heading("Findings", level)
    doc.bullets(result.findings or ["(none)"])
    if images:
        doc.heading("Figures", level)
        for png, caption, _ in images:
            doc.image(png, caption)
    if result.study == "identity":
        doc.heading("Per-unit metrics (mean over images [95% CI]), in forward order", level)
        doc.table(_identity_wide(result.table), text_columns=("model", "unit"))
    return doc


def save(result: StudyResult, out, document: bool = True) -> list[Path]:
    """Write the study's files into ``out`` (see the module docstring); returns their paths."""
    out = check_writable(out)
    study = result.study
    table = result.table
    if study == "lesion":
        result = _merge_lesion(result, out)
        table = result.table
    stem = FILE_STEMS.get(study, study)
    files = [write_table(table, out / f"{stem}.csv")]
    images = figures_for(result, out)
    files += [p for _, _, ps in images for p in ps]
    files += _extras(result, out)
    meta = dict(provenance=result.provenance, settings=result.settings, summary=result.summary,
                verdicts=[v.as_dict() for v in result.verdicts], findings=result.findings,
                files=sorted(p.name for p in files))
    if study == "amplify":
        meta["timing"] = result.extras.get("timing")
    if study == "lesion":
        meta["units"] = result.extras.get("units")
    files.append(write_json(meta, out / f"{stem}.json"))
    if document:
        files += list(study_document(result, images).write(out, "report"))
    return files


def _merge_lesion(result: StudyResult, out: Path) -> StudyResult:
    """The folder's lesion files describe every run in it: rows (and unit tables) of other (network, mode)
    pairs are kept, and the figures show them all."""
    import dataclasses

    from ..probes.lesion import order_rows, typed
    from .store import LesionStore
    table = result.table
    old = LesionStore(out).rows()
    units = dict(result.extras.get("units", {}))
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
        table = order_rows(typed(pd.concat([keep, table], ignore_index=True)))
        table = table[table["model"].isin(units)] if units else table
    return dataclasses.replace(result, table=table, extras=dict(result.extras, units=units))


def _extras(result: StudyResult, out: Path) -> list[Path]:
    files = []
    if result.study == "paths":
        for label, g in result.extras.get("graphs", {}).items():
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
            nx.write_graphml(g, out / f"graph_{safe}.graphml")
            write_text(out / f"graph_{safe}.json", json.dumps(nx.node_link_data(g, edges="links"), indent=1))
            files += [out / f"graph_{safe}.graphml", out / f"graph_{safe}.json"]
    return files

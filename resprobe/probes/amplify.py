"""Perturbation amplification: is a residual unit a "differential amplifier"?

The conjecture (seed §2.3): *the residual structure amplifies small perturbations of its input, and is
therefore more sensitive.* Two readings, kept apart:

(a) **Arithmetic.** For a unit y = S(x) + F(x) with a small branch, a change of y is a large *relative*
    change of F: (‖ΔF‖/‖F‖)/(‖Δy‖/‖y‖) = (‖ΔF‖/‖Δy‖)·(‖y‖/‖F‖), and ‖ΔF‖ ≈ ‖Δy‖ when the change comes from
    the branch. The ratio (``amplifier_ratio``) restates ‖y‖/‖F‖ (``output_branch_ratio``), the inverse of
    the identity probe's ratio: it is shown, never counted as evidence.
(b) **Empirical** (the verdict). The relative sensitivity of the branch to its input,
    κ = (‖ΔF‖/‖F‖)/(‖δ‖/‖x‖), for random directions δ at several ε (``kappa``) and for the worst-case
    direction (``kappa_worst`` = σ_max(∂F/∂x)·‖x‖/‖F‖), compared unit by unit with the matching unit of a
    plain twin trained with the same recipe.

Also per unit: random gains of the unit, its branch and its shortcut (‖Δout‖/‖δ‖ for ‖δ‖ = ε‖x‖; one
direction per image shared by all ε, so a flat gain across ε shows the linear regime), worst-case gains
(Jacobian spectral norms by power iteration, J v and Jᵀ u in closed form for chains of convolutions,
BatchNorms and ReLUs, else from one linearization and one pullback per branch and batch, batched over images), gains from each unit's input to the logits and from the image to each
unit's output, and end to end the flip rate and margin change under input noise. 95% CIs: bootstrap
over images.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import pandas as pd
import torch

from .. import distributed as dist
from ..anatomy import ResidualView, anatomy, frozen_eval
from ..engine import PerImageStore, RunSpec, batch_generator, batches, check_finite
from .. import checks
from ..errors import UsageError
from ..io.data import Dataset
from ..metrics.similarity import per_image_norm
from ..metrics.stats import bootstrap_mean_ci, stable_seed
from ..study import StudyResult, Subject
from ..verdict import Role, pairs_by_seed
from . import common
from .amplify_verdicts import AMPLIFIER_LOG_RATIO, amplifier_verdicts
from .amplify_jacobian import power_iteration, random_unit, spectral_norms, unit_spectral_norms

__all__ = ['AmplifyDetail', "AmplifyOptions", "COLUMNS", "power_iteration", "spectral_norms", "profile", "run", "amplifier_verdicts",
           "AMPLIFIER_LOG_RATIO"]

COLUMNS = ["model", "unit", "metric", "eps", "value", "ci_low", "ci_high", "n_images"]


@dataclass(frozen=True)
class AmplifyDetail:
    """Seconds spent per network and part of the measurement (written to the JSON)."""

    timing: dict

@dataclass(frozen=True)
class AmplifyOptions:
    eps: tuple = (1e-4, 1e-3, 1e-2)
    power_iters: int = 10

    def __post_init__(self):
        checks.fields(self)
        # below 1e-6 a float32 perturbation is lost in rounding (float32 resolves 1.2e-7 relative)
        if not self.eps or any(not 1e-6 <= e < 1 for e in self.eps):
            raise UsageError(f"--eps values must lie in [1e-6, 1) (float32 cannot resolve smaller relative "
                             f"perturbations), got {list(self.eps)}")
        if self.power_iters < 1:
            raise UsageError(f"--power-iters must be >= 1, got {self.power_iters}")

    def describe(self) -> dict:
        return dict(eps=list(self.eps), power_iters=self.power_iters)


def profile(subject: Subject, data: Dataset, spec: RunSpec, options: AmplifyOptions = AmplifyOptions()):
    """The measurements of the module docstring for every unit of one network: per-image values
    ``{(unit, metric, eps): array}`` in data order (rank 0), the view and timings."""
    view = anatomy(subject.model, data.input_shape)
    subject.model.to(spec.torch_device)
    store = PerImageStore(len(data))
    timing = dict(forward_s=0.0, power_iteration_s=0.0, images=0)

    rows = None

    def add(unit, metric, e, t):
        store.put((unit, metric, e), rows, t.detach().double())

    with frozen_eval(subject.model), torch.no_grad():
        for x, y, idx in batches(data, spec, subject.normalize, f"amplify {subject.label}"):
            rows = store.mark(idx)
            gen = [batch_generator(spec, "amplify", int(i)) for i in rows]  # one per image
            t0 = time.perf_counter()
            hs = view.unit_inputs(x)
            logits = view.head(hs[-1])
            timing["forward_s"] += time.perf_counter() - t0
            timing["images"] += len(y)
            check_finite(logits, f"the logits of {subject.label}", spec)
            _random_rows(view, (x, hs, logits), options.eps, gen, add)
            t0 = time.perf_counter()
            with torch.enable_grad():
                _worst_rows(view, hs, options.power_iters, gen, add)
            timing["power_iteration_s"] += time.perf_counter() - t0
    keys = sorted(store.columns, key=str)
    pos = {k: j for j, k in enumerate(keys)}
    got = store.gather(lambda k: str(pos[k]))
    timing = dist.reduce_sum(timing)
    if got is None:
        return None, view, None
    timing["power_iterations"] = options.power_iters
    timing["power_iteration_per_forward"] = timing["power_iteration_s"] / max(timing["forward_s"], 1e-12)
    return {k: got[str(j)] for j, k in enumerate(keys)}, view, timing


def _random_rows(view: ResidualView, clean: tuple, eps, gen, add) -> None:
    x, hs, logits = clean  # the intact pass: input, unit inputs, logits
    top2 = logits.topk(2, 1).values
    margin = top2[:, 0] - top2[:, 1]
    pred = logits.argmax(1)
    # one random direction per image (and per unit input), shared by every ε: differences between ε then
    # reflect the nonlinearity only, not a new draw
    u_img = random_unit(x.shape, gen, x.device, x.dtype)
    u_in = [random_unit(h.shape, gen, h.device, h.dtype) for h in hs[:-1]]
    f0 = [u.branch(hs[i]) for i, u in enumerate(view)]
    nf0 = [per_image_norm(f) for f in f0]
    for i, u in enumerate(view):
        ny = per_image_norm(hs[i + 1])
        if u.residual:
            add(u.name, "output_branch_ratio", None, ny / nf0[i].clamp_min(1e-12))
    for e in eps:
        d = u_img * e * per_image_norm(x).to(x.dtype).view(-1, *[1] * (x.dim() - 1))
        hp = view.unit_inputs(x + d)
        lp = view.head(hp[-1])
        nd = per_image_norm(d)
        for i, u in enumerate(view):
            add(u.name, "gain_from_image", e, per_image_norm(hp[i + 1] - hs[i + 1]) / nd)
        add("network", "flip_rate", e, (lp.argmax(1) != pred).double())
        tp = lp.gather(1, pred[:, None]).squeeze(1)
        other = lp.scatter(1, pred[:, None], float("-inf")).max(1).values
        add("network", "margin_change", e, ((tp - other) - margin).abs() / margin.clamp_min(1e-12))
        for i, u in enumerate(view):
            y1, ndh = unit_random_gains(view, i, (hs[i], hs[i + 1], f0[i], nf0[i]), u_in[i], e, add)
            out_p = view.run(y1, i + 1)  # to the logits, from the perturbed output of unit i
            add(u.name, "gain_to_logits", e, per_image_norm(out_p - logits) / ndh)


def unit_random_gains(view: ResidualView, i: int, clean: tuple, direction, e: float, add):
    """The random-direction measures of unit ``i`` at relative size ``e``: ``clean`` = (input h, output y, branch
    F(h), ‖F(h)‖ per item), ``direction`` a unit vector per item (images or token windows). Returns the perturbed
    output and ‖δ‖."""
    u = view[i]
    h, y0, f0, nf0 = clean
    dh = direction * e * per_image_norm(h).to(h.dtype).view(-1, *[1] * (h.dim() - 1))
    ndh = per_image_norm(dh)
    f1 = u.branch(h + dh)
    y1 = view.run_unit(i, h + dh)
    dy, df = per_image_norm(y1 - y0), per_image_norm(f1 - f0)
    add(u.name, "random_gain_unit", e, dy / ndh)
    add(u.name, "random_gain_branch", e, df / ndh)
    add(u.name, "kappa", e, (df / nf0.clamp_min(1e-12)) / e)  # ‖δ‖/‖x‖ = ε exactly
    if u.residual:
        add(u.name, "random_gain_shortcut", e, per_image_norm(u.shortcut(h + dh) - u.shortcut(h)) / ndh)
        rel_y = dy / per_image_norm(y0).clamp_min(1e-12)
        add(u.name, "amplifier_ratio", e, (df / nf0.clamp_min(1e-12)) / rel_y.clamp_min(1e-30))
    return y1, ndh


def _worst_rows(view: ResidualView, hs, iters: int, gen, add) -> None:
    for i, u in enumerate(view):
        x = hs[i].detach()
        sig_f, sig_y, f = unit_spectral_norms(u, x, iters, gen)
        add(u.name, "worst_gain_branch", None, sig_f)
        add(u.name, "worst_gain_unit", None, sig_y)
        add(u.name, "kappa_worst", None, sig_f * per_image_norm(x) / per_image_norm(f.detach()).clamp_min(1e-12))


def _rows(label: str, values: dict, spec: RunSpec) -> list[dict]:
    rows = []
    for (unit, metric, e), v in values.items():
        lo, hi = bootstrap_mean_ci(v, n_boot=spec.n_boot, seed=stable_seed(spec.seed, label, unit, metric, e))
        rows.append(dict(model=label, unit=unit, metric=metric, eps=e, value=float(v.mean()), ci_low=lo, ci_high=hi,
                         n_images=len(v)))
    return rows


def run(subjects: Sequence[Subject], data: Dataset, spec: RunSpec = RunSpec(batch_size=128),
        options: AmplifyOptions = AmplifyOptions()) -> StudyResult:
    """Amplification measurements of every subject; the verdict compares residual and plain twins. Token
    windows (``TextData``) run :func:`resprobe.probes.lm_amplify.run_text`."""
    from ..io.text import TextData
    if isinstance(data, TextData):
        from .lm_amplify import run_text
        return run_text(subjects, data, spec, options)
    common.check_labels(subjects)
    rows, per_image, timings, views = [], {}, {}, {}
    for s in subjects:
        values, view, timing = profile(s, data, spec, options)
        views[s.label] = view
        if values is None:
            continue
        rows += _rows(s.label, values, spec)
        per_image[s.label] = values
        timings[s.label] = timing
    common.assess(subjects, data, spec)  # every rank together, before the main rank's verdicts
    if not dist.is_main():
        return StudyResult("amplify", pd.DataFrame(columns=COLUMNS))
    order = {lab: {u.name: u.index for u in v} for lab, v in views.items()}
    table = pd.DataFrame(rows, columns=COLUMNS)
    table = table.assign(_u=[order[m].get(u, 10 ** 6) for m, u in zip(table["model"], table["unit"])]) \
        .sort_values(["model", "metric", "eps", "_u"], kind="stable", key=lambda c: c if c.name != "model" else
                     c.map({lab: i for i, lab in enumerate(order)})).drop(columns="_u").reset_index(drop=True)
    roles = common.roles(subjects, views, data, spec)
    verdicts = amplifier_verdicts(roles, per_image, min(options.eps), spec.n_boot, spec.seed)
    return StudyResult("amplify", table, summary=summarize(table, roles), verdicts=verdicts,
                       findings=findings(table, roles), provenance=common.provenance(subjects, data, spec),
                       settings=options.describe(), roles=roles,
                       units={lab: v.table() for lab, v in views.items()}, detail=AmplifyDetail(timings))


def summarize(table: pd.DataFrame, roles: dict[str, Role]) -> dict:
    """Per model: medians over units of every per-unit metric at the smallest ε (worst case: no ε)."""
    d = table[table["unit"] != "network"]
    e0 = d["eps"].dropna().min()
    out = {"eps_used": float(e0) if e0 == e0 else None, "models": {}}
    for m, g in d.groupby("model", sort=False):
        sel = g[(g["eps"] == e0) | g["eps"].isna()]
        out["models"][str(m)] = {metric: float(s["value"].median()) for metric, s in sel.groupby("metric")}
        out["models"][str(m)]["residual"] = bool(roles[str(m)].residual) if str(m) in roles else None
    net = table[table["unit"] == "network"]
    for m, g in net.groupby("model", sort=False):
        out["models"].setdefault(str(m), {}).update(
            {f"{r['metric']}@{r['eps']:g}": float(r["value"]) for _, r in g.iterrows()})
    return out


def findings(table: pd.DataFrame, roles: dict[str, Role]) -> list[str]:
    from .. import fmt
    s = summarize(table, roles)
    e0 = s["eps_used"]
    out = []
    for m, v in s["models"].items():
        if "kappa" in v:
            out.append(f"{m}: median over units κ = {v['kappa']:.3f} (random, ε = {e0:g}), worst case "
                       f"{v.get('kappa_worst', float('nan')):.3f}; random unit gain {v.get('random_gain_unit', float('nan')):.3f}, "
                       f"worst-case unit gain {v.get('worst_gain_unit', float('nan')):.3f}.")
        if "amplifier_ratio" in v:
            out.append(f"{m} (arithmetic, not evidence): median (‖ΔF‖/‖F‖)/(‖Δy‖/‖y‖) = {v['amplifier_ratio']:.3f}, "
                       f"and median ‖y‖/‖F‖ = {v['output_branch_ratio']:.3f} — the ratio is "
                       "(‖ΔF‖/‖Δy‖)·‖y‖/‖F‖ by definition.")
    d = table[(table["metric"] == "kappa") & (table["eps"] == e0)]
    for r, p, _ in pairs_by_seed({m: x for m, x in roles.items() if m in s["models"]}):
        a, b = d[d["model"] == r].set_index("unit"), d[d["model"] == p].set_index("unit")
        both = [u for u in a.index if u in b.index]
        higher = [u for u in both if a.loc[u, "ci_low"] > b.loc[u, "ci_high"]]
        lower = [u for u in both if a.loc[u, "ci_high"] < b.loc[u, "ci_low"]]
        out.append(f"κ unit by unit, {r} against {p} ({len(both)} matched units): higher in {len(higher)}, lower "
                   f"in {len(lower)}, not distinguishable (CIs overlap) in {len(both) - len(higher) - len(lower)}.")
    for key in ("flip_rate", "margin_change"):
        rows = table[(table["metric"] == key)]
        for _, r in rows[rows["eps"] == rows["eps"].max()].iterrows():
            out.append(f"{r['model']}: {key.replace('_', ' ')} under input noise ε = {r['eps']:g}: "
                       f"{fmt.ci(r['value'], r['ci_low'], r['ci_high'], 4)}.")
    return out

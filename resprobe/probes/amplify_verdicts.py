"""The amplification study's verdict, decided on the part of κ that could come out against the conjecture.

κ = (‖ΔF‖/‖F‖)/(‖δ‖/‖x‖) splits exactly into a gain, ‖ΔF‖/‖δ‖ (how much the branch changes for a given input
change: a measurement), and ‖x‖/‖F‖ (how small the branch is beside its input: for a residual unit large by
construction, since F is a correction added to x). log(κ_res/κ_plain) = log(gain_res/gain_plain) +
log((‖x‖/‖F‖)_res/(‖x‖/‖F‖)_plain); only the first term is evidence of amplification, so the verdict is decided
on it and the second is reported as arithmetic beside it."""
from __future__ import annotations

import math

import numpy as np

from ..metrics.stats import stable_seed
from ..verdict import Claim, Margin, Role, Verdict, contrasts, pair_names, seed_interval, unpaired_reason

__all__ = ["amplifier_verdicts", "AMPLIFIER_LOG_RATIO", "log_ratio"]

AMPLIFIER_LOG_RATIO = Margin(round(math.log(1.25), 4), (
    "a branch gain at least 25% above the plain unit's (log 1.25), the same quarter as the lesion criteria; the "
    "differential-amplifier reading predicts a large gain, and a smaller difference is not of interest"))
_CRIT = (f"statistic: per seed, median over matched units of log(g_residual / g_plain), g = mean over images of "
         f"‖ΔF‖/‖δ‖ for random δ with ‖δ‖ = ε‖x‖ at the smallest ε (the branch's gain; a plain unit's branch is the "
         f"whole unit), CI by bootstrap over images; seeds pooled by a t-interval. Supported when the CI lies above "
         f"the margin {AMPLIFIER_LOG_RATIO.value}, not supported when below (including every CI below 0: residual "
         f"branches less sensitive), inconclusive otherwise. log(κ_res/κ_plain) = gain part + log of the ‖x‖/‖F‖ "
         f"ratio, which is large by construction for a residual unit: reported as arithmetic, not evidence. Gates: "
         f"every network competent; twins of one known recipe and architecture")


def log_ratio(res: dict, plain: dict, metric: str, e: float, idx=None) -> float:
    """Median over matched units of log(mean ``metric`` residual / mean ``metric`` plain) (``idx``: an image
    resample)."""
    logs = []
    for (unit, m, eps), v in res.items():
        if m != metric or eps != e or (unit, m, eps) not in plain:
            continue
        w = plain[(unit, m, eps)]
        a, b = (v.mean(), w.mean()) if idx is None else (v[idx].mean(), w[idx].mean())
        if a > 0 and b > 0:
            logs.append(np.log(a / b))
    return float(np.median(logs)) if logs else float("nan")


def resampler(n: int, clusters=None):
    """A function ``rng -> indices`` of one bootstrap resample of ``n`` items: items uniformly, or with
    ``clusters`` (the cluster of each item, e.g. the document of each token window) whole clusters."""
    if clusters is None:
        return lambda rng: rng.integers(0, n, n)
    ids, inv = np.unique(np.asarray(clusters), return_inverse=True)
    members = [np.flatnonzero(inv == k) for k in range(len(ids))]
    return lambda rng: np.concatenate([members[k] for k in rng.integers(0, len(ids), len(ids))])


def _pair(res: dict, plain: dict, e: float, n_boot: int, seed: int, clusters=None
          ) -> tuple[float, tuple[float, float], dict]:
    n = len(next(iter(res.values())))
    rng = np.random.default_rng(seed)
    draw = resampler(n, clusters)
    boots = np.array([log_ratio(res, plain, "random_gain_branch", e, draw(rng)) for _ in range(n_boot)])
    gain = log_ratio(res, plain, "random_gain_branch", e)
    kappa = log_ratio(res, plain, "kappa", e)
    ci = tuple(float(q) for q in np.nanquantile(boots, [0.025, 0.975])) if np.isfinite(boots).any() else (np.nan,) * 2
    return gain, ci, dict(log_gain_ratio=gain, log_kappa_ratio=kappa, arithmetic_part=kappa - gain)


_TEXT = ("images of ‖ΔF‖/‖δ‖", "token windows of ‖ΔF‖/‖δ‖ (δ on the window's residual stream)"), \
    ("CI by bootstrap over images", "CI by bootstrap over documents")


def _claim(res: str, plain: str, text: bool = False) -> Claim:
    crit = _CRIT
    if text:
        for a, b in _TEXT:
            crit = crit.replace(a, b)
    return Claim("amplify", f"{res} amplify small input perturbations more than {plain}: gain "
                 f"ratio above {math.exp(AMPLIFIER_LOG_RATIO.value):.2f}", crit, "median log(gain_res / gain_plain)",
                 AMPLIFIER_LOG_RATIO, "above")


def amplifier_verdicts(roles: dict[str, Role], per_image: dict, eps: float,
                       n_boot: int = 1000, seed: int = 0, clusters=None) -> list[Verdict]:
    """Per equal-recipe twin pair: a residual unit's branch amplifies small input perturbations more than the
    matching plain unit does. ``clusters``: the document of each token window (the CI then resamples
    documents; None: images)."""
    cs = contrasts({lab: r for lab, r in roles.items() if lab in per_image})
    if not cs:
        return [_claim("Residual branches", "plain units", clusters is not None).not_applicable(
            "the conjecture compares residual with plain units (--plain): " + unpaired_reason(roles))]
    out = []
    for pairs in cs:
        r0, p0, _ = pairs[0]
        claim = _claim(f"{roles[r0].group}'s residual branches", f"the matching units of its plain twin {roles[p0].group}",
                       clusters is not None)
        na, gates, scope = claim.gate(roles, pair_names(pairs), len(pairs))
        if na:
            out.append(na)
            continue
        per = {f"{r} vs {p}": _pair(per_image[r], per_image[p], eps, n_boot, stable_seed(seed, "gain", r, p), clusters)
               for r, p, _ in pairs}
        iv = seed_interval([g for g, _, _ in per.values()], [ci for _, ci, _ in per.values()])
        out.append(claim.judge(iv, scope, n_images=len(next(iter(per_image[r0].values()))), n_seeds=len(pairs), gates=gates,
                         per_seed={k: g for k, (g, _, _) in per.items()},
                         evidence={k: parts for k, (_, _, parts) in per.items()},
                         reason="log κ ratio per pair (gain part + arithmetic part): " + "; ".join(
                             f"{k}: {p['log_kappa_ratio']:+.3f} = {p['log_gain_ratio']:+.3f} "
                             f"{p['arithmetic_part']:+.3f}" for k, (_, _, p) in per.items())))
    return out

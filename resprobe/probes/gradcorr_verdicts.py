"""The shattered-gradients verdicts (Balduzzi et al. 2017).

Synthetic, at initialisation: the papers' decay *rates* are tested, each as an equivalence test around the
predicted exponent — BN feedforward nets lose gradient correlation like 2^−L (log₂ slope −1 per layer), BN
ResNets like L^−1/2 (log–log slope −0.5). On trained networks: per residual group, its input gradients are not
shattered (lag-1 above midway between white and brown noise); per equal-recipe twin pair, they are less
shattered than the plain twin's by at least the margin. Trained verdicts are gated on competent networks."""
from __future__ import annotations

import numpy as np

from ..verdict import (Claim, Margin, Verdict, contrasts, decide_within, pair_names, residual_groups,
                       seed_interval, unpaired_reason)

__all__ = ["synthetic_verdicts", "shattering_verdicts", "NOT_SHATTERED", "LESS_SHATTERED", "RATES"]

# White noise has lag-1 autocorrelation 0, brown noise (a random walk) 0.97 over 256 points.
NOT_SHATTERED = Margin(0.5, "midway between white noise (lag-1 0) and brown noise (0.97 over 256 points)")
LESS_SHATTERED = Margin(0.1, (
    "a tenth of the distance from white to brown noise: a smaller lag-1 difference is within the spread between "
    "lines of one network"))
# kind -> (fit, predicted slope, half-width of the band of slopes that count as that rate)
RATES = {"ff-bn": ("exponential", -1.0, 0.5), "res-bn": ("power_law", -0.5, 0.25)}
_RATE_SOURCE = ("Balduzzi et al. 2017: correlations decay like 2^−L in feedforward rectifier nets (log₂ slope −1 per "
                "layer) and like 1/√L in ResNets with batch norm (log–log slope −0.5); a fitted slope within half "
                "the predicted exponent of it counts as that rate")


def synthetic_verdicts(fitted: dict, metric: str = "lag1") -> list[Verdict]:
    """One verdict per kind with a predicted rate: does the fitted decay of ``metric`` with depth match it?"""
    out = []
    for kind, (fit, expected, half) in RATES.items():
        name = f"{'log₂ slope per layer' if fit == 'exponential' else 'log–log slope'} of mean {metric} vs depth"
        claim = (f"Synthetic {kind} networks at initialisation lose gradient correlation at the paper's rate: "
                 f"{'2^−L' if fit == 'exponential' else 'L^−1/2'} (fitted slope within {expected - half:g} to "
                 f"{expected + half:g})")
        crit = (f"statistic: the slope of a least-squares fit of log₂ (exponential) or log–log (power law) of the mean "
                f"{metric} against depth, over depths whose mean is above the noise floor; CI by bootstrap over "
                f"random inits. Supported when the CI lies inside [{expected - half:g}, {expected + half:g}] (an "
                f"equivalence test around the predicted {expected:g}), not supported when it lies wholly outside, "
                f"inconclusive otherwise. These are random networks, not the user's")
        f = fitted.get(kind, {}).get(fit)
        if f is None or not np.isfinite(f.get("slope", np.nan)):
            c = Claim("gradcorr-synthetic", claim, crit, name, Margin(expected, _RATE_SOURCE), "within")
            out.append(c.not_applicable(f"no fit for {kind}: the sweep needs this kind and two depths above the noise "
                                        "floor", "synthetic"))
            continue
        lo, hi = f.get("ci_low", np.nan), f.get("ci_high", np.nan)
        outcome = decide_within(lo, hi, expected - half, expected + half)
        out.append(Verdict(claim, outcome, crit, name, float(f["slope"]), float(lo), float(hi), expected,
                           f"synthetic: depths {fitted[kind].get('depths')}", key="gradcorr-synthetic",
                           margin_source=_RATE_SOURCE, interval="percentile bootstrap over random inits",
                           evidence=dict(fit=f, band=[expected - half, expected + half])))
    return out


def _line_ci(v: np.ndarray, scale: str = "linear") -> tuple[float, tuple[float, float]]:
    """Mean over lines with a t-interval over lines (``fisher``: for a correlation, the CI stays in [−1, 1])."""
    iv = seed_interval(list(v[np.isfinite(v)]), scale=scale)
    return iv.stat, (iv.lo, iv.hi)


_CRIT_ALONE = (f"statistic: mean over seeded lines of the lag-1 autocorrelation of the loss gradient at the image "
               f"(white noise 0, brown noise 0.97), t-interval over lines on Fisher's z (the CI stays in [−1, 1]); seeds "
               f"pooled the same way. Supported "
               f"when the CI lies above the margin {NOT_SHATTERED.value}, not supported when below. Gate: competent "
               f"networks")
_CRIT_PAIR = (f"statistic: per seed, residual minus plain lag-1, paired by line (t over lines); seeds pooled by a "
              f"t-interval. Supported when the CI lies above the margin {LESS_SHATTERED.value}, not supported when "
              f"below. Gates: every network competent; twins of one known recipe and architecture")


def shattering_verdicts(values: dict, roles: dict) -> list[Verdict]:
    """Balduzzi et al. on the user's networks: per residual group, its input gradients are not shattered; per
    equal-recipe twin pair, they are less shattered than the plain twin's."""
    out = []
    for labs in residual_groups(roles):
        labs = [lab for lab in labs if lab in values]
        if labs:
            out.append(_alone(labs, values, roles))
    cs = contrasts({lab: r for lab, r in roles.items() if lab in values})
    for pairs in cs:
        out.append(_pair(pairs, values, roles))
    if not cs:
        out.append(_pair_claim("A ResNet", "its plain twin").not_applicable(unpaired_reason(roles)))
    return out


def _pair_claim(res: str, plain: str) -> Claim:
    return Claim("gradcorr", f"{res}'s input gradients are less shattered than {plain}'s: lag-1 higher by more than "
                 f"{LESS_SHATTERED.value}", _CRIT_PAIR, "lag-1 residual − plain", LESS_SHATTERED, "above")


def _alone(labs, values, roles) -> Verdict:
    claim = Claim("gradcorr", f"{roles[labs[0]].group}'s input gradients are not shattered: lag-1 autocorrelation "
                  f"along lines above {NOT_SHATTERED.value} (Balduzzi et al. 2017)", _CRIT_ALONE, "lag-1 at the image",
                  NOT_SHATTERED, "above")
    na, gates, scope = claim.gate(roles, labs, len(labs))
    if na:
        return na
    per = {lab: _line_ci(np.asarray(values[lab][("input", "lag1")], float), "fisher") for lab in labs}
    iv = seed_interval([v for v, _ in per.values()], [ci for _, ci in per.values()], scale="fisher")
    return claim.judge(iv, scope, n_seeds=len(labs), gates=gates, per_seed={lab: v for lab, (v, _) in per.items()},
                 evidence={lab: v for lab, (v, _) in per.items()})


def _pair(pairs, values, roles) -> Verdict:
    r0, p0, _ = pairs[0]
    claim = _pair_claim(roles[r0].group, f"its plain twin {roles[p0].group}")
    labs = pair_names(pairs)
    na, gates, scope = claim.gate(roles, labs, len(pairs))
    if na:
        return na
    per = {}
    for r, p, _ in pairs:
        a, b = np.asarray(values[r][("input", "lag1")], float), np.asarray(values[p][("input", "lag1")], float)
        n = min(len(a), len(b))
        per[f"{r} − {p}"] = _line_ci(a[:n] - b[:n])
    iv = seed_interval([v for v, _ in per.values()], [ci for _, ci in per.values()])
    return claim.judge(iv, scope, n_seeds=len(pairs), gates=gates, per_seed={k: d for k, (d, _) in per.items()},
                 evidence={lab: float(np.nanmean(values[lab][("input", "lag1")])) for lab in labs})

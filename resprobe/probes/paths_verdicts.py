"""The path study's verdict (Veit et al. 2016 Fig. 6): the gradient comes from paths much shorter than the
typical path."""
from __future__ import annotations

import numpy as np

from ..verdict import Claim, Margin, Verdict, residual_groups, seed_interval

__all__ = ["SHORT_PATHS", "short_paths_verdicts"]

SHORT_PATHS = Margin(0.75, (
    "Veit et al. 2016: in ResNet-110 (54 blocks, typical path 27) almost all gradient comes from paths of 5-17 "
    "blocks, a gradient-weighted length of about 11, 0.4 of the typical; 0.75 leaves room for shallower nets, whose "
    "path-length distribution is narrower"))


_CRIT = (f"statistic: the gradient-weighted mean path length Σk·T(k)/ΣT(k) divided by the typical path length "
         f"(the mean of the distribution of path lengths: n/2 for n sequential units, the binomial mean), per network "
         f"with a bootstrap CI over images "
         f"and routings; seeds pooled by a t-interval on the log scale. Supported when the CI lies below the margin "
         f"{SHORT_PATHS.value}, not supported when above, inconclusive otherwise. Gate: competent networks")


def short_paths_verdicts(summary: dict, roles: dict, n_images: int, over: str = "images") -> list[Verdict]:
    """Veit et al. Fig. 6, per residual group: the gradient comes from paths much shorter than the typical
    path. ``over``: what the CI resamples (``documents`` for language models)."""
    out = []
    crit = _CRIT.replace("CI over images", f"CI over {over}")
    for labs in residual_groups(roles):
        claim = Claim("paths", f"{roles[labs[0]].group}'s gradient comes from relatively short paths: gradient-weighted "
                      f"mean path length below {SHORT_PATHS.value} of the typical length (Veit et al. 2016, Fig. 6)",
                      crit, "weighted length / typical length", SHORT_PATHS, "below")
        missing = [f"{lab}: {summary.get(lab, {}).get('note', 'no paths result')}" for lab in labs
                   if "weighted_length" not in summary.get(lab, {})]
        na, gates, scope = claim.gate(roles, labs, len(labs), missing)
        if na:
            out.append(na)
            continue
        per = {}
        for lab in labs:
            s = summary[lab]
            w, half = s["weighted_length"], s["typical_length"]
            ci = tuple(np.nan if w[k] is None else w[k] / half for k in ("ci_low", "ci_high"))
            per[lab] = (w["value"] / half, ci)
        iv = seed_interval([v for v, _ in per.values()], [ci for _, ci in per.values()], scale="log")
        out.append(claim.judge(iv, scope, n_images=n_images,
                         n_seeds=len(labs), gates=gates, per_seed={lab: v for lab, (v, _) in per.items()},
                         evidence={lab: dict(weighted_length=summary[lab]["weighted_length"],
                                             typical_length=summary[lab]["typical_length"],
                                             peak_k=summary[lab]["peak_k"]) for lab in labs}))
    return out

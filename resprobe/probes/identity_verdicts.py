"""The identity study's verdicts: closeness to identity judged by its own absolute criterion per residual
network (the median unit's ‖F‖/‖S‖); He et al.'s Fig. 7 contrast (response std, ResNet / plain twin) per
equal-recipe twin pair; and iterative refinement (near-identity units are the cheap ones to delete), which
needs the lesion study's single deletions. All gated on competent networks; the contrast also on twins."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..metrics.stats import pooled_std, stable_seed
from ..verdict import (Claim, Margin, Role, Verdict, contrasts, pair_names, residual_groups, scope_of, seed_interval,
                       unpaired_reason)

__all__ = ["response_std_verdicts", "near_identity_verdicts", "refinement_verdicts", "RESPONSE_RATIO",
           "REFINEMENT_RHO", "NEAR_IDENTITY_MARGIN"]

# He et al. Fig. 7: ResNets' responses are smaller than their plain twins'. The figure shows the ResNets'
# curves well below the plain nets' (by eye, about half); a ratio of 0.8 (20% smaller) is the smallest
# difference taken as "smaller" here, above the few-percent spread of the response std between seeds.
RESPONSE_RATIO = Margin(0.8, (
    "He et al. 2016 Fig. 7 (ResNet responses well below the plain nets', about half by eye): a ResNet/plain ratio "
    "of the median response std below 0.8, i.e. at least 20% smaller"))
# Jastrzebski et al.: units that change the representation little are cheap to delete. A Spearman correlation
# of 0.3 is the conventional 'moderate' correlation (Cohen 1988); a weaker one would not let the branch ratio
# rank the units by their deletion cost.
REFINEMENT_RHO = Margin(0.3, (
    "Cohen 1988's 'moderate' correlation: a weaker rank correlation would not let ‖F‖/‖x‖ tell the cheap deletions "
    "from the costly ones (Jastrzebski et al. 2018 report the ordering, not a size)"))
NEAR_IDENTITY_MARGIN = Margin(0.3, (
    "resprobe's near-identity threshold (the effective depth of the identity study): a branch under 30% of the "
    "shortcut's norm; Jastrzebski et al. 2018 call such blocks iterative refinement"))

_RESPONSE_CRIT = (f"statistic: per seed, median over layers of the response std, ResNet / plain twin (the same images, "
                  f"paired bootstrap CI); seeds pooled by a t-interval on the log scale (the CI stays positive). "
                  f"Supported when the CI lies below the margin {RESPONSE_RATIO.value}, not supported when above, "
                  f"inconclusive otherwise. Gates: every network competent; twins of one known recipe and architecture")
_NEAR_CRIT = (f"statistic: median over the residual, shape-preserving units of ‖F(x)‖/‖S(x)‖ (per-image mean); its "
              f"per-network CI is bounded by the medians of the units' 95% CI ends (the median is monotone in every "
              f"unit); seeds pooled by a t-interval on the log scale. Supported when the CI lies below the margin "
              f"{NEAR_IDENTITY_MARGIN.value}, not supported when above. Gate: competent networks")
_REFINE_CRIT = (f"statistic: Spearman rank correlation, across a ResNet's non-downsampling units, between ‖F(x)‖/‖x‖ "
                f"and the error increase when the unit alone is deleted; CI by bootstrap over units, seeds pooled by "
                f"a t-interval on Fisher's z (the CI stays within [−1, 1]). Supported when the CI lies above the "
                f"margin {REFINEMENT_RHO.value}, not supported when below. Gate: competent networks")


def _response_claim(res: str, plain: str) -> Claim:
    return Claim("identity", f"{res}'s layer responses are smaller than {plain}'s: median response std ratio below "
                 f"{RESPONSE_RATIO.value} (He et al. 2016, Fig. 7)", _RESPONSE_CRIT, "median response std, ResNet / plain",
                 RESPONSE_RATIO, "below")


def _median_std(s1, s2, per, idx=None) -> float:
    if idx is not None:
        w = np.bincount(idx, minlength=len(s1)).astype(float)
        a, b, n = w @ s1, w @ s2, w.sum()
    else:
        a, b, n = s1.sum(0), s2.sum(0), len(s1)
    return float(np.median(pooled_std(a, b, n * np.asarray(per, float))))


def _args(resp: dict) -> dict:
    return dict(s1=resp["s1"], s2=resp["s2"], per=resp["per_image"])


def _ratio_ci(a: dict, b: dict, n_boot: int, seed: int) -> tuple[float, tuple[float, float]]:
    n = len(a["s1"])
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        boots.append(_median_std(**_args(a), idx=idx) / _median_std(**_args(b), idx=idx))
    lo, hi = (float(q) for q in np.nanquantile(boots, [0.025, 0.975]))
    return _median_std(**_args(a)) / _median_std(**_args(b)), (lo, hi)


def response_std_verdicts(table: pd.DataFrame, roles: dict[str, Role], responses: dict, n_boot: int = 1000,
                          seed: int = 0) -> list[Verdict]:
    """He et al. Fig. 7, per equal-recipe twin pair: the ResNet's layer responses are smaller than its plain
    twin's by at least the margin."""
    cs = contrasts({lab: r for lab, r in roles.items() if responses.get(lab)})
    if not cs:
        return [_response_claim("A ResNet", "its plain twin").not_applicable(
            "He et al.'s comparison needs a plain twin trained with the same recipe: " + unpaired_reason(roles))]
    out = []
    for pairs in cs:
        r0, p0, _ = pairs[0]
        claim = _response_claim(roles[r0].group, f"its plain twin {roles[p0].group}")
        na, gates, scope = claim.gate(roles, pair_names(pairs), len(pairs))
        if na:
            out.append(na)
            continue
        per = {f"{r} / {p}": _ratio_ci(responses[r], responses[p], n_boot, stable_seed(seed, "response-ratio", r, p))
               for r, p, _ in pairs}
        iv = seed_interval([v for v, _ in per.values()], [ci for _, ci in per.values()], scale="log")
        out.append(claim.judge(iv, scope, n_images=len(responses[r0]["s1"]), n_seeds=len(pairs), gates=gates,
                         per_seed={k: v for k, (v, _) in per.items()}, evidence={k: v for k, (v, _) in per.items()},
                         reference="He et al. 2016 Fig. 7: plain-20/56 responses above ResNet-20/56/110's"))
    return out


def _near(table: pd.DataFrame, lab: str) -> tuple[float, tuple[float, float], int]:
    g = table[(table["model"] == lab) & (table["metric"] == "residual_ratio") & ~table["downsample"].astype(bool)]
    if g.empty:
        return float("nan"), (float("nan"), float("nan")), 0
    return float(g["value"].median()), (float(g["ci_low"].median()), float(g["ci_high"].median())), len(g)


def near_identity_verdicts(table: pd.DataFrame, roles: dict[str, Role], text: bool = False) -> list[Verdict]:
    """Closeness to identity, per residual group: the median unit's branch is small beside its shortcut.
    ``text``: language models (each unit's ratio a mean over tokens, its CI resampling documents)."""
    out = []
    crit = _NEAR_CRIT if not text else _NEAR_CRIT.replace(
        "(per-image mean)", "(mean over tokens, 95% CI by bootstrap over documents; every unit of a decoder has the "
        "identity shortcut, so S(x) = x)")
    for labs in residual_groups(roles):
        labs = [lab for lab in labs if (table["model"] == lab).any()]
        if not labs:
            continue
        claim = Claim("identity-near", f"{roles[labs[0]].group}'s residual units are close to identity: the median "
                      f"unit's ‖F(x)‖/‖S(x)‖ is below {NEAR_IDENTITY_MARGIN.value}", crit, "median unit ‖F‖/‖S‖",
                      NEAR_IDENTITY_MARGIN, "below")
        na, gates, scope = claim.gate(roles, labs, len(labs))
        if na:
            out.append(na)
            continue
        per = {lab: _near(table, lab) for lab in labs}
        iv = seed_interval([v for v, _, _ in per.values()], [ci for _, ci, _ in per.values()], scale="log")
        out.append(claim.judge(iv, scope, n_images=int(table[table["model"] == labs[0]]["n_images"].max()), n_seeds=len(labs),
                         gates=gates, per_seed={lab: v for lab, (v, _, _) in per.items()},
                         evidence={lab: dict(median=v, units=n) for lab, (v, _, n) in per.items()}))
    return out


def _rho(identity: pd.DataFrame, lesion: pd.DataFrame, lab: str):
    br = identity[(identity["model"] == lab) & (identity["metric"] == "branch_ratio")
                  & ~identity["downsample"].astype(bool)]
    g = lesion[lesion["model"] == lab]
    base = g[g["mode"] == "baseline"]["error"]
    single = g[g["mode"] == "single"].set_index("deleted")["error"]
    if base.empty or single.empty or br.empty:
        return None
    x = br.set_index("unit")["value"]
    units = [u for u in x.index if u in single.index]
    if len(units) < 4:
        return None
    return x[units].to_numpy(), single[units].to_numpy() - float(base.iloc[0])


def _rho_ci(a, b, n_boot: int, seed: int) -> tuple[float, tuple[float, float]]:
    from scipy.stats import spearmanr
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        i = rng.integers(0, len(a), len(a))
        if np.ptp(a[i]) > 0 and np.ptp(b[i]) > 0:
            boots.append(spearmanr(a[i], b[i]).statistic)
    ci = tuple(float(q) for q in np.quantile(boots, [0.025, 0.975])) if boots else (np.nan, np.nan)
    return float(spearmanr(a, b).statistic), ci


def refinement_verdicts(identity: pd.DataFrame, lesion: pd.DataFrame, roles: dict[str, Role],
                        n_boot: int = 1000, seed: int = 0) -> list[Verdict]:
    """Jastrzebski et al., per residual group: units that change the representation little (small ‖F‖/‖x‖) are
    the cheap ones to delete."""
    out = []
    for labs in residual_groups(roles):
        claim = Claim("refinement", f"In {roles[labs[0]].group}, near-identity units are the cheap ones to delete: "
                      f"Spearman ρ between ‖F‖/‖x‖ and the deletion cost above {REFINEMENT_RHO.value} (Jastrzebski et "
                      "al. 2018)", _REFINE_CRIT, "Spearman ρ(‖F‖/‖x‖, deletion cost)", REFINEMENT_RHO, "above")
        data = {lab: _rho(identity, lesion, lab) for lab in labs}
        data = {lab: d for lab, d in data.items() if d is not None}
        none = [] if data else ["needs single deletions and branch ratios of at least 4 non-downsampling units"]
        na, gates, scope = claim.gate(roles, labs, len(labs), none)
        if na:
            out.append(na)
            continue
        per = {lab: _rho_ci(a, b, n_boot, stable_seed(seed, "refinement", lab)) for lab, (a, b) in data.items()}
        iv = seed_interval([v for v, _ in per.values()], [ci for _, ci in per.values()], scale="fisher")
        out.append(claim.judge(iv, scope_of(len(per), per), n_seeds=len(per), gates=gates, per_seed={lab: v for lab, (v, _) in per.items()},
                         evidence=dict(rho={lab: v for lab, (v, _) in per.items()},
                                       n_units={lab: len(a) for lab, (a, _) in data.items()}),
                         reason="" if len(per) == len(labs) else
                         f"no deletion data for {', '.join(sorted(set(labs) - set(per)))}"))
    return out

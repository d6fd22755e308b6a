"""The lesion study's verdicts (Veit et al. 2016): the seed's slogan "deleting one block barely matters",
judged by its own absolute criterion per residual network; the residual-vs-plain contrast, per equal-recipe
twin pair; and "no cliff" under random deletions. Each is gated on competent networks (a network at chance
cannot lose accuracy, so its relative increase is 0 by arithmetic) and, for the contrast, on twins."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import pandas as pd

from ..metrics.stats import stable_seed
from ..verdict import (Claim, Margin, Role, Verdict, contrasts, pair_names, residual_groups, seed_interval,
                       unpaired_reason)

__all__ = ["single_deletion_verdicts", "no_cliff_verdicts", "relative_increases", "core_units",
           "LESION_RELATIVE_INCREASE", "LESION_CONTRAST_MARGIN", "CLIFF_THRESHOLD"]

LESION_RELATIVE_INCREASE = Margin(0.25, (
    "Veit et al. 2016, the authors' raw results: deleting one block of the CIFAR ResNet-110 raised its error by "
    "0-0.19 of the intact error (median 0.06; VGG: to chance, > 10); a quarter is above every such deletion"))
LESION_CONTRAST_MARGIN = Margin(0.25, (
    "the same quarter of the intact error: a twin difference within the spread of Veit's ResNet-110 single "
    "deletions (0-0.19) is not of interest"))
CLIFF_THRESHOLD = Margin(0.2, (
    "Veit et al. 2016 Fig. 5a: ResNet-110's steepest rise between sampled k was 6.6 points per deleted block "
    "(25% at k = 10, 58% at k = 15), 0.08 of the 84-point gap to chance; 0.2 is 2.5 times that"))
Z95 = 1.959963984540054


def core_units(units: list[dict]) -> set[str]:
    """What counts for the typical single deletion: units (and blocks made only of such units) that are
    not transitions and keep the shape."""
    core = {u["name"] for u in units if u["kind"] != "transition" and not u["downsample"]}
    blocks: dict[str, list[str]] = {}
    for u in units:
        blocks.setdefault(u["block"], []).append(u["name"])
    return core | {b for b, names in blocks.items() if all(n in core for n in names)}


def relative_increases(table: pd.DataFrame, model: str, units: list[dict]) -> tuple[float, pd.Series]:
    """(intact error, per-unit relative increase (deleted − intact)/intact) of ``model``'s single
    deletions of core units (deletable, not downsampling)."""
    g = table[table["model"] == model]
    base = g[g["mode"] == "baseline"]["error"]
    single = g[(g["mode"] == "single") & g["error"].notna() & g["deleted"].isin(core_units(units))]
    if base.empty or single.empty:
        return float("nan"), pd.Series(dtype=float)
    b = float(base.iloc[0])
    return b, pd.Series(((single["error"] - b) / b).to_numpy() if b > 0 else np.nan, index=single["deleted"])


def _median_increase_ci(table, model, units, bits, n_boot, seed) -> tuple[float, float, float, int]:
    """Median relative increase over core units with a bootstrap CI over images (resampling the
    images of all configurations together, from the per-image wrong bits)."""
    b, inc = relative_increases(table, model, units)
    if inc.empty or not np.isfinite(inc).all():
        return float("nan"), float("nan"), float("nan"), 0
    g = table[table["model"] == model]
    n = int(g[g["mode"] == "baseline"]["n_images"].iloc[0])
    keys = {r["deleted"]: f"single|{r['deleted']}|{r['order']}" for _, r in g[g["mode"] == "single"].iterrows()}
    base_key = next(f"baseline||{r['order']}" for _, r in g[g["mode"] == "baseline"].iterrows())
    mb = bits.get(model, {})
    need = [base_key] + [keys[u] for u in inc.index]
    if not all(k in mb for k in need):
        return float(inc.median()), float("nan"), float("nan"), n
    w = np.stack([np.unpackbits(mb[k], count=n).astype(np.float32) for k in need])  # (1 + units, n)
    rng = np.random.default_rng(seed)
    meds = []
    for s in range(0, n_boot, 100):
        cnt = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(min(100, n_boot - s))], 1)
        errs = (w @ cnt.astype(np.float32)) / n          # (1 + units, B)
        with np.errstate(divide="ignore", invalid="ignore"):
            meds.append(np.median((errs[1:] - errs[0]) / errs[0], axis=0))
    meds = np.concatenate(meds)
    meds = meds[np.isfinite(meds)]
    lo, hi = np.quantile(meds, [0.025, 0.975]) if len(meds) else (np.nan, np.nan)
    return float(inc.median()), float(lo), float(hi), n


_SINGLE_CRIT = (f"statistic: median over deletable, non-downsampling units of the paired relative error increase "
                f"(deleted − intact)/intact, per network with a bootstrap CI over images; several seeds pooled by "
                f"a t-interval on log(1 + r), the log of the error ratio, so the CI stays above −1 (standard error "
                f"at least the image-level one). Supported "
                f"when the CI lies below the margin {LESION_RELATIVE_INCREASE.value}, not supported when above, "
                f"inconclusive otherwise. Gate: every network a competent predictor")
_CONTRAST_CRIT = (f"statistic: per seed, the plain twin's median relative error increase minus the ResNet's "
                  f"(the pair's CI from both image-level CIs); pooled by a t-interval over seeds. Supported when "
                  f"the CI lies above the margin {LESION_CONTRAST_MARGIN.value}, not supported when below, "
                  f"inconclusive otherwise. Gates: every network competent; twins of one known recipe and one "
                  f"architecture")


def single_deletion_verdicts(table: pd.DataFrame, roles: dict[str, Role], units: dict[str, list[dict]],
                             n_boot: int = 1000, seed: int = 0, bits: Optional[dict] = None) -> list[Verdict]:
    """Veit et al. Fig. 3, two claims: per residual group, deleting one unit barely changes its error (the
    absolute slogan); per equal-recipe twin pair, deleting one unit raises the ResNet's error less than the
    plain twin's (the contrast). A contrast that cannot be made is *not applicable*, saying why."""
    cache: dict[str, tuple] = {}

    def stat(lab):
        if lab not in cache:
            cache[lab] = _median_increase_ci(table, lab, units[lab], bits or {}, n_boot, seed)
        return cache[lab]

    groups = residual_groups(roles)
    out = [_barely(labs, roles, stat) for labs in groups]
    if not groups:
        out.append(_single_claim("a ResNet").not_applicable("no residual network was given"))
    cs = contrasts(roles)
    out += [_contrast(pairs, roles, stat) for pairs in cs]
    if not cs:
        out.append(_contrast_claim("a ResNet", "its plain twin").not_applicable(unpaired_reason(roles)))
    return out


def _single_claim(group: str) -> Claim:
    return Claim("lesion-single", f"Deleting one residual unit of {group} barely changes its error: the median "
                 f"relative increase stays below {LESION_RELATIVE_INCREASE.value} (Veit et al. 2016, Fig. 3)",
                 _SINGLE_CRIT, "median relative error increase (ResNet)", LESION_RELATIVE_INCREASE, "below")


def _contrast_claim(res: str, plain: str) -> Claim:
    return Claim("lesion-contrast", f"Deleting one unit raises {res}'s error less than {plain}'s: the twin's median "
                 f"relative increase exceeds the ResNet's by more than {LESION_CONTRAST_MARGIN.value} (Veit et al. "
                 "2016: ResNet against VGG)", _CONTRAST_CRIT, "plain − residual median relative error increase",
                 LESION_CONTRAST_MARGIN, "above")


def _evidence(labs, stat) -> dict:
    return {lab: dict(median_relative_increase=stat(lab)[0], ci_low=stat(lab)[1], ci_high=stat(lab)[2])
            for lab in labs}


def _barely(labs: list[str], roles, stat) -> Verdict:
    claim = _single_claim(roles[labs[0]].group)
    na, gates, scope = claim.gate(roles, labs, len(labs))
    if na:
        return na
    per = {lab: stat(lab) for lab in labs}
    iv = seed_interval([per[lab][0] for lab in labs], [per[lab][1:3] for lab in labs], scale="log1p")
    return claim.judge(iv, scope, n_images=max(p[3] for p in per.values()), n_seeds=len(labs), gates=gates,
                 per_seed={lab: per[lab][0] for lab in labs}, evidence=_evidence(labs, stat),
                 reference="Veit et al. 2016 Fig. 3: ResNet-110 median relative increase 0.06")


def _pair_ci(stat, r: str, p: str) -> tuple[float, tuple[float, float]]:
    """The plain − residual difference of one pair with a CI from both networks' image-level CIs."""
    (mr, lr, hr, _), (mp, lp, hp, _) = stat(r), stat(p)
    d = mp - mr
    se = math.sqrt(((hr - lr) / (2 * Z95)) ** 2 + ((hp - lp) / (2 * Z95)) ** 2)
    return d, (d - Z95 * se, d + Z95 * se)


def _contrast(pairs, roles, stat) -> Verdict:
    r0, p0, _ = pairs[0]
    claim = _contrast_claim(roles[r0].group, f"its plain twin {roles[p0].group}")
    labs = pair_names(pairs)
    na, gates, scope = claim.gate(roles, labs, len(pairs))
    if na:
        return na
    gates = gates + [f"twins: one recorded recipe ({roles[r0].recipe}) and one architecture"]
    diffs = {f"{p} − {r}": _pair_ci(stat, r, p) for r, p, _ in pairs}
    iv = seed_interval([d for d, _ in diffs.values()], [ci for _, ci in diffs.values()])
    return claim.judge(iv, scope, n_images=max(stat(x)[3] for x in labs), n_seeds=len(pairs), gates=gates,
                 per_seed={k: d for k, (d, _) in diffs.items()}, evidence=_evidence(labs, stat),
                 reason="paired by seed: " + ", ".join(diffs))


def _cliff(g: pd.DataFrame, chance: float, rng=None) -> float:
    """Largest rise of the median error per additional deleted unit, as a fraction of the gap between
    the intact error and chance (``rng``: resample each k's configurations)."""
    base = float(g[g["mode"] == "baseline"]["error"].iloc[0])
    rk = g[g["mode"] == "random-k"]
    meds = {0: base}
    for k, e in rk.groupby("k")["error"]:
        v = e.to_numpy()
        if rng is not None:
            v = v[rng.integers(0, len(v), len(v))]
        meds[int(k)] = float(np.median(v))
    ks = sorted(meds)
    gap = chance - base
    if len(ks) < 2 or gap <= 0:
        return float("nan")
    return max((meds[b] - meds[a]) / (b - a) for a, b in zip(ks, ks[1:])) / gap


_CLIFF_CRIT = (f"statistic: the largest rise of the median error per additional deleted unit between consecutive k "
               f"(k = 0 is the intact network), as a fraction of the gap between intact error and chance; "
               f"supported (no cliff) when its 95% CI lies below the margin {CLIFF_THRESHOLD.value}, not supported "
               f"when above, inconclusive otherwise. CI: bootstrap over the sampled configurations of each k per "
               f"network, t over seeds. The test resolves steps only as finely as the k grid. Gate: competent networks")


def no_cliff_verdicts(table: pd.DataFrame, roles: dict[str, Role], chance: float, n_boot: int = 1000,
                      seed: int = 0) -> list[Verdict]:
    """Veit et al. Fig. 5a, per residual group: the error rises smoothly with the number of deleted units."""
    out = []
    for labs in residual_groups(roles):
        labs = [lab for lab in labs if ((table["model"] == lab) & (table["mode"] == "random-k")).any()]
        if labs:
            out.append(_no_cliff(table, roles, labs, chance, n_boot, seed))
    if not out:
        out.append(_cliff_claim("a ResNet").not_applicable("no random-k rows for a residual network"))
    return out


def _cliff_claim(group: str) -> Claim:
    return Claim("lesion-random-k", f"The error of {group} rises smoothly with random deletions: no step closes "
                 f"more than {CLIFF_THRESHOLD.value} of the gap to chance per deleted unit (Veit et al. 2016, Fig. 5a)",
                 _CLIFF_CRIT, "largest rise per unit / gap to chance", CLIFF_THRESHOLD, "below")


def _no_cliff(table, roles, labs, chance, n_boot, seed) -> Verdict:
    claim = _cliff_claim(roles[labs[0]].group)
    na, gates, scope = claim.gate(roles, labs, len(labs))
    if na:
        return na
    per = {}
    for lab in labs:
        g = table[table["model"] == lab]
        rng = np.random.default_rng(stable_seed(seed, "cliff", lab))
        boots = np.array([_cliff(g, chance, rng) for _ in range(n_boot)])
        boots = boots[np.isfinite(boots)]
        ci = tuple(float(q) for q in np.quantile(boots, [0.025, 0.975])) if len(boots) else (np.nan, np.nan)
        per[lab] = (_cliff(g, chance), ci)
    iv = seed_interval([v for v, _ in per.values()], [ci for _, ci in per.values()])
    return claim.judge(iv, scope, n_images=int(table[table["model"] == labs[0]]["n_images"].max()), n_seeds=len(labs), gates=gates,
                 per_seed={lab: v for lab, (v, _) in per.items()}, evidence={lab: v for lab, (v, _) in per.items()})

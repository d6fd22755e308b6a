"""The lesion verdicts on language models (Veit et al. 2016 carried to next-token loss).

For LMs the outcome is the next-token loss (nats per token) rather than the top-1 error, and the relative
increase of a single deletion is (L_deleted − L_intact)/L_intact, L the mean loss over every token of the
windows. Two claims, with the image study's margins (:mod:`resprobe.probes.lesion_verdicts`):

- per residual model (its seeds pooled): deleting one unit (one sublayer: attention or MLP; a whole layer at
  ``--granularity block``) barely changes its loss — the median relative increase over the single deletions
  stays below a quarter;
- per equal-recipe twin pair: deleting one unit raises the plain twin's loss more than the residual model's,
  by more than a quarter of the intact loss (a plain unit deleted is replaced by the identity).

Per network the median's 95% CI comes from a bootstrap that resamples **documents**, the same documents for
the intact model and for every deletion (paired); seeds are pooled by a t-interval. Gates: competent networks
(:mod:`resprobe.probes.lm_common`), and for the contrast twins of one recorded recipe and architecture.
"""
from __future__ import annotations

import numpy as np

from ..metrics.lm import per_document
from ..metrics.stats import stable_seed
from ..verdict import Claim, Margin, Role, Verdict, contrasts, pair_names, residual_groups, seed_interval, unpaired_reason
from .lesion_plans import LesionConfig
from .lesion_verdicts import Z95

__all__ = ["single_loss_verdicts", "LM_RELATIVE_INCREASE", "LM_CONTRAST_MARGIN", "median_relative_increase"]

LM_RELATIVE_INCREASE = Margin(0.25, (
    "Veit et al. 2016's quarter of the intact error (ResNet-110's single deletions raised it by 0-0.19 of itself), "
    "carried to the next-token loss: a quarter of the intact loss"))
LM_CONTRAST_MARGIN = Margin(0.25, "the same quarter of the intact loss (as for images: Veit's spread of single "
                                  "deletions is not of interest)")

_SINGLE_CRIT = (f"statistic: median over single deletions of the relative next-token loss increase "
                f"(L_deleted − L_intact)/L_intact (L: mean loss over every token of the windows), per network with a "
                f"bootstrap CI over documents (paired: the same documents for every deletion and the intact model); "
                f"seeds pooled by a t-interval on log(1 + r), so the CI stays above −1. Supported when the CI lies "
                f"below the margin {LM_RELATIVE_INCREASE.value}, not supported when above, inconclusive otherwise. "
                f"Gate: every network a competent predictor (top-1 next-token error)")
_CONTRAST_CRIT = (f"statistic: per seed, the plain twin's median relative loss increase minus the residual model's "
                  f"(the pair's CI from both document-level CIs); pooled by a t-interval over seeds. Supported when "
                  f"the CI lies above the margin {LM_CONTRAST_MARGIN.value}, not supported when below, inconclusive "
                  f"otherwise. Gates: every network competent; twins of one known recipe and one architecture")


def _singles(configs) -> list[LesionConfig]:
    return [c for c in configs if c.mode == "single" and c.runnable and not c.drop and c.deleted]


def median_relative_increase(sums: dict, configs, docs: np.ndarray, n_boot: int, seed: int
                             ) -> tuple[float, float, float, int]:
    """(median relative loss increase over the single deletions, CI low, CI high, windows) from the per-window
    sums (``sums[key]``: ``(windows, 4)``, loss sum first, tokens second); documents resampled, paired."""
    singles = [c for c in _singles(configs) if c.key() in sums]
    base_key = LesionConfig("baseline").key()
    if not singles or base_key not in sums:
        return float("nan"), float("nan"), float("nan"), 0
    mats = [per_document(sums[k], docs)[0] for k in [base_key] + [c.key() for c in singles]]
    loss = np.stack([m[:, 0] for m in mats])              # (1 + deletions, documents)
    tokens = mats[0][:, 1]

    def med(w):
        L = (loss @ w) / (tokens @ w)
        return float(np.median((L[1:] - L[0]) / L[0]))

    d = loss.shape[1]
    rng = np.random.default_rng(seed)
    boots = np.array([med(np.bincount(rng.integers(0, d, d), minlength=d).astype(float)) for _ in range(n_boot)])
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return med(np.ones(d)), float(lo), float(hi), len(docs)


def single_loss_verdicts(sums: dict, configs: dict, docs: np.ndarray, roles: dict[str, Role], spec,
                         what: str = "unit") -> list[Verdict]:
    """The two claims of the module docstring (``sums``/``configs``: per label; ``spec``: its ``n_boot`` and
    ``seed`` make the bootstrap; ``what``: ``unit`` or ``layer``)."""
    n_boot, seed = spec.n_boot, spec.seed
    cache: dict = {}

    def stat(lab):
        if lab not in cache:
            cache[lab] = median_relative_increase(sums.get(lab, {}), configs.get(lab, ()), docs, n_boot,
                                                  stable_seed(seed, "lm-single", lab))
        return cache[lab]

    have = {lab for lab in roles if _singles(configs.get(lab, ()))}
    out = []
    groups = [g for g in residual_groups({k: r for k, r in roles.items() if k in have})]
    for labs in groups:
        claim = _single_claim(roles[labs[0]].group, what)
        na, gates, scope = claim.gate(roles, labs, len(labs))
        if na:
            out.append(na)
            continue
        per = {lab: stat(lab) for lab in labs}
        iv = seed_interval([per[lab][0] for lab in labs], [per[lab][1:3] for lab in labs], scale="log1p")
        out.append(claim.judge(iv, scope, n_images=max(p[3] for p in per.values()), n_seeds=len(labs), gates=gates,
                               per_seed={lab: per[lab][0] for lab in labs}, evidence=_evidence(labs, stat)))
    if not groups:
        out.append(_single_claim("a residual language model", what).not_applicable(
            "no single-deletion sweep of a residual language model"))
    cs = contrasts({k: r for k, r in roles.items() if k in have})
    for pairs in cs:
        r0, p0, _ = pairs[0]
        claim = _contrast_claim(roles[r0].group, f"its plain twin {roles[p0].group}", what)
        labs = pair_names(pairs)
        na, gates, scope = claim.gate(roles, labs, len(pairs))
        if na:
            out.append(na)
            continue
        diffs = {}
        for r, p, _ in pairs:
            (mr, lr, hr, _), (mp, lp, hp, _) = stat(r), stat(p)
            se = np.sqrt(((hr - lr) / (2 * Z95)) ** 2 + ((hp - lp) / (2 * Z95)) ** 2)
            diffs[f"{p} − {r}"] = (mp - mr, (mp - mr - Z95 * se, mp - mr + Z95 * se))
        iv = seed_interval([d for d, _ in diffs.values()], [ci for _, ci in diffs.values()])
        out.append(claim.judge(iv, scope, n_images=max(stat(x)[3] for x in labs), n_seeds=len(pairs),
                               gates=gates + [f"twins: one recorded recipe ({roles[r0].recipe}) and one architecture"],
                               per_seed={k: d for k, (d, _) in diffs.items()}, evidence=_evidence(labs, stat),
                               reason="paired by seed: " + ", ".join(diffs)))
    if not cs:
        out.append(_contrast_claim("a residual language model", "its plain twin", what).not_applicable(
            unpaired_reason(roles)))
    return out


def _single_claim(group: str, what: str) -> Claim:
    return Claim("lesion-single", f"Deleting one {what} of {group} barely changes its next-token loss: the median "
                 f"relative increase stays below {LM_RELATIVE_INCREASE.value} (Veit et al. 2016, Fig. 3, on loss)",
                 _SINGLE_CRIT, "median relative loss increase", LM_RELATIVE_INCREASE, "below")


def _contrast_claim(res: str, plain: str, what: str) -> Claim:
    return Claim("lesion-contrast", f"Deleting one {what} raises {res}'s loss less than {plain}'s: the twin's median "
                 f"relative increase exceeds the residual model's by more than {LM_CONTRAST_MARGIN.value}",
                 _CONTRAST_CRIT, "plain − residual median relative loss increase", LM_CONTRAST_MARGIN, "above")


def _evidence(labs, stat) -> dict:
    return {lab: dict(median_relative_increase=stat(lab)[0], ci_low=stat(lab)[1], ci_high=stat(lab)[2])
            for lab in labs}

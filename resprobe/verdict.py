"""Verdicts: pure functions of measured results.

A :class:`Verdict` records what was decided and why: the conjecture, the outcome (``supported`` |
``not supported`` | ``inconclusive``), the criterion in words with its thresholds (fixed before
measuring), the statistic with its 95% CI, the scope (``this network`` when the CI comes from
images, ``across N seeds`` when it comes from independently trained networks), the counts, and the
evidence numbers. :func:`decide` is the one three-way rule: a CI wholly on the conjecture's side of
the threshold supports it, wholly on the other side refutes it, and a CI that straddles (or touches)
the threshold is inconclusive.

The per-conjecture verdict functions live beside their probes (``resprobe.probes.*``); they take
the probes' result tables and a :class:`Roles` mapping (which network is residual, which is its
plain twin, which seeds belong together).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

__all__ = ["Verdict", "Role", "decide", "SUPPORTED", "NOT_SUPPORTED", "INCONCLUSIVE", "OUTCOMES", "seed_ci",
           "bootstrap_ci", "scope_of", "pairs_by_seed", "inconclusive", "unpaired_reason", "primary_residual", "pair_names"]

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"
OUTCOMES = (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE)


@dataclass(frozen=True)
class Verdict:
    conjecture: str
    verdict: str
    criterion: str
    statistic_name: str
    statistic: Optional[float]
    ci_low: Optional[float]
    ci_high: Optional[float]
    threshold: Optional[float]
    scope: str
    n_images: int = 0
    n_seeds: int = 0
    evidence: dict = field(default_factory=dict)
    reason: str = ""
    reference: str = ""

    def __post_init__(self):
        if self.verdict not in OUTCOMES:
            raise ValueError(f"verdict must be one of {OUTCOMES}, got {self.verdict!r}")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Role:
    """What a network is for the verdicts: its group (architecture), training seed, whether it is residual
    (has residual units) or a plain twin, and its training recipe (a key of the recorded recipe; None when
    unknown, e.g. a network trained by others)."""

    group: str
    seed: Optional[int]
    residual: bool
    recipe: Optional[str] = None


def decide(ci_low: Optional[float], ci_high: Optional[float], threshold: float, supported_when: str) -> str:
    """``supported_when='below'``: supported if the whole CI is below ``threshold``, not supported if
    the whole CI is above it, inconclusive otherwise (and when the CI is undefined). ``'above'``: the
    mirror image. A CI that touches the threshold is inconclusive."""
    if supported_when not in ("below", "above"):
        raise ValueError("supported_when must be 'below' or 'above'")
    if ci_low is None or ci_high is None or not (math.isfinite(ci_low) and math.isfinite(ci_high)):
        return INCONCLUSIVE
    if ci_high < threshold:
        return SUPPORTED if supported_when == "below" else NOT_SUPPORTED
    if ci_low > threshold:
        return SUPPORTED if supported_when == "above" else NOT_SUPPORTED
    return INCONCLUSIVE


def inconclusive(conjecture: str, criterion: str, statistic_name: str, reason: str, scope: str = "this network",
                 **kw) -> Verdict:
    """A verdict that could not be reached (missing input), saying why."""
    return Verdict(conjecture, INCONCLUSIVE, criterion, statistic_name, kw.pop("statistic", None),
                   kw.pop("ci_low", None), kw.pop("ci_high", None), kw.pop("threshold", None), scope,
                   reason=reason, **kw)


def seed_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean over seeds with a Student-t CI: ``(mean, low, high)``. Needs at least 2 values (else
    the CI is undefined: NaN)."""
    from scipy import stats
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(v.mean())
    if len(v) < 2:
        return m, float("nan"), float("nan")
    se = float(v.std(ddof=1)) / math.sqrt(len(v))
    t = float(stats.t.ppf(0.5 + level / 2, len(v) - 1))
    return m, m - t * se, m + t * se


def bootstrap_ci(stat: Callable[[np.ndarray], float], n: int, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile CI of ``stat(idx)`` over ``n_boot`` resamples ``idx`` of ``range(n)`` with replacement."""
    if n <= 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    vals = np.array([stat(rng.integers(0, n, n)) for _ in range(n_boot)], dtype=float)
    vals = vals[np.isfinite(vals)]
    if len(vals) == 0:
        return float("nan"), float("nan")
    a = (1 - level) / 2
    lo, hi = np.quantile(vals, [a, 1 - a])
    return float(lo), float(hi)


def scope_of(n_seeds: int, networks: Sequence[str] = ()) -> str:
    """``this network`` (a CI over images) or ``across N seeds`` (a CI over independently trained networks),
    naming the networks the statistic comes from."""
    base = f"across {n_seeds} seeds" if n_seeds >= 2 else "this network"
    names = list(dict.fromkeys(networks))
    return base + (f" ({', '.join(names)})" if names else "")


def pair_names(pairs: Sequence[tuple]) -> list[str]:
    """The labels of ``(residual, plain, seed)`` pairs, residual then plain, in pair order."""
    return [x for r, p, *_ in pairs for x in (r, p)]


def pairs_by_seed(roles: Mapping[str, Role]) -> list[tuple[str, str, Optional[int]]]:
    """``(residual label, plain label, seed)``: a residual group and a plain group trained with the same
    recipe, paired by seed (the combination with most seeds; without seeds, one network of each).
    Networks with different recipes are never paired: a contrast between them would measure the recipe."""
    groups: dict[tuple, dict] = {}
    for lab, r in roles.items():
        groups.setdefault((r.residual, r.group), {})[r.seed] = lab
    best: list = []
    for (res, rg), rmap in groups.items():
        if not res:
            continue
        for (pres, pg), pmap in groups.items():
            if pres:
                continue
            recipes = {roles[x].recipe for x in list(rmap.values()) + list(pmap.values())}
            if len(recipes) != 1:
                continue
            common = sorted(set(rmap) & set(pmap), key=lambda s: (s is None, s))
            pairs = [(rmap[s], pmap[s], s) for s in common]
            if not pairs and len(rmap) == 1 and len(pmap) == 1:
                pairs = [(next(iter(rmap.values())), next(iter(pmap.values())), None)]
            if len(pairs) > len(best):
                best = pairs
    return best


def unpaired_reason(roles: Mapping[str, Role]) -> str:
    """Why no residual/plain contrast could be made."""
    res = [r for r in roles.values() if r.residual]
    plain = [r for r in roles.values() if not r.residual]
    if not res:
        return "no residual network was given"
    if not plain:
        return "no plain twin was given (pass a plain network trained with the same recipe)"
    return ("the plain twin was not trained with the residual network's recipe (or its recipe is unknown, as for "
            "networks trained by others): a contrast would measure the recipe, so none is made")


def primary_residual(roles: Mapping[str, Role]) -> list[str]:
    """The labels of the first residual group (its seeds)."""
    res = [(lab, r) for lab, r in roles.items() if r.residual]
    if not res:
        return []
    g = res[0][1].group
    return [lab for lab, r in res if r.group == g]

"""The verdict machinery: the three-way rule and the equivalence band at their boundaries, seed intervals that
stay inside the statistic's range and never collapse below the image-level uncertainty, the competence gate,
and pairing only twins trained with one known recipe."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from resprobe.verdict import (INCONCLUSIVE, NOT_APPLICABLE, NOT_SUPPORTED, SUPPORTED, Competence, Margin, Verdict,
                              competence_gate, contrasts, decide, decide_within, Claim, pairs_by_seed,
                              primary_residual, residual_groups, seed_ci, seed_interval, unpaired_reason)

from conftest import role


def test_decide_at_the_margin():
    assert decide(0.1, 0.2, 0.25, "below") == SUPPORTED
    assert decide(0.3, 0.4, 0.25, "below") == NOT_SUPPORTED
    assert decide(0.2, 0.3, 0.25, "below") == INCONCLUSIVE          # straddles
    assert decide(0.2, 0.25, 0.25, "below") == INCONCLUSIVE         # touches
    assert decide(0.25, 0.3, 0.25, "above") == INCONCLUSIVE
    assert decide(0.26, 0.3, 0.25, "above") == SUPPORTED
    assert decide(float("nan"), 0.1, 0.25, "below") == INCONCLUSIVE
    assert decide(None, None, 0.25, "below") == INCONCLUSIVE
    with pytest.raises(ValueError):
        decide(0, 1, 0.5, "sideways")


def test_decide_within_is_an_equivalence_test():
    assert decide_within(-1.2, -0.8, -1.5, -0.5) == SUPPORTED
    assert decide_within(-0.1, -0.02, -1.5, -0.5) == NOT_SUPPORTED   # far from the predicted rate
    assert decide_within(-2.0, -1.8, -1.5, -0.5) == NOT_SUPPORTED
    assert decide_within(-0.6, -0.3, -1.5, -0.5) == INCONCLUSIVE     # straddles an edge
    assert decide_within(-1.5, -1.0, -1.5, -0.5) == INCONCLUSIVE     # touches
    assert decide_within(float("nan"), 1, -1.5, -0.5) == INCONCLUSIVE


def test_seed_ci_is_the_student_t_interval():
    v = [0.19, 0.20, 0.21]
    m, lo, hi = seed_ci(v)
    half = stats.t.ppf(0.975, 2) * np.std(v, ddof=1) / math.sqrt(3)
    assert m == pytest.approx(0.2) and lo == pytest.approx(0.2 - half) and hi == pytest.approx(0.2 + half)
    m, lo, hi = seed_ci([0.5])
    assert m == 0.5 and math.isnan(lo) and math.isnan(hi)  # one seed, no image CI: no interval
    iv = seed_interval([0.19, float("nan"), 0.21])  # a seed without a value is not dropped in silence
    assert math.isnan(iv.lo) and "1 of 3 seeds" in iv.method


def test_seed_interval_respects_the_range_of_correlations_and_ratios():
    # three Spearman rho far apart: a linear t-interval leaves [-1, 1] (the audit saw [-0.70, 1.51])
    rho = [0.95, 0.2, 0.9]
    m, lo, hi = seed_ci(rho)
    assert hi > 1
    iv = seed_interval(rho, scale="fisher")
    assert -1 < iv.lo < iv.stat < iv.hi < 1
    z = np.arctanh(rho)
    half = stats.t.ppf(0.975, 2) * np.std(z, ddof=1) / math.sqrt(3)
    assert iv.hi == pytest.approx(math.tanh(z.mean() + half)) and iv.lo == pytest.approx(math.tanh(z.mean() - half))
    # ratios: the log scale keeps the CI positive (the audit saw [-2303, 7581])
    r = [0.01, 5.0, 40.0]
    assert seed_ci(r)[1] < 0
    iv = seed_interval(r, scale="log")
    assert 0 < iv.lo < iv.stat < iv.hi and iv.stat == pytest.approx(float(np.exp(np.log(r).mean())))
    assert "df 2" in iv.method and "log" in iv.method
    # a non-positive value has no log: no interval (never a silently dropped seed)
    assert math.isnan(seed_interval([0.5, -0.1, 0.7], scale="log").lo)
    # relative increases (≥ −1): three seeds far past 0.25 (the zoo's 1.73, 1.34, 0.83) decide on log(1 + r)
    iv = seed_interval([1.725, 1.338, 0.825], scale="log1p")
    z = np.log1p([1.725, 1.338, 0.825])
    half = stats.t.ppf(0.975, 2) * np.std(z, ddof=1) / math.sqrt(3)
    assert iv.lo == pytest.approx(math.expm1(z.mean() - half)) and iv.lo > 0.25 > seed_ci([1.725, 1.338, 0.825])[1]
    assert math.isnan(seed_interval([0.2, -1.0, 0.3], scale="log1p").lo)


def test_seed_interval_never_narrower_than_the_images_allow():
    # seeds that agree exactly: no interval without image-level CIs, the image-level width with them
    iv = seed_interval([0.0, 0.0, 0.0])
    assert math.isnan(iv.lo) and "agree exactly" in iv.method
    within = [(-0.1, 0.1)] * 3
    iv = seed_interval([0.0, 0.0, 0.0], within)
    se = 0.1 / stats.norm.ppf(0.975) / math.sqrt(3)
    assert iv.hi == pytest.approx(stats.t.ppf(0.975, 2) * se) and "floored" in iv.method
    # seeds that disagree more than their images: the between-seed spread rules
    iv2 = seed_interval([0.0, 1.0, 2.0], within)
    assert iv2.hi - iv2.lo > 2 and "floored" not in iv2.method
    # one network: its own CI over images
    iv = seed_interval([0.3], [(0.2, 0.4)])
    assert (iv.stat, iv.lo, iv.hi) == (0.3, 0.2, 0.4)


def test_judge_and_verdict_outcomes():
    m = Margin(0.25, "a source")
    iv = seed_interval([0.1], [(0.05, 0.15)])
    v = Claim("k", "claim", "crit", "s", m, "below").judge(iv, "this network")
    assert v.verdict == SUPPORTED and v.margin_source == "a source" and v.threshold == 0.25 and v.key == "k"
    v = Claim("k", "claim", "crit", "s", m, "below").judge(seed_interval([0.1]), "this network")
    assert v.verdict == INCONCLUSIVE and "no CI" in v.reason
    with pytest.raises(ValueError):
        Verdict("c", "maybe", "crit", "s", 0.0, 0.0, 0.0, 0.0, "this network")
    assert Verdict("c", NOT_APPLICABLE, "crit", "s", None, None, None, 0.25, "").verdict == "not applicable"


def test_competence_gate():
    c = Competence(0.878, 0.87, 0.886, 0.9, 10000)          # random init on CIFAR-10
    assert not c.competent and c.bar == pytest.approx(0.45)
    assert Competence(0.19, 0.18, 0.2, 0.9, 10000).competent
    assert not Competence(0.44, 0.40, 0.48, 0.9, 500).competent  # the CI reaches past half the chance error
    roles = {"a": role("g", error=0.1), "b": role("g", error=0.89), "c": role("g", error=None)}
    fails, gates = competence_gate(roles, ["a", "b", "c"])
    assert len(fails) == 2 and "b is not a competent predictor" in fails[0] and "not measured" in fails[1]
    assert gates[0].startswith("competence a: passed")


def test_pairs_only_twins_trained_alike():
    roles = {f"res/s{s}": role("res", s, True) for s in range(3)}
    roles.update({f"plain/s{s}": role("plain", s, False) for s in range(3)})
    assert pairs_by_seed(roles) == [(f"res/s{s}", f"plain/s{s}", s) for s in range(3)]
    # unknown recipes never equal each other (the audit: {None} counted as one recipe)
    unknown = {"shared": role("shared", None, True, recipe=None), "plain": role("plain", None, False, recipe=None)}
    assert pairs_by_seed(unknown) == [] and "no recorded training recipe" in unpaired_reason(unknown)
    mixed = {"shared": role("shared", None, True, None), "plain": role("plain", 0, False, "A")}
    assert pairs_by_seed(mixed) == []
    other = {"res": role("res", 0, True, "B"), "plain": role("plain", 0, False, "A")}
    assert pairs_by_seed(other) == [] and "recipe" in unpaired_reason(other)
    # twins of another depth (ResNet-32 against plain-20) or width are no twins
    deeper = {"res": role("res", 0, True, arch=((5, 5, 5), 464154)), "plain": role("plain", 0, False, arch=((3, 3, 3), 269722))}
    assert pairs_by_seed(deeper) == [] and "another depth" in unpaired_reason(deeper)
    wider = {"res": role("res", 0, True, arch=((3,), 2000)), "plain": role("plain", 0, False, arch=((3,), 1000))}
    assert pairs_by_seed(wider) == []
    proj = {"res": role("res", 0, True, arch=((3,), 1050)), "plain": role("plain", 0, False, arch=((3,), 1000))}
    assert len(pairs_by_seed(proj)) == 1  # a projection shortcut's few parameters keep them twins
    # the equal-recipe combination is found among others; every residual group gets its own contrast
    allr = dict(roles, shared=role("shared", None, True, None))
    assert len(pairs_by_seed(allr)) == 3 and len(contrasts(allr)) == 1
    assert primary_residual(allr) == ["res/s0", "res/s1", "res/s2"]
    assert residual_groups(allr) == [["res/s0", "res/s1", "res/s2"], ["shared"]]
    two = dict(roles, **{f"res2/s{s}": role("res2", s, True) for s in range(2)})
    assert [len(c) for c in contrasts(two)] == [3, 2]
    assert "no plain twin" in unpaired_reason({"r": role("r", 0, True)})


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-0.999, 0.999), min_size=1, max_size=6), st.sampled_from(["fisher", "log", "log1p"]))
def test_no_interval_leaves_its_statistic_range(values, scale):
    lo_bound = {"fisher": -1.0, "log": 0.0, "log1p": -1.0}[scale]
    v = [abs(x) + 1e-3 for x in values] if scale == "log" else values
    within = [(x - 0.5 * abs(x), x + 0.5 * abs(x)) for x in v] if scale == "log" else None
    iv = seed_interval(v, within, scale=scale)
    for x in (iv.lo, iv.hi):
        if math.isfinite(x):
            assert x >= lo_bound and (scale != "fisher" or x <= 1.0)

"""The verdict machinery: the three-way rule at its boundaries, seed CIs, and pairing only networks
trained with the same recipe."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from resprobe.verdict import (INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, Role, Verdict, decide, pairs_by_seed,
                              primary_residual, seed_ci, unpaired_reason)


def test_decide_at_the_threshold():
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


def test_seed_ci_is_the_student_t_interval():
    v = [0.19, 0.20, 0.21]
    m, lo, hi = seed_ci(v)
    half = stats.t.ppf(0.975, 2) * np.std(v, ddof=1) / math.sqrt(3)
    assert m == pytest.approx(0.2) and lo == pytest.approx(0.2 - half) and hi == pytest.approx(0.2 + half)
    m, lo, hi = seed_ci([0.5])
    assert m == 0.5 and math.isnan(lo) and math.isnan(hi)  # one seed: no CI across seeds


def test_verdict_refuses_unknown_outcomes():
    with pytest.raises(ValueError):
        Verdict("c", "maybe", "crit", "s", 0.0, 0.0, 0.0, 0.0, "this network")


def test_pairs_only_networks_trained_alike():
    roles = {f"res/s{s}": Role("res", s, True, "A") for s in range(3)}
    roles.update({f"plain/s{s}": Role("plain", s, False, "A") for s in range(3)})
    assert pairs_by_seed(roles) == [(f"res/s{s}", f"plain/s{s}", s) for s in range(3)]
    # a network trained by others (no recorded recipe) is never contrasted with one trained here
    mixed = {"shared": Role("shared", None, True, None), "plain": Role("plain", 0, False, "A")}
    assert pairs_by_seed(mixed) == [] and "recipe" in unpaired_reason(mixed)
    other = {"res": Role("res", 0, True, "B"), "plain": Role("plain", 0, False, "A")}
    assert pairs_by_seed(other) == []
    # the equal-recipe combination is found among others
    allr = dict(roles, shared=Role("shared", None, True, None))
    assert len(pairs_by_seed(allr)) == 3
    assert primary_residual(allr) == ["res/s0", "res/s1", "res/s2"]
    assert "no plain twin" in unpaired_reason({"r": Role("r", 0, True)})

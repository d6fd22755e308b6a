"""Bootstrap CIs: the binomial shortcut is the image bootstrap; seeded; sensible widths."""
from __future__ import annotations

import numpy as np

from resprobe.metrics.stats import bootstrap_mean_ci, bootstrap_proportion_ci, stable_seed


def test_binomial_shortcut_equals_resampling_bootstrap():
    rng = np.random.default_rng(0)
    x = (rng.random(400) < 0.3).astype(float)
    k, n = int(x.sum()), len(x)
    lo1, hi1 = bootstrap_proportion_ci(k, n, n_boot=20000, seed=1)
    lo2, hi2 = bootstrap_mean_ci(x, n_boot=20000, seed=2)
    assert abs(lo1 - lo2) <= 0.006 and abs(hi1 - hi2) <= 0.006
    # and both match the normal approximation of a proportion's sampling distribution
    p = k / n
    se = np.sqrt(p * (1 - p) / n)
    assert abs(lo1 - (p - 1.96 * se)) < 0.01 and abs(hi1 - (p + 1.96 * se)) < 0.01


def test_seeded_and_width_scales_with_n():
    assert bootstrap_proportion_ci(30, 100, seed=5) == bootstrap_proportion_ci(30, 100, seed=5)
    assert bootstrap_mean_ci(np.arange(50.0), seed=3) == bootstrap_mean_ci(np.arange(50.0), seed=3)
    w100 = np.subtract(*bootstrap_proportion_ci(30, 100, n_boot=5000)[::-1])
    w10k = np.subtract(*bootstrap_proportion_ci(3000, 10000, n_boot=5000)[::-1])
    assert 7 < w100 / w10k < 13  # ~ sqrt(100)
    lo, hi = bootstrap_mean_ci(np.full(20, 2.5))
    assert lo == hi == 2.5
    assert np.isnan(bootstrap_proportion_ci(0, 0)[0])


def test_stable_seed():
    assert stable_seed(0, "single|layer1.0|") == stable_seed(0, "single|layer1.0|")
    assert stable_seed(0, "a") != stable_seed(1, "a")

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


def test_means_ci_is_each_columns_bootstrap_from_shared_resamples():
    from resprobe.metrics.stats import bootstrap_means_ci, resample_counts
    rng = np.random.default_rng(4)
    v = np.stack([rng.normal(size=137), rng.exponential(size=137), np.full(137, 2.0), rng.random(137)], 1)
    v[5, 3] = np.nan  # a NaN column stays NaN, one column at a time or together
    lo, hi = bootstrap_means_ci(v, n_boot=250, seed=11, chunk=60)
    for j in range(3):  # the column-at-a-time bootstrap with the same seed draws the same images
        assert np.allclose((lo[j], hi[j]), bootstrap_mean_ci(v[:, j], 250, seed=11, chunk=60), rtol=1e-12, atol=0)
    assert lo[2] == hi[2] == 2.0 and np.isnan(lo[3]) and np.isnan(hi[3])
    w = np.array([0.0, 1.0, np.inf])  # an infinite column: as one column at a time, element by element
    with np.errstate(invalid="ignore"):
        np.testing.assert_equal(np.ravel(bootstrap_means_ci(w[:, None], n_boot=100, seed=3)),
                                bootstrap_mean_ci(w, n_boot=100, seed=3))
    # the counts are the drawn indices counted, row by row, and add up to n (both ways of counting: few items
    # at once, many row by row)
    for n in (9, 5000):
        for idx, counts in resample_counts(n, 7, seed=2, chunk=3):
            assert counts.shape == (len(idx), n) and counts.dtype == np.float64 and (counts.sum(1) == n).all()
            for row, c in zip(idx, counts):
                assert (np.bincount(row, minlength=n) == c).all()
    # the CI covers the mean of a normal sample as the t interval does
    x = rng.normal(3.0, 2.0, size=(400, 1))
    lo, hi = bootstrap_means_ci(x, n_boot=4000, seed=1)
    se = x.std(ddof=1) / 20
    assert abs(lo[0] - (x.mean() - 1.96 * se)) < 0.25 * se and abs(hi[0] - (x.mean() + 1.96 * se)) < 0.25 * se

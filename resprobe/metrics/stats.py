"""Seeded bootstrap confidence intervals (pure functions on arrays)."""
from __future__ import annotations

import zlib

import numpy as np

__all__ = ["bootstrap_mean_ci", "bootstrap_means_ci", "resample_counts", "bootstrap_stats", "percentile_ci",
           "means_stat", "pooled_std_stat", "bootstrap_proportion_ci", "pooled_std", "bootstrap_pooled_std_ci", "mcnemar_exact", "holm",
           "stable_seed"]


def stable_seed(*parts) -> int:
    """A seed derived from ``parts`` that is the same in every process (unlike ``hash``)."""
    return zlib.crc32("\x1f".join(map(str, parts)).encode()) & 0x7FFFFFFF


def bootstrap_mean_ci(values, n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                      chunk: int = 100) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` (resampling the values with replacement).

    Memory stays at ``chunk * len(values)`` indices whatever ``n_boot`` is.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    n = len(v)
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for s in range(0, n_boot, chunk):
        b = min(chunk, n_boot - s)
        means[s:s + b] = v[rng.integers(0, n, size=(b, n))].mean(1)
    a = (1 - level) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return float(lo), float(hi)


def resample_counts(n: int, n_boot: int, seed: int = 0, chunk: int = 100):
    """The seeded bootstrap resamples of ``n`` items, ``chunk`` at a time: yields ``(idx, counts)`` with
    ``idx`` (b, n) the drawn positions and ``counts`` (b, n) float64 how often each item is drawn.

    The draws are those of :func:`bootstrap_mean_ci` with the same seed (``rng.integers(0, n, (b, n))``),
    so every statistic computed from one seed's counts sees the same resampled images."""
    rng = np.random.default_rng(seed)
    for s in range(0, n_boot, chunk):
        b = min(chunk, n_boot - s)
        idx = rng.integers(0, n, size=(b, n))
        if n < 4096:  # one count for all rows
            counts = np.bincount((idx + np.arange(b)[:, None] * n).ravel(), minlength=b * n).reshape(b, n)
            yield idx, counts.astype(np.float64)
            continue
        counts = np.empty((b, n))
        for k, row in enumerate(idx):  # row by row: the count array stays in cache
            counts[k] = np.bincount(row, minlength=n)
        yield idx, counts


def bootstrap_stats(n: int, stats: list, n_boot: int = 1000, seed: int = 0, chunk: int = 100) -> list:
    """Bootstrap distributions of several statistics of the same resamples of ``n`` items: each
    ``stat(idx, counts)`` maps a chunk of resamples (:func:`resample_counts`) to a (b, k) array; returns,
    for each, its (n_boot, k) values."""
    out = [None] * len(stats)
    s = 0
    for idx, counts in resample_counts(n, n_boot, seed, chunk):
        for j, stat in enumerate(stats):
            v = np.asarray(stat(idx, counts), np.float64).reshape(len(idx), -1)
            if out[j] is None:
                out[j] = np.empty((n_boot, v.shape[1]))
            out[j][s:s + len(idx)] = v
        s += len(idx)
    return out


def percentile_ci(boots: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of bootstrap values (n_boot, k), per column."""
    a = (1 - level) / 2
    lo, hi = np.quantile(boots, [a, 1 - a], axis=0)
    return lo, hi


def means_stat(values):
    """The statistic of :func:`bootstrap_stats` giving the means of the columns of ``values`` (n, m) in each
    resample: one matrix product with the counts; a column with a NaN or an infinity is resampled element by
    element (its means are NaN/inf as they would be one column at a time)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[:, None]
    n, m = v.shape
    finite = np.isfinite(v).all(0)
    vf, odd = v[:, finite], np.flatnonzero(~finite)

    def stat(idx, counts):
        out = np.empty((len(idx), m))
        out[:, finite] = (counts @ vf) / n
        for j in odd:
            out[:, j] = v[:, j][idx].mean(1)
        return out
    return stat


def bootstrap_means_ci(values, n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                       chunk: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap CIs of the means of the m columns of ``values`` (n, m), all from the same
    resamples of the n rows (images): column j gets what ``bootstrap_mean_ci(values[:, j], seed=seed)``
    gives, to rounding, at the cost of one matrix product per chunk instead of m gathers.
    Returns ``(low, high)``, arrays of m."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[:, None]
    if len(v) == 0:
        return np.full(v.shape[1], np.nan), np.full(v.shape[1], np.nan)
    return percentile_ci(bootstrap_stats(len(v), [means_stat(v)], n_boot, seed, chunk)[0], level)


def bootstrap_proportion_ci(k: int, n: int, n_boot: int = 1000, level: float = 0.95,
                            seed: int = 0) -> tuple[float, float]:
    """Bootstrap CI of a proportion k/n over images, from the counts alone.

    For 0/1 values, resampling n images with replacement gives a count that is exactly
    Binomial(n, k/n) distributed, so drawing that binomial *is* the nonparametric bootstrap —
    without keeping per-image values (memory independent of the data-set size).
    """
    if n <= 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    props = rng.binomial(n, k / n, size=n_boot) / n
    a = (1 - level) / 2
    lo, hi = np.quantile(props, [a, 1 - a])
    return float(lo), float(hi)


def pooled_std(s1, s2, n):
    """Sample standard deviation of n values from their sum ``s1`` and sum of squares ``s2`` (arrays
    broadcast: one std per entry). NaN where n < 2."""
    s1, s2, n = np.asarray(s1, np.float64), np.asarray(s2, np.float64), np.asarray(n, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.maximum(s2 - s1 * s1 / n, 0.0) / (n - 1)
        return np.where(n > 1, np.sqrt(var), np.nan)


def pooled_std_from_counts(counts, s1, s2, per_image):
    """Pooled std of resampled data sets: ``counts`` (B, n) says how often each image is drawn;
    ``s1``, ``s2`` (n, L) are per-image sums of L layers with ``per_image`` (L,) elements each. (B, L)."""
    counts = np.asarray(counts, np.float64)
    n_el = counts.sum(1, keepdims=True) * np.asarray(per_image, np.float64)[None, :]
    return pooled_std(counts @ s1, counts @ s2, n_el)


def pooled_std_stat(s1, s2, per_image):
    """The statistic of :func:`bootstrap_stats` giving the pooled std of L layers in each resample, from
    per-image sums ``s1``, ``s2`` (n, L) of ``per_image`` (L,) elements."""
    s1, s2 = np.atleast_2d(np.asarray(s1, np.float64)), np.atleast_2d(np.asarray(s2, np.float64))
    return lambda idx, counts: pooled_std_from_counts(counts, s1, s2, per_image)


def bootstrap_pooled_std_ci(s1, s2, per_image, n_boot: int = 1000, level: float = 0.95, seed: int = 0):
    """Percentile bootstrap CI over images of the std over all elements, for L layers at once.

    ``s1``, ``s2``: (n, L) per-image sums Σr and Σr²; ``per_image``: (L,) elements per image. Each
    resample draws n images with replacement, shared by all layers.
    Returns ``(low, high)``, arrays of L. The resamples are :func:`resample_counts`' with ``seed``: the same
    images as :func:`bootstrap_means_ci` with that seed."""
    s1 = np.atleast_2d(np.asarray(s1, np.float64))
    n, L = s1.shape
    if n == 0:
        return np.full(L, np.nan), np.full(L, np.nan)
    return percentile_ci(bootstrap_stats(n, [pooled_std_stat(s1, s2, per_image)], n_boot, seed)[0], level)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar test of paired 0/1 outcomes from the discordant counts ``b`` and ``c``
    (images that flip one way and the other): binomial test of ``b`` out of ``b + c`` at 1/2."""
    from scipy.stats import binomtest
    b, c = int(b), int(c)
    if b + c == 0:
        return 1.0
    return float(binomtest(b, b + c, 0.5).pvalue)


def holm(pvalues) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (family-wise error control), in the input order."""
    p = np.asarray(pvalues, dtype=np.float64)
    m = len(p)
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adj[i] = running
    return adj

"""Seeded bootstrap confidence intervals (pure functions on arrays)."""
from __future__ import annotations

import zlib

import numpy as np

__all__ = ["bootstrap_mean_ci", "bootstrap_proportion_ci", "stable_seed"]


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

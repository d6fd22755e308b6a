"""Statistics of 1-D sequences (gradients along a line of inputs): autocorrelation, power-spectrum
slope, correlation matrices across realisations, reference noises and simple fits. Pure numpy."""
from __future__ import annotations

import numpy as np

__all__ = ["autocorrelation", "lag1", "spectral_slope", "correlation_matrix", "white_noise", "brown_noise",
           "fit_exponential_log2", "fit_power_law", "lag1_vectors", "spectral_slope_vectors"]


def autocorrelation(x, max_lag: int | None = None) -> np.ndarray:
    """Normalized autocorrelation r[k] = Σ_t (x_t − x̄)(x_{t+k} − x̄) / Σ_t (x_t − x̄)², k = 0..max_lag.
    A constant sequence — relative spread below 1e-6, i.e. float32 rounding — has r = 1 at every lag
    (perfectly correlated by convention)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    n = len(x)
    max_lag = n - 1 if max_lag is None else min(max_lag, n - 1)
    d = x - x.mean()
    den = float(d @ d)
    if den <= (1e-6) ** 2 * max(float(x @ x), 1e-300):
        return np.ones(max_lag + 1)
    return np.array([float(d[: n - k] @ d[k:]) / den for k in range(max_lag + 1)])


def lag1(x) -> float:
    return float(autocorrelation(x, 1)[1])


def spectral_slope(x) -> float:
    """Least-squares slope of log10 power vs log10 frequency of the mean-removed sequence's
    periodogram (zero frequency excluded): white noise ≈ 0, brown noise (a random walk) ≈ −2.
    NaN for a constant sequence (relative spread below 1e-6), whose spectrum is empty."""
    x = np.asarray(x, dtype=np.float64).ravel()
    d = x - x.mean()
    if float(d @ d) <= (1e-6) ** 2 * max(float(x @ x), 1e-300):
        return float("nan")
    p = np.abs(np.fft.rfft(x - x.mean())) ** 2
    f = np.fft.rfftfreq(len(x))
    keep = (f > 0) & (p > 0)
    if keep.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log10(f[keep]), np.log10(p[keep]), 1)[0])


def correlation_matrix(samples) -> np.ndarray:
    """Normalized covariance (correlation) between positions, across realisations (rows):
    C_ij = E[g_i g_j] / sqrt(E[g_i²] E[g_j²]), uncentred as in Balduzzi et al.'s Fig. 1."""
    g = np.asarray(samples, dtype=np.float64)
    m = g.T @ g / len(g)
    d = np.sqrt(np.clip(np.diag(m), 1e-300, None))
    return m / np.outer(d, d)


def white_noise(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n)


def brown_noise(n: int, seed: int) -> np.ndarray:
    return np.cumsum(np.random.default_rng(seed).standard_normal(n))


def fit_exponential_log2(depths, values) -> dict:
    """Fit log2(value) = a + b·L: b is the log₂ slope per layer (Balduzzi et al.: −1 for 2^-L)."""
    d, v = np.asarray(depths, float), np.asarray(values, float)
    keep = v > 0
    if keep.sum() < 2:
        return dict(slope=float("nan"), intercept=float("nan"), n=int(keep.sum()))
    b, a = np.polyfit(d[keep], np.log2(v[keep]), 1)
    return dict(slope=float(b), intercept=float(a), n=int(keep.sum()))


def fit_power_law(depths, values) -> dict:
    """Fit log(value) = a + b·log(L): b is the power-law exponent (Balduzzi et al.: −1/2 for 1/√L)."""
    d, v = np.asarray(depths, float), np.asarray(values, float)
    keep = (v > 0) & (d > 0)
    if keep.sum() < 2:
        return dict(slope=float("nan"), intercept=float("nan"), n=int(keep.sum()))
    b, a = np.polyfit(np.log(d[keep]), np.log(v[keep]), 1)
    return dict(slope=float(b), intercept=float(a), n=int(keep.sum()))


def lag1_vectors(g) -> float:
    """Lag-1 autocorrelation of a sequence of vectors (rows): Σ_t ⟨d_t, d_{t+1}⟩ / Σ_t ‖d_t‖² with
    d_t = g_t − mean_t g — for one column it is :func:`lag1` (up to the last term's normalisation)."""
    g = np.asarray(g, dtype=np.float64).reshape(len(g), -1)
    d = g - g.mean(0, keepdims=True)
    den = float((d * d).sum())
    if den <= (1e-6) ** 2 * max(float((g * g).sum()), 1e-300):
        return 1.0
    return float((d[:-1] * d[1:]).sum() / den)


def spectral_slope_vectors(g) -> float:
    """:func:`spectral_slope` of the periodogram summed over the vectors' coordinates."""
    g = np.asarray(g, dtype=np.float64).reshape(len(g), -1)
    d = g - g.mean(0, keepdims=True)
    p = (np.abs(np.fft.rfft(d, axis=0)) ** 2).sum(1)
    f = np.fft.rfftfreq(len(g))
    keep = (f > 0) & (p > 1e-300)
    if keep.sum() < 2 or float((d * d).sum()) <= (1e-6) ** 2 * max(float((g * g).sum()), 1e-300):
        return float("nan")
    return float(np.polyfit(np.log10(f[keep]), np.log10(p[keep]), 1)[0])

"""Per-image norms, ratios and cosines; linear CKA (full-batch and the unbiased minibatch estimator);
streaming moments. Pure functions and small accumulators on tensors: no hooks, models or I/O."""
from __future__ import annotations

import torch

__all__ = ["per_image_norm", "norm_ratio", "cosine", "linear_gram", "hsic_unbiased", "cka_linear",
           "cka_unbiased_full", "MinibatchCKA", "RunningMoments"]

Tensor = torch.Tensor


def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1)


def per_image_norm(x: Tensor) -> Tensor:
    """‖x_n‖₂ over each image's whole tensor."""
    return _flat(x).double().norm(dim=1)


def norm_ratio(a: Tensor, b: Tensor, eps: float = 1e-12) -> Tensor:
    """‖a_n‖ / ‖b_n‖ per image."""
    return per_image_norm(a) / per_image_norm(b).clamp_min(eps)


def cosine(a: Tensor, b: Tensor, eps: float = 1e-12) -> Tensor:
    """cos(a_n, b_n) per image, over each image's whole tensor."""
    a, b = _flat(a).double(), _flat(b).double()
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(eps)


def linear_gram(x: Tensor) -> Tensor:
    """K = X Xᵀ for X the images (rows) flattened."""
    f = _flat(x).double()
    return f @ f.T


def hsic_unbiased(K: Tensor, L: Tensor) -> Tensor:
    """Unbiased HSIC estimator (Song et al. 2012) of two n×n Gram matrices, n ≥ 4."""
    n = K.shape[0]
    if n < 4:
        raise ValueError(f"the unbiased HSIC estimator needs at least 4 samples, got {n}")
    K = K.clone()
    L = L.clone()
    K.fill_diagonal_(0)
    L.fill_diagonal_(0)
    KL = K @ L
    ones = torch.ones(n, 1, dtype=K.dtype, device=K.device)
    term1 = KL.trace()
    term2 = (ones.T @ K @ ones) * (ones.T @ L @ ones) / ((n - 1) * (n - 2))
    term3 = 2.0 / (n - 2) * (ones.T @ KL @ ones)
    return ((term1 + term2 - term3) / (n * (n - 3))).squeeze()


def cka_linear(x: Tensor, y: Tensor) -> float:
    """Linear CKA (Kornblith et al. 2019) on the full data, with centred features (biased estimator)."""
    X = _flat(x).double()
    Y = _flat(y).double()
    X = X - X.mean(0, keepdim=True)
    Y = Y - Y.mean(0, keepdim=True)
    num = (Y.T @ X).norm() ** 2
    den = (X.T @ X).norm() * (Y.T @ Y).norm()
    return float(num / den)


def cka_unbiased_full(x: Tensor, y: Tensor) -> float:
    """Linear CKA with the unbiased HSIC estimator, on all the data at once."""
    K, L = linear_gram(x), linear_gram(y)
    return float(hsic_unbiased(K, L) / torch.sqrt(hsic_unbiased(K, K) * hsic_unbiased(L, L)))


class MinibatchCKA:
    """Linear CKA over a data set in minibatches (Nguyen, Raghu & Kornblith 2021):
    CKA = mean_b HSIC₁(K_b, L_b) / sqrt(mean_b HSIC₁(K_b, K_b) · mean_b HSIC₁(L_b, L_b)),
    with the unbiased estimator HSIC₁ on minibatches of ``minibatch`` images. Each minibatch term
    is unbiased, so the value depends on the minibatch size only through noise.
    """

    def __init__(self, minibatch: int = 32):
        if minibatch < 4:
            raise ValueError("CKA minibatches need at least 4 images")
        self.minibatch = minibatch
        self.kl = self.kk = self.ll = 0.0
        self.batches = 0

    def update(self, x: Tensor, y: Tensor) -> None:
        m = self.minibatch
        for s in range(0, x.shape[0] - m + 1, m):  # a remainder smaller than m is dropped
            K, L = linear_gram(x[s:s + m]), linear_gram(y[s:s + m])
            self.kl += float(hsic_unbiased(K, L))
            self.kk += float(hsic_unbiased(K, K))
            self.ll += float(hsic_unbiased(L, L))
            self.batches += 1

    def value(self) -> float:
        if self.batches == 0 or self.kk <= 0 or self.ll <= 0:
            return float("nan")
        return self.kl / (self.kk * self.ll) ** 0.5


class RunningMoments:
    """Count, mean and standard deviation of all elements seen (Chan et al.'s pairwise update, float64)."""

    def __init__(self):
        self.n = 0
        self._mean = 0.0
        self._m2 = 0.0

    def update(self, t: Tensor) -> None:
        t = t.detach().double().reshape(-1)
        nb = t.numel()
        if nb == 0:
            return
        mb = float(t.mean())
        m2b = float(((t - mb) ** 2).sum())
        n = self.n + nb
        delta = mb - self._mean
        self._mean += delta * nb / n
        self._m2 += m2b + delta * delta * self.n * nb / n
        self.n = n

    @property
    def mean(self) -> float:
        return self._mean if self.n else float("nan")

    @property
    def std(self) -> float:
        """Sample standard deviation (n - 1 in the denominator)."""
        return (self._m2 / (self.n - 1)) ** 0.5 if self.n > 1 else float("nan")

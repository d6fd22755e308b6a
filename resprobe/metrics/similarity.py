"""Per-image norms, ratios and cosines; linear CKA (full-batch and the unbiased minibatch estimator);
streaming moments. Pure functions and small accumulators on tensors: no hooks, models or I/O."""
from __future__ import annotations

import torch

__all__ = ["per_image_norm", "norm_ratio", "cosine", "per_image_dot", "linear_gram", "hsic_unbiased", "minibatch_grams", "cka_linear",
           "cka_unbiased_full", "MinibatchCKA", "PerImageMoments"]

Tensor = torch.Tensor


def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1)


def per_image_norm(x: Tensor) -> Tensor:
    """‖x_n‖₂ over each image's whole tensor (computed in the input's precision, returned as float64)."""
    return torch.linalg.vector_norm(_flat(x), dim=1).double()


def norm_ratio(a: Tensor, b: Tensor, eps: float = 1e-12) -> Tensor:
    """‖a_n‖ / ‖b_n‖ per image."""
    return per_image_norm(a) / per_image_norm(b).clamp_min(eps)


def per_image_dot(a: Tensor, b: Tensor) -> Tensor:
    """⟨a_n, b_n⟩ per image (one batched matrix product, no temporary), as float64."""
    a, b = _flat(a), _flat(b)
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).reshape(-1).double()


def cosine(a: Tensor, b: Tensor, eps: float = 1e-12, norm_a: Tensor | None = None,
           norm_b: Tensor | None = None) -> Tensor:
    """cos(a_n, b_n) per image, over each image's whole tensor (norms may be passed in if known)."""
    na = per_image_norm(a) if norm_a is None else norm_a
    nb = per_image_norm(b) if norm_b is None else norm_b
    return per_image_dot(a, b) / (na * nb).clamp_min(eps)


def linear_gram(x: Tensor) -> Tensor:
    """K = X Xᵀ for X the images (rows) flattened."""
    f = _flat(x).double()
    return f @ f.T


def hsic_unbiased(K: Tensor, L: Tensor) -> Tensor:
    """Unbiased HSIC estimator (Song et al. 2012) of n×n Gram matrices, n ≥ 4; batched over leading dims."""
    n = K.shape[-1]
    if n < 4:
        raise ValueError(f"the unbiased HSIC estimator needs at least 4 samples, got {n}")
    K = K.double()
    L = L.double()
    eye = torch.eye(n, dtype=torch.bool, device=K.device)
    K = K.masked_fill(eye, 0)
    L = L.masked_fill(eye, 0)
    term1 = (K * L.transpose(-1, -2)).sum((-1, -2))                       # tr(K L)
    term2 = K.sum((-1, -2)) * L.sum((-1, -2)) / ((n - 1) * (n - 2))
    term3 = 2.0 / (n - 2) * (K.sum(-2) * L.sum(-1)).sum(-1)                # 1ᵀ K L 1
    return (term1 + term2 - term3) / (n * (n - 3))


def minibatch_grams(x: Tensor, m: int) -> Tensor:
    """Linear Gram matrices of consecutive minibatches of ``m`` images: shape (⌊N/m⌋, m, m).
    Computed in the input's precision (float32 for activations); a remainder < m is dropped."""
    nb = x.shape[0] // m
    if nb == 0:
        return x.new_zeros((0, m, m))
    f = x[: nb * m].reshape(nb, m, -1)
    return torch.bmm(f, f.transpose(1, 2))


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
        self.update_grams(minibatch_grams(x, self.minibatch), minibatch_grams(y, self.minibatch))

    def update_grams(self, K: Tensor, L: Tensor) -> None:
        """Add minibatch Gram matrices (b, m, m) of the two representations."""
        if K.shape[0] == 0:
            return
        self.kl += float(hsic_unbiased(K, L).sum())
        self.kk += float(hsic_unbiased(K, K).sum())
        self.ll += float(hsic_unbiased(L, L).sum())
        self.batches += K.shape[0]

    def value(self) -> float:
        if self.batches == 0 or self.kk <= 0 or self.ll <= 0:
            return float("nan")
        return self.kl / (self.kk * self.ll) ** 0.5


class PerImageMoments:
    """Per-image sums Σr and Σr² of a layer's responses r (float64, on the CPU: 16 bytes per image), for
    the standard deviation over all elements of all images and its bootstrap CI over images
    (:func:`resprobe.metrics.stats.pooled_std`, :func:`~resprobe.metrics.stats.bootstrap_pooled_std_ci`).
    One pass over each response for each sum; memory follows the number of images, not their size."""

    def __init__(self):
        self._s1: list = []
        self._s2: list = []
        self.per_image = 0  # elements per image

    def update(self, t: Tensor) -> None:
        flat = t.detach().reshape(t.shape[0], -1)
        if self.per_image and flat.shape[1] != self.per_image:
            raise ValueError(f"responses of {flat.shape[1]} elements per image after {self.per_image}")
        self.per_image = flat.shape[1]
        self._s1.append(flat.sum(1).double().cpu())
        self._s2.append(torch.linalg.vector_norm(flat, dim=1).double().pow(2).cpu())

    @property
    def n_images(self) -> int:
        return sum(len(a) for a in self._s1)

    def sums(self):
        """(Σr per image, Σr² per image) as float64 numpy arrays."""
        if not self._s1:
            return torch.zeros(0, dtype=torch.float64).numpy(), torch.zeros(0, dtype=torch.float64).numpy()
        return torch.cat(self._s1).numpy(), torch.cat(self._s2).numpy()

    @property
    def std(self) -> float:
        """Sample standard deviation over all elements of all images (n − 1 in the denominator)."""
        from .stats import pooled_std
        s1, s2 = self.sums()
        return float(pooled_std(s1.sum(), s2.sum(), len(s1) * self.per_image))

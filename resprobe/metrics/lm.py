"""Language-model outcome measures, pure functions of logits (no model, no I/O).

Per window: the summed next-token loss (nats) and its token count; against the intact model's logits, the
number of tokens whose top-1 prediction agrees and the summed KL(intact ‖ edited). Windows are grouped by their
document; a statistic is a ratio of sums over documents (mean loss per token, agreement, mean KL), and its
confidence interval resamples **documents** (:func:`document_ratio_ci`), so that tokens and windows of one
document, which are not independent, are never counted as independent evidence. Perplexity is ``exp`` of the
mean loss, its CI the exp of the loss's.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np
import torch

from .stats import bootstrap_stats, percentile_ci

__all__ = ["LOGITS_BUDGET", "windows_per_batch", "Reference", "reference", "token_stats", "window_sums", "per_document", "document_ratio_ci", "sign_flip_p", "document_spearman_ci", "WINDOW_COLUMNS"]

WINDOW_COLUMNS = ("nll", "tokens", "agree", "kl")


# bytes of float32 logits per batch of windows. A sweep holds about four such tensors at once (the intact logits,
# their probabilities, a configuration's logits and its log-sum-exp temporary): 256 MiB keeps every LM probe on
# SmolLM2-135M (64 windows of 256 tokens) under 4 GB (benchmarks/memory.py --lm; 512 MiB peaked at 4.4 GB).
LOGITS_BUDGET = 256 * 2 ** 20


def windows_per_batch(seq_len: int, vocabulary: int, budget: int = LOGITS_BUDGET) -> int:
    """The most windows whose float32 logits ``(windows, seq_len, vocabulary)`` fit in ``budget`` bytes (>= 1)."""
    return max(1, budget // (seq_len * vocabulary * 4))


class Reference(NamedTuple):
    """What every comparison with the intact model's logits needs, computed once per batch: its probabilities
    ``p`` ``(N, T, V)``, ``Σ_v p log p`` per token (as ``Σ p·z − logsumexp z``) and its top-1 tokens."""

    p: torch.Tensor
    plogp: torch.Tensor
    top: torch.Tensor


def _dot(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``Σ_v p[..., v] z[..., v]`` per token, without a ``(N, T, V)`` temporary."""
    n, t, v = z.shape
    return torch.bmm(p.reshape(n * t, 1, v), z.reshape(n * t, v, 1)).reshape(n, t)


@torch.no_grad()
def reference(intact: torch.Tensor) -> Reference:
    """The intact model's :class:`Reference` (reuse it for every configuration of a batch)."""
    z = intact.float()
    lse = torch.logsumexp(z, -1)
    p = torch.softmax(z, -1)
    return Reference(p, _dot(p, z) - lse, z.argmax(-1))


@torch.no_grad()
def token_stats(logits: torch.Tensor, targets: torch.Tensor, intact=None) -> tuple:
    """Per token ``(N, T)``: next-token loss, and against the intact model (its logits or :class:`Reference`)
    whether the top-1 agrees and KL(intact ‖ edited) (None, None without ``intact``). Per token: loss = logsumexp z
    − z[target]; KL = Σ p log p − (Σ p·z − logsumexp z); no ``(N, T, V)`` temporary beyond the float32 logits."""
    z = logits.float()
    lse = torch.logsumexp(z, -1)
    nll = lse - z.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    if intact is None:
        return nll, None, None
    ref = intact if isinstance(intact, Reference) else reference(intact)
    return nll, z.argmax(-1) == ref.top, ref.plogp - (_dot(ref.p, z) - lse)


@torch.no_grad()
def window_sums(logits: torch.Tensor, targets: torch.Tensor, intact=None,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``(N, 4)`` float64 per window: summed next-token loss, tokens counted, tokens whose top-1 agrees with
    the intact model's, summed KL(intact ‖ edited) (the last two NaN without ``intact``: its logits or its
    :class:`Reference`); ``mask`` ``(N, T)`` marks the tokens counted (default: all). Sums accumulate in float64
    whatever the logits' dtype (see :func:`token_stats`)."""
    nll, agree, kl = token_stats(logits, targets, intact)
    m = torch.ones(targets.shape, dtype=torch.bool, device=targets.device) if mask is None else mask.bool()
    out = [(nll.double() * m).sum(1), m.sum(1).double()]
    if intact is None:
        out += [torch.full_like(out[0], float("nan"))] * 2
    else:
        out += [(agree & m).sum(1).double(), (kl.double() * m).sum(1)]
    return torch.stack(out, 1).cpu()


def per_document(sums: np.ndarray, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The window sums added up per document: ``(D, 4)`` in the order of the sorted document numbers, and
    those numbers."""
    sums = np.asarray(sums, np.float64)
    ids, inv = np.unique(np.asarray(docs), return_inverse=True)
    out = np.zeros((len(ids), sums.shape[1]))
    np.add.at(out, inv, sums)
    return out, ids


def document_ratio_ci(num: np.ndarray, den: np.ndarray, n_boot: int = 1000, level: float = 0.95,
                      seed: int = 0) -> tuple[float, float, float]:
    """``(value, low, high)`` of the ratio of sums Σnum / Σden over documents, with a percentile bootstrap
    CI that resamples documents (``num`` and ``den``: one value per document)."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    value = float(num.sum() / den.sum()) if den.sum() > 0 else float("nan")
    if len(num) < 2:
        return value, float("nan"), float("nan")

    def ratio(idx, counts):
        d = counts @ den
        return np.where(d > 0, (counts @ num) / np.where(d > 0, d, 1), np.nan)

    boots = bootstrap_stats(len(num), [ratio], n_boot, seed)[0]
    lo, hi = percentile_ci(boots, level)
    return value, float(lo[0]), float(hi[0])


def sign_flip_p(diffs: np.ndarray, n_perm: int = 1000, seed: int = 0) -> float:
    """Two-sided p-value of a paired sign-flip test over documents: ``diffs`` holds one summed difference per
    document (edited minus intact, e.g. of the summed loss); under the null the two labels are exchangeable
    within a document, so each difference's sign is flipped at random. ``(1 + #|Σ±d| ≥ |Σd|) / (1 + n_perm)``."""
    d = np.asarray(diffs, np.float64)
    if len(d) == 0 or not np.isfinite(d).all():
        return float("nan")
    observed = abs(d.sum())
    if observed == 0:
        return 1.0
    rng = np.random.default_rng(seed)
    hits = 0
    for s in range(0, n_perm, 256):
        signs = rng.integers(0, 2, size=(min(256, n_perm - s), len(d))) * 2 - 1
        hits += int((np.abs(signs @ d) >= observed * (1 - 1e-12)).sum())
    return float((1 + hits) / (1 + n_perm))


def _ranks(a: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata
    return rankdata(a, axis=-1)


def document_spearman_ci(x: tuple, y: tuple, n_boot: int = 1000, seed: int = 0,
                         level: float = 0.95) -> tuple[float, float, float]:
    """Spearman correlation over items (layers) between two per-item ratios of sums over documents,
    ``x_i = Σ_d x_num[d, i] / Σ_d x_den[d, i]`` for ``x = (x_num, x_den)`` and likewise ``y``, with a percentile
    CI that resamples documents (both ratios from the same resampled documents). Arrays are ``(D, items)``."""
    xn, xd, yn, yd = (np.asarray(a, np.float64) for a in (*x, *y))

    def rho(counts):
        x = (counts @ xn) / (counts @ xd)
        y = (counts @ yn) / (counts @ yd)
        rx, ry = _ranks(x), _ranks(y)
        rx -= rx.mean(-1, keepdims=True)
        ry -= ry.mean(-1, keepdims=True)
        den = np.sqrt((rx ** 2).sum(-1) * (ry ** 2).sum(-1))
        return np.where(den > 0, (rx * ry).sum(-1) / np.where(den > 0, den, 1), np.nan)

    value = float(rho(np.ones((1, len(xn))))[0])
    if len(xn) < 2:
        return value, float("nan"), float("nan")
    boots = bootstrap_stats(len(xn), [lambda idx, counts: rho(counts)], n_boot, seed)[0]
    lo, hi = percentile_ci(np.asarray(boots).reshape(-1, 1), level)
    return value, float(lo[0]), float(hi[0])

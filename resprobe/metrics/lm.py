"""Language-model outcome measures, pure functions of logits (no model, no I/O).

Per window: the summed next-token loss (nats) and its token count; against the intact model's logits, the
number of tokens whose top-1 prediction agrees and the summed KL(intact ‖ edited). Windows are grouped by their
document; a statistic is a ratio of sums over documents (mean loss per token, agreement, mean KL), and its
confidence interval resamples **documents** (:func:`document_ratio_ci`), so that tokens and windows of one
document, which are not independent, are never counted as independent evidence. Perplexity is ``exp`` of the
mean loss, its CI the exp of the loss's.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from .stats import bootstrap_stats, percentile_ci

__all__ = ["window_sums", "per_document", "document_ratio_ci", "WINDOW_COLUMNS"]

WINDOW_COLUMNS = ("nll", "tokens", "agree", "kl")


@torch.no_grad()
def window_sums(logits: torch.Tensor, targets: torch.Tensor, intact: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``(N, 4)`` float64 per window: summed next-token loss, tokens counted, tokens whose top-1 agrees with
    the intact model's, summed KL(intact ‖ edited) (the last two NaN without ``intact``). ``logits`` ``(N, T,
    V)``; ``targets`` ``(N, T)``; ``mask`` ``(N, T)`` marks the tokens counted (default: all). Statistics
    accumulate in float64 whatever the logits' dtype."""
    lp = F.log_softmax(logits.float(), dim=-1)
    m = torch.ones(targets.shape, dtype=torch.bool, device=targets.device) if mask is None else mask.bool()
    nll = -lp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    out = [(nll.double() * m).sum(1), m.sum(1).double()]
    if intact is None:
        out += [torch.full_like(out[0], float("nan"))] * 2
    else:
        lq = F.log_softmax(intact.float(), dim=-1)
        agree = (logits.argmax(-1) == intact.argmax(-1)) & m
        kl = (lq.exp() * (lq - lp)).sum(-1)
        out += [agree.sum(1).double(), (kl.double() * m).sum(1)]
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

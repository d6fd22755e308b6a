"""Language-model outcome measures (resprobe.metrics.lm) against explicit per-token loops, and the document
bootstrap against its defining property: duplicating windows inside documents changes nothing."""
from __future__ import annotations

import math

import numpy as np
import torch

from resprobe.metrics.lm import document_ratio_ci, per_document, window_sums


def _loops(logits, targets, intact, mask):
    out = []
    for n in range(logits.shape[0]):
        nll = tok = agree = kl = 0.0
        for t in range(logits.shape[1]):
            if not mask[n, t]:
                continue
            z = logits[n, t].double()
            logp = z - torch.logsumexp(z, 0)
            nll -= float(logp[targets[n, t]])
            tok += 1
            q = intact[n, t].double()
            logq = q - torch.logsumexp(q, 0)
            agree += float(int(z.argmax()) == int(q.argmax()))
            kl += float(sum(math.exp(logq[v]) * (logq[v] - logp[v]) for v in range(len(z))))
        out.append([nll, tok, agree, kl])
    return np.array(out)


def test_window_sums_equal_explicit_per_token_loops():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g) * 3
    intact = logits + torch.randn(3, 5, 11, generator=g)
    targets = torch.randint(0, 11, (3, 5), generator=g)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1, :2] = False
    got = window_sums(logits, targets, intact, mask).numpy()
    assert np.allclose(got, _loops(logits, targets, intact, mask), rtol=1e-5, atol=1e-5)
    same = window_sums(intact, targets, intact).numpy()
    assert np.allclose(same[:, 3], 0, atol=1e-6) and (same[:, 2] == same[:, 1]).all()
    assert np.isnan(window_sums(logits, targets).numpy()[:, 2:]).all()


def test_document_bootstrap_resamples_documents_not_windows():
    rng = np.random.default_rng(0)
    docs_nll = rng.uniform(1, 3, 12) * 100
    docs_tok = np.full(12, 100.0)
    v, lo, hi = document_ratio_ci(docs_nll, docs_tok, n_boot=2000, seed=1)
    assert math.isclose(v, docs_nll.sum() / docs_tok.sum()) and lo < v < hi
    # the same documents cut into 5 windows each: per_document adds them back, the CI is the same
    sums = np.repeat(np.stack([docs_nll / 5, docs_tok / 5, docs_tok * 0, docs_tok * 0], 1), 5, axis=0)
    docs = np.repeat(np.arange(12), 5)
    by_doc, ids = per_document(sums, docs)
    assert (ids == np.arange(12)).all() and np.allclose(by_doc[:, 0], docs_nll)
    assert np.allclose(document_ratio_ci(by_doc[:, 0], by_doc[:, 1], n_boot=2000, seed=1), (v, lo, hi))
    # one document: no interval
    assert np.isnan(document_ratio_ci(docs_nll[:1], docs_tok[:1])[1])

"""What every verdict on language models needs: each network's competence on the token windows and the roles
(residual or plain twin, recipe, architecture) of the subjects.

**Competence of a language model** (:data:`resprobe.verdict.LM_COMPETENCE_GAP`, where the rule is sourced): the
mean next-token loss over every token of the windows, its 95% CI resampling **documents**, must lie below 3/4 of
the unigram entropy of those target tokens — the loss of the best context-free predictor on them, which no
predictor that ignores the context can beat (Gibbs' inequality). A random initialisation sits above it, a model
that learnt only token frequencies (the collapsed plain twin) on it. The top-1 error and the error of always
predicting the most frequent token are measured beside it and shown, not gated.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .. import distributed as dist
from ..engine import PerImageStore, RunSpec
from ..io.text import TextData
from ..metrics.lm import document_ratio_ci, per_document, window_sums
from ..metrics.stats import stable_seed
from ..study import Subject, roles_of
from ..verdict import Competence, Role
from .common import arch_signature

__all__ = ["text_competence", "assess_text", "text_roles", "where", "unigram_entropy"]

COMPETENCE_WINDOWS = 256   # windows measured (a seeded subset of larger data), as COMPETENCE_IMAGES for images


def where(data: TextData) -> str:
    return f"{data.spec} ({data.seq_len}-token windows)"


def _targets(data: TextData) -> torch.Tensor:
    return data.ids[:, 1:].reshape(-1)


def unigram_entropy(data: TextData) -> float:
    """The entropy (nats) of the target tokens' own frequencies: the smallest mean loss any context-free
    predictor reaches on these very tokens."""
    c = torch.bincount(_targets(data)).double()
    p = c[c > 0] / c.sum()
    return float(-(p * p.log()).sum())


def _chance(data: TextData) -> float:
    t = _targets(data)
    return float(1 - torch.bincount(t).max().item() / t.numel())


def _sample(data: TextData, seed: int) -> TextData:
    return data.subset(COMPETENCE_WINDOWS, seed)


@torch.no_grad()
def text_competence(subject: Subject, data: TextData, spec: RunSpec) -> Competence:
    """The subject's mean next-token loss on ``data`` with a document-bootstrap 95% CI against the unigram
    entropy, its top-1 error and the constant predictor's in the note (kept on the subject; None on ranks other
    than the main one)."""
    from .lm_lesion import text_spec, windows_in_batches
    if subject.competence is not None and subject.competence.data == where(data):
        return subject.competence
    model = subject.model
    spec = text_spec(spec, data, model)
    store = PerImageStore(len(data))
    was = model.training
    model.eval()
    try:
        with spec.autocast():
            for x, y, idx in windows_in_batches(data, spec):
                logits = model(input_ids=x, use_cache=False).logits
                wrong = (logits.argmax(-1) != y).sum(1).double().cpu()
                sums = window_sums(logits, y)[:, :2]
                store.put("sums", store.mark(idx), torch.cat([sums, wrong[:, None]], 1))
    finally:
        model.train(was)
    got = store.gather(lambda k: k)
    if got is None:
        return None
    by_doc, _ = per_document(got["sums"], data.docs.numpy())
    seed = stable_seed(spec.seed, "competence", subject.label)
    loss, lo, hi = document_ratio_ci(by_doc[:, 0], by_doc[:, 1], spec.n_boot, seed=seed)
    err, elo, ehi = document_ratio_ci(by_doc[:, 2], by_doc[:, 1], spec.n_boot, seed=seed)
    note = (f"top-1 error {err:.4f} [{elo:.4f}, {ehi:.4f}] against {_chance(data):.4f} for the most frequent token"
            " everywhere (shown, not gated)")
    subject.competence = Competence(float(loss), float(lo), float(hi), unigram_entropy(data),
                                    int(by_doc[:, 1].sum()), where(data), "loss", note)
    return subject.competence


def assess_text(subjects: Sequence[Subject], data: TextData, spec: RunSpec) -> None:
    """Measure the competence of every subject not yet measured on ``data`` (on a seeded subset of at most
    :data:`COMPETENCE_WINDOWS` windows), every rank of a distributed run together."""
    sample = _sample(data, spec.seed)
    need = dist.broadcast([not (s.competence is not None and s.competence.data == where(sample))
                           for s in subjects] if dist.is_main() else None)
    for s, n in zip(subjects, need):
        if n:
            text_competence(s, sample, spec)


def text_roles(subjects: Sequence[Subject], views: dict, data: TextData, spec: RunSpec) -> dict[str, Role]:
    """:func:`resprobe.probes.common.roles` for language models on token windows."""
    assess_text(subjects, data, spec)
    return roles_of(list(subjects), {lab: any(u.residual for u in v) for lab, v in views.items()},
                    {lab: arch_signature(v) for lab, v in views.items()})

"""What every verdict on language models needs: each network's competence on the token windows and the roles
(residual or plain twin, recipe, architecture) of the subjects.

**Competence of a language model** follows the image rule (:data:`resprobe.verdict.COMPETENCE_GAP`) with
tokens for images: the error is the top-1 next-token error over every token of the windows, its 95% CI
resamples **documents**, and chance is the error of the best constant predictor — 1 − the share of the most
frequent target token. A competent model closes at least half of that gap: the upper end of its CI lies
below half the chance error. A random initialisation predicts one token everywhere at best (chance).
"""
from __future__ import annotations

from typing import Sequence

import torch

from .. import distributed as dist
from ..engine import PerImageStore, RunSpec
from ..io.text import TextData
from ..metrics.lm import document_ratio_ci, per_document
from ..metrics.stats import stable_seed
from ..study import Subject, roles_of
from ..verdict import Competence, Role
from .common import arch_signature

__all__ = ["text_competence", "assess_text", "text_roles", "where"]

COMPETENCE_WINDOWS = 256   # windows measured (a seeded subset of larger data), as COMPETENCE_IMAGES for images


def where(data: TextData) -> str:
    return f"{data.spec} ({data.seq_len}-token windows)"


def _chance(data: TextData) -> float:
    t = data.ids[:, 1:].reshape(-1)
    return float(1 - torch.bincount(t).max().item() / t.numel())


def _sample(data: TextData, seed: int) -> TextData:
    return data.subset(COMPETENCE_WINDOWS, seed)


@torch.no_grad()
def text_competence(subject: Subject, data: TextData, spec: RunSpec) -> Competence:
    """The subject's top-1 next-token error on ``data`` with a document-bootstrap 95% CI, and the chance error
    (kept on the subject; None on ranks other than the main one)."""
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
                wrong = (logits.argmax(-1) != y).sum(1).double()
                store.put("wrong", store.mark(idx), torch.stack([wrong, torch.full_like(wrong, y.shape[1])], 1).cpu())
    finally:
        model.train(was)
    got = store.gather(lambda k: k)
    if got is None:
        return None
    by_doc, _ = per_document(got["wrong"], data.docs.numpy())
    err, lo, hi = document_ratio_ci(by_doc[:, 0], by_doc[:, 1], spec.n_boot,
                                    seed=stable_seed(spec.seed, "competence", subject.label))
    subject.competence = Competence(float(err), float(lo), float(hi), _chance(data), int(by_doc[:, 1].sum()),
                                    where(data))
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


def chance_note(c: Competence) -> str:
    return (f"top-1 next-token error {c.error:.4f} [{c.ci_low:.4f}, {c.ci_high:.4f}] over {c.n_images} tokens, "
            f"chance {c.chance:.4f} (the most frequent token everywhere)")


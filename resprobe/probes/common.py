"""What every probe shares: label checks, the data's identity, settings keys, provenance."""
from __future__ import annotations

import hashlib
import json
from typing import Optional, Sequence

from ..errors import UsageError
from ..io.data import Dataset
from ..study import Subject, roles_of, versions
from ..verdict import Competence, Role

__all__ = ["check_labels", "data_key", "settings_key", "provenance", "versions", "locate_nonfinite", "competence",
           "record_competence", "known_competence", "assess", "roles", "arch_signature", "COMPETENCE_IMAGES"]


def check_labels(subjects: Sequence[Subject]) -> None:
    """Labels name rows in every table: two networks with one label would be merged silently."""
    if not subjects:
        raise UsageError("no network to probe", "pass --model (and --weights)")
    wrong = [type(s).__name__ for s in subjects if not isinstance(s, Subject)]
    if wrong:
        raise UsageError(f"the networks to probe must be Subjects, got {', '.join(sorted(set(wrong)))}",
                         "wrap each model: resprobe.api.Subject(label, model, normalize), or use resprobe.api.load_subjects")
    labels = [s.label for s in subjects]
    dup = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dup:
        raise UsageError(f"two networks share the label {', '.join(map(repr, dup))}",
                         "give each --model its own --label")
    from ..anatomy.hooks import user_hooks
    for s in subjects:
        hooked = user_hooks(s.model)
        if hooked:
            raise UsageError(f"{s.label}: the model runs hooks or a replaced forward ({'; '.join(hooked[:3])}"
                             f"{'; ...' if len(hooked) > 3 else ''}), which a probe running its parts one by one "
                             "would skip or misplace", "remove them (handle.remove()) or build what they do into "
                             "the model's own modules")


def data_key(data: Dataset) -> dict:
    """What identifies the images a run used (for resume checks and provenance)."""
    d = data.describe()
    return {k: d.get(k) for k in ("spec", "split", "n_images", "content_sha256", "limit", "subset_seed", "seed")
            if d.get(k) is not None}


def settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def provenance(subjects: Sequence[Subject], data: Dataset, spec, **extra) -> dict:
    """Models (spec, weights, sha256, label, group, seed, normalization), data, how it ran, versions."""
    return dict(models=[s.describe() for s in subjects], data=data.describe(), run=spec.describe(),
                versions=versions(), **extra)


def locate_nonfinite(view, x) -> str:
    """The first place a non-finite value appears when ``x`` runs through the view (for error messages)."""
    import torch
    with torch.no_grad():
        h = view.stem(x)
        if not bool(torch.isfinite(h).all()):
            return "the stem"
        for i in range(len(view)):
            h = view.run_unit(i, h)
            if not bool(torch.isfinite(h).all()):
                return f"unit {view[i].name}"
    return "the head"


# A probe that does not run the network over its data (paths, amplify, gradcorr) measures competence on a seeded
# subset of at most this many images: an error of 0.2 then has a CI of about ±0.018, far from the bar of half the
# chance error, and the extra pass costs a fifth of an evaluation of the 10,000-image test set.
COMPETENCE_IMAGES = 2000


def _where(data: Dataset) -> str:
    d = data.describe()
    return f"{d.get('spec')} [{d.get('split')}]"


def record_competence(subject: Subject, data: Dataset, n_wrong: int, n: int) -> Competence:
    """Keep on the subject its error on ``data`` as measured by a probe's own pass (``n_wrong`` of ``n``
    images), with its exact 95% CI and the data's chance error (1 − the largest class's share)."""
    import numpy as np
    from scipy.stats import binomtest
    ci = binomtest(int(n_wrong), int(n)).proportion_ci(0.95, method="exact")
    chance = 1 - np.bincount(data.labels.numpy()).max() / len(data)
    subject.competence = Competence(n_wrong / n, float(ci.low), float(ci.high), float(chance), int(n), _where(data))
    return subject.competence


def known_competence(subject: Subject, data: Dataset) -> bool:
    """True when the subject's competence was measured on this data set (or a subset of it)."""
    return subject.competence is not None and subject.competence.data == _where(data)


def competence(subject: Subject, data: Dataset, spec) -> Optional[Competence]:
    """The subject's error on ``data`` with its exact 95% CI and the data's chance error, measured once per data
    set and kept on the subject (a later study on the same data, or a subset of it, reuses it: one report judges
    every verdict by one measurement; a probe that runs the network over the data records it from its own pass,
    :func:`record_competence`). None on ranks other than the main one of a distributed run."""
    from ..engine import predict
    if known_competence(subject, data):
        return subject.competence
    p = predict(subject.model, data, spec, subject.normalize, f"competence {subject.label}")
    if p is None or len(p.label) == 0:
        return None
    return record_competence(subject, data, int(p.wrong.sum()), len(p.label))


def arch_signature(view) -> tuple:
    """``(units per stage, parameters)`` of a network's anatomy: what twins share."""
    stages: dict[int, int] = {}
    for u in view:
        stages[u.stage] = stages.get(u.stage, 0) + 1
    return tuple(stages[k] for k in sorted(stages)), sum(p.numel() for p in view.model.parameters())


def assess(subjects: Sequence[Subject], data: Dataset, spec) -> None:
    """Measure the competence of every subject not yet measured on ``data``, on every rank of a distributed run
    together (the main rank decides which: only it holds the measurements). Call before a probe's main-rank-only
    verdicts."""
    from .. import distributed as dist
    need = dist.broadcast([not known_competence(s, data) for s in subjects] if dist.is_main() else None)
    sample = data.subset(COMPETENCE_IMAGES) if len(data) > COMPETENCE_IMAGES else data
    for s, n in zip(subjects, need):
        if n:
            competence(s, sample, spec)


def roles(subjects: Sequence[Subject], views: dict, data: Dataset, spec) -> dict[str, Role]:
    """The verdicts' view of the subjects: residual or plain, recipe, architecture and competence on ``data``
    (measured here when not yet known, in a single process; a distributed probe calls :func:`assess` on every
    rank first)."""
    from .. import distributed as dist
    if not dist.active():
        assess(subjects, data, spec)
    return roles_of(list(subjects), {lab: any(u.residual for u in v) for lab, v in views.items()},
                    {lab: arch_signature(v) for lab, v in views.items()})

"""The two values every study passes around: what is probed (:class:`Subject`) and what came out
(:class:`StudyResult`). A probe is ``run(subjects, data, spec, options) -> StudyResult`` and writes
nothing; :func:`resprobe.report.save` writes a result."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pandas as pd
import torch.nn as nn

from .verdict import Competence, Role, Verdict

__all__ = ["Subject", "StudyResult", "roles_of"]


@dataclass
class Subject:
    """A network to probe: display label, the module, its input normalization, its provenance (spec,
    weights, sha256), its group (the architecture, shared by several training seeds), seed, and a key of its
    training recipe (None when unknown: verdicts never contrast networks whose recipes differ)."""

    label: str
    model: nn.Module
    normalize: str = "none"
    provenance: dict = field(default_factory=dict)
    group: str = ""
    seed: Optional[int] = None
    recipe: Optional[str] = None
    competence: Optional[Competence] = None   # measured once by the first study that needs it (see probes.common)

    def __post_init__(self):
        if not self.group:
            self.group = self.label

    def describe(self) -> dict:
        return dict(self.provenance, label=self.label, group=self.group, seed=self.seed, normalize=self.normalize,
                    recipe=self.recipe)


def roles_of(subjects: list[Subject], residual: dict[str, bool], arch: Optional[dict] = None) -> dict[str, Role]:
    """``{label: Role}`` from the subjects, whether each one has residual units and its architecture signature
    (see :class:`~resprobe.verdict.Role`; None: unknown, never a twin)."""
    return {s.label: Role(s.group, s.seed, residual[s.label], s.recipe, s.competence, (arch or {}).get(s.label))
            for s in subjects}


@dataclass
class StudyResult:
    """What a study produced: the long table (the CSV), a summary and verdict records (the JSON), findings
    (sentences computed from the numbers), provenance, the settings that made it, and extras for the
    writers (graphs, plot data) that are not part of the table."""

    study: str
    table: pd.DataFrame
    summary: dict = field(default_factory=dict)
    verdicts: list[Verdict] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)

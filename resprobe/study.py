"""What every study passes around and how a study is declared.

- :class:`Subject`: what is probed; :class:`StudyResult`: what came out (typed fields, no free-form dict).
- :class:`Study`: one study declared once — its name, options type, ``run``, the verdict keys it decides, the
  figures it draws, how the full report runs it within a budget, what it needs from earlier studies and its
  command-line flags. The declarations live in :mod:`resprobe.studies` (one module each, discovered); the
  writer, the full report and the command line iterate that registry and name no study themselves.

A probe is ``run(subjects, data, spec, options) -> StudyResult`` and writes nothing;
:func:`resprobe.report.save` writes a result."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import pandas as pd
import torch.nn as nn

from .verdict import Competence, Role, Verdict

__all__ = ["Subject", "StudyResult", "roles_of", "Study", "Figure", "Command", "ReportRun", "Invocation", "versions"]


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
    (sentences computed from the numbers), provenance, the settings that made it; each network's unit table
    (``units``, label -> :meth:`ResidualView.table` rows) and role in the verdicts (``roles``); and ``detail``,
    the study's own typed record for its figures and extra files (a dataclass the study declares, e.g.
    :class:`resprobe.probes.paths.PathsDetail`), never part of the table."""

    study: str
    table: pd.DataFrame
    summary: dict = field(default_factory=dict)
    verdicts: list[Verdict] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    units: dict[str, list[dict]] = field(default_factory=dict)
    roles: dict[str, Role] = field(default_factory=dict)
    detail: Any = None


@dataclass(frozen=True)
class Figure:
    """One figure of a study: file stem, ``draw(result) -> (fig, ax)`` (None: nothing to show for this
    result) and the caption saying what it shows and what to look for."""

    stem: str
    draw: Callable[[StudyResult], Optional[tuple]]
    caption: str


@dataclass
class ReportRun:
    """What the full report hands each study: the networks, the data, the run settings, the budget name
    (``fast`` or ``full``), the study's output folder, and the results of the studies run before it."""

    subjects: Sequence[Subject]
    data: Any
    spec: Any
    budget: str
    out: Path
    results: dict[str, StudyResult] = field(default_factory=dict)
    views: dict = field(default_factory=dict)   # label -> ResidualView, computed once per report

    def view(self, subject: Subject):
        if subject.label not in self.views:
            from .anatomy import anatomy
            shape = getattr(self.data, "input_shape", None)
            if shape is None and hasattr(self.data, "seq_len"):
                shape = (self.data.seq_len,)
            self.views[subject.label] = anatomy(subject.model, shape)
        return self.views[subject.label]

    def residual(self) -> list[Subject]:
        """The subjects with residual units."""
        return [s for s in self.subjects if any(u.residual for u in self.view(s))]

    def capped(self, n: Optional[int]):
        """The data, or a seeded subset of ``n`` items."""
        return self.data if n is None else self.data.subset(n)


@dataclass
class Invocation:
    """What the command line hands a study's ``execute``: the parsed flags, the run settings, the claimed output
    folder, ``load() -> (data, subjects)`` (the networks and data of the shared flags, loaded on demand) and the
    options that the command's ``options(args)`` built before the folder was claimed."""

    args: Any
    spec: Any
    out: Path
    load: Callable[[], tuple]
    options: Any = None


@dataclass(frozen=True)
class Command:
    """A study's subcommand: its help line, ``add_arguments(parser)`` for its own flags (the command line adds
    the shared network, data, output and run flags), ``execute(invocation) -> StudyResult``, ``options(args)``
    (the options object, built and checked before any work; None when they depend on the networks), whether the
    networks and data are required (``inputs``: ``required`` or ``optional``), whether a rerun into the same
    folder must repeat the settings (``same_settings``; resumable studies say False) and the default batch size."""

    help: str
    add_arguments: Callable[[Any], None]
    execute: Callable[[Any], StudyResult]
    inputs: str = "required"
    same_settings: bool = True
    batch_size: int = 256
    options: Optional[Callable[[Any], Any]] = None


@dataclass(frozen=True)
class Study:
    """A study, declared once. ``run(subjects, data, spec, options) -> StudyResult`` measures and decides its
    verdicts (``verdict_keys``: the keys of the verdicts it can decide, each a section of the full report
    showing ``sections[key]``'s figures); ``figures`` are drawn by the writer; ``report(run: ReportRun)`` runs
    it in the full report (None: not part of it), ``budget(name, n_items)`` says in words what a budget gives it,
    ``needs`` names the studies whose results it reads from ``ReportRun.results``; ``command`` is its
    subcommand (None: none). Writer hooks: ``file_stem`` (the files' name when it is not the study's),
    ``merge(result, out)`` (rows already in the folder), ``files(result, out)`` (extra files), ``json(result)``
    (extra keys of its JSON) and ``tables(result)`` (``(title, DataFrame)`` shown in its document). ``text``: its
    command also runs on language models over ``--data text:...``; ``text_report`` and ``text_budget`` are
    ``report`` and ``budget`` for the full report of language models (None: not part of it)."""

    name: str
    title: str
    run: Callable[..., StudyResult]
    order: int
    options: Optional[type] = None
    verdict_keys: tuple[str, ...] = ()
    figures: tuple[Figure, ...] = ()
    sections: dict[str, tuple[str, ...]] = field(default_factory=dict)
    report: Optional[Callable[[ReportRun], StudyResult]] = None
    budget: Optional[Callable[[str, int], str]] = None
    needs: tuple[str, ...] = ()
    command: Optional[Command] = None
    file_stem: str = ""
    merge: Optional[Callable[[StudyResult, Path], StudyResult]] = None
    files: Optional[Callable[[StudyResult, Path], list[Path]]] = None
    json: Optional[Callable[[StudyResult], dict]] = None
    tables: Optional[Callable[[StudyResult], list[tuple[str, pd.DataFrame]]]] = None
    text: bool = False   # whether its command runs on language models over text (--data text:...)
    text_report: Optional[Callable[[ReportRun], StudyResult]] = None
    text_budget: Optional[Callable[[str, int], str]] = None

    @property
    def stem(self) -> str:
        return self.file_stem or self.name

    def figure(self, stem: str) -> Optional[Figure]:
        return next((f for f in self.figures if f.stem == stem), None)


def versions() -> dict:
    import platform
    import sys

    import numpy
    import pandas
    import torch

    from . import __version__
    out = dict(resprobe=__version__, python=sys.version.split()[0], torch=torch.__version__, numpy=numpy.__version__,
               pandas=pandas.__version__, platform=platform.platform())
    from importlib import metadata
    for pkg in ("torchvision", "timm"):  # from the installed metadata: importing them costs seconds of start-up
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out

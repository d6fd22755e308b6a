"""One report for every conjecture: a loop over the declared studies (:mod:`resprobe.studies`) within a budget.
Each study is run, saved in its own folder (``lesion/``, ``paths/``, ...), and contributes one section per
verdict; a study that fails is reported in its sections and the others still run. The page opens with the
table of verdicts."""
from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from .. import distributed as dist
from ..engine import RunSpec
from ..io.data import Dataset
from ..io.tables import write_json, write_table
from ..progress import note
from ..study import ReportRun, Study, StudyResult, Subject, roles_of, versions
from ..studies import studies
from ..verdict import Verdict
from .document import Document
from .save import save

__all__ = ["BUDGETS", "full_report", "budget_details", "reported"]

BUDGETS = ("fast", "full")


def reported(text: bool = False) -> list[Study]:
    """The studies of the full report, in order (``text``: of the language-model report)."""
    return [s for s in studies() if (s.text_report if text else s.report) is not None]


def budget_details(budget: str, n: Optional[int] = None, text: bool = False) -> str:
    """What the budget gives each study, in words, for ``n`` items of data (``text``: token windows)."""
    words = "; ".join((s.text_budget if text else s.budget)(budget, n) for s in reported(text)
                      if (s.text_budget if text else s.budget))
    return words[:1].upper() + words[1:]


def _is_text(data) -> bool:
    from ..io.text import TextData
    return isinstance(data, TextData)


def _section_ids(verdicts: list[Verdict], taken: dict) -> list[str]:
    """One section per verdict: its key, numbered from the second verdict of a key on (``lesion-single#2``)."""
    out = []
    for v in verdicts:
        n = sum(1 for k in list(taken) + out if k.split("#")[0] == v.key)
        out.append(v.key if n == 0 else f"{v.key}#{n + 1}")
    return out


def _run_one(study: Study, ctx: ReportRun, sections: dict, failures: dict) -> Optional[StudyResult]:
    """Run one study into its folder; its verdicts (or its failure) become sections."""
    t0 = time.time()
    note(f"report: {study.name} ...")
    try:
        r = (study.text_report if _is_text(ctx.data) else study.report)(ctx)
        if dist.is_main():
            save(r, ctx.out)
        for sk, v in zip(_section_ids(r.verdicts, sections), r.verdicts):
            sections[sk] = dict(v.as_dict(), study=study.name, seconds=round(time.time() - t0, 1))
        return r
    except Exception as e:  # noqa: BLE001 - one study's failure must not lose the others
        failures[study.name] = dict(error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-3000:],
                                    seconds=round(time.time() - t0, 1))
        for sk in study.verdict_keys:
            sections[sk] = dict(verdict="failed", study=study.name, error=failures[study.name]["error"],
                                seconds=failures[study.name]["seconds"])
        return None


def full_report(subjects: Sequence[Subject], data: Dataset, spec: RunSpec = RunSpec(), budget: str = "fast",
                out: str | Path = "report", command: Optional[dict] = None) -> dict:
    """Run every study on the subjects (residual networks and, optionally, plain twins, several seeds each)
    within ``budget``; write the report into ``out``. Returns the sections (verdict records as dicts)."""
    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {BUDGETS}, got {budget!r}")
    out = Path(out)
    t_start = time.time()
    results: dict[str, StudyResult] = {}
    sections: dict = {}
    failures: dict = {}
    views: dict = {}
    text = _is_text(data)
    for study in reported(text):
        ctx = ReportRun(subjects, data, spec, budget, out / study.name, results, views)
        r = _run_one(study, ctx, sections, failures)
        if r is not None:
            results[study.name] = r
    if not dist.is_main():
        return sections
    total = time.time() - t_start
    frames = [r.table.assign(probe=k) for k, r in results.items() if not r.table.empty]
    if frames:
        write_table(pd.concat(frames, ignore_index=True), out / "results.csv")
    header = _header(subjects, data, budget, spec, total)
    write_json(dict(provenance=dict(models=[s.describe() for s in subjects], data=data.describe(), budget=budget,
                                    budget_details=budget_details(budget, len(data), text), run=spec.describe(),
                                    versions=versions(), wall_time_s=round(total, 1),
                                    **({"command": command} if command else {})),
                    sections=sections, failures=failures), out / "report.json")
    _document(results, sections, failures, header, out, text).write(out, "report")
    return sections


def _header(subjects, data, budget: str, spec: RunSpec, total: float) -> list[str]:
    roles = roles_of(list(subjects), {s.label: True for s in subjects})
    groups = sorted({r.group for r in roles.values()})
    return [
        "Networks: " + "; ".join(f"`{s.label}` ({s.provenance.get('model')}, weights "
                                 f"{str(s.provenance.get('weights_sha256') or 'random init')[:12]}"
                                 + (f", seed {s.seed}" if s.seed is not None else "") + ")" for s in subjects)
        + f" — {len(groups)} group(s): {', '.join(groups)}.",
        (f"Data: `{data.spec}`, {len(data)} windows of {data.seq_len} tokens ({data.tokenizer} tokens) from "
         f"{data.n_documents} documents; budget `{budget}`. {budget_details(budget, len(data), True)}."
         if _is_text(data) else
         f"Data: `{data.spec}` [{data.split}], {len(data)} images; budget `{budget}`"
         + (" (`--budget full` uses every image)" if budget != "full" else "") + f". {budget_details(budget, len(data))}."),
        f"Seed {spec.seed}; total time {total:.1f} s (every study, its files and this page); resprobe "
        f"{versions()['resprobe']}, torch {versions()['torch']}.",
        "Each verdict is a pure function of the measured results with its criterion and margin (the smallest "
        "effect of interest) fixed in advance: supported when the whole 95% CI lies beyond the margin, not supported "
        "when it lies wholly on the other side, inconclusive otherwise, and not applicable when a gate fails (a "
        "network that is not a competent predictor; a contrast without an equal-recipe twin of the same "
        "architecture). 'this network' means the CI comes from images (for language models: documents) and speaks "
        "for these trained networks only; "
        "'across N seeds' means it comes from N independently trained networks of each kind.",
        "Competence (the gate of every verdict about a network): " + "; ".join(
            f"`{s.label}` " + (s.competence.describe() + (" — passed" if s.competence.competent else " — FAILED")
                               if s.competence else "not measured") for s in subjects) + ".",
    ]


def _document(results: dict, sections: dict, failures: dict, header: list[str], out: Path,
              text: bool = False) -> Document:
    doc = Document("resprobe report: why does this residual " + ("language model" if text else "network") + " work?",
                   "token windows" if text else "images")
    for line in header:
        doc.paragraph(line)
    verdicts = [Verdict(**{k: v for k, v in s.items() if k not in ("study", "seconds")})
                for s in sections.values() if s.get("verdict") != "failed"]
    doc.heading("Verdicts")
    doc.verdicts(verdicts)
    order = {k: i for i, k in enumerate(k for s in reported(text) for k in s.verdict_keys)}
    by_name = {s.name: s for s in reported(text)}
    for key in sorted(sections, key=lambda k: order.get(k.split("#")[0], len(order))):
        sec = sections[key]
        study = by_name[sec["study"]]
        if sec.get("verdict") == "failed":
            doc.heading(f"{key}: failed")
            doc.paragraph(f"**The {study.name} study failed** — {sec['error']}")
            doc.code(failures[study.name]["traceback"])
            continue
        v = Verdict(**{k: x for k, x in sec.items() if k not in ("study", "seconds")})
        doc.heading(v.conjecture)
        doc.verdict(v)
        doc.bullets(results[study.name].findings)
        for stem in study.sections.get(key.split("#")[0], ()):
            png = out / study.name / f"{stem}.png"
            if png.is_file():
                doc.image(png, study.figure(stem).caption)
        doc.paragraph(f"Study time {sec['seconds']:.1f} s; files in `{study.name}/`.")
    return doc

"""One writer for every study: ``save(result, out)`` writes ``<study>.csv`` (the long table), ``<study>.json``
(provenance, settings, summary, verdict records, findings; strict JSON), the study's figures (PNG +
SVG, each with a caption saying what it shows and what to look for) and ``report.md`` / ``report.html``
(one source). What each study adds (figures, extra files, rows already in the folder, JSON keys, tables)
comes from its declaration in :mod:`resprobe.studies`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .. import figures as plots
from ..io.tables import write_json, write_table
from ..outputs import check_writable
from ..study import StudyResult
from ..studies import get
from .document import Document

__all__ = ["save", "figures_for", "study_document"]


def figures_for(result: StudyResult, out: Path) -> list[tuple[Path, str, list[Path]]]:
    """Render and save the study's figures: ``(png path, caption, all paths)`` for each one drawn."""
    done = []
    for f in get(result.study).figures:
        made = f.draw(result)
        if made is None:
            continue
        paths = plots.save_figure(made[0], out / f.stem)
        done.append((paths[0], f.caption, paths))
    return done


def study_document(result: StudyResult, images, title: Optional[str] = None, level: int = 2) -> Document:
    study = get(result.study)
    prov = result.provenance
    doc = Document(title or study.title, "token windows" if "n_windows" in prov.get("data", {}) else "images")
    models = prov.get("models", [])
    if models:
        data = prov.get("data", {})
        doc.paragraph("Networks: " + "; ".join(
            f"`{m.get('label')}` ({m.get('model')}, weights "
            f"{str(m.get('weights_sha256') or 'random init')[:12]}, normalization {m.get('normalize')})" for m in models)
            + (f". Data: `{data.get('spec')}`, {data.get('n_windows')} windows of {data.get('seq_len')} tokens from "
               f"{data.get('n_documents')} documents ({data.get('tokenizer')} tokens)." if data and "n_windows" in data
               else f". Data: `{data.get('spec')}` [{data.get('split')}], {data.get('n_images')} images." if data
               else "."))
    doc.verdicts(result.verdicts)
    for v in result.verdicts:
        doc.heading(v.conjecture, level)
        doc.verdict(v)
    doc.heading("Findings", level)
    doc.bullets(result.findings or ["(none)"])
    if images:
        doc.heading("Figures", level)
        for png, caption, _ in images:
            doc.image(png, caption)
    for heading, table in (study.tables(result) if study.tables else []):
        doc.heading(heading, level)
        doc.table(table, text_columns=("model", "unit"))
    return doc


def save(result: StudyResult, out, document: bool = True) -> list[Path]:
    """Write the study's files into ``out`` (see the module docstring); returns their paths."""
    out = check_writable(out)
    study = get(result.study)
    if study.merge:
        result = study.merge(result, out)
    files = [write_table(result.table, out / f"{study.stem}.csv")]
    images = figures_for(result, out)
    files += [p for _, _, ps in images for p in ps]
    files += study.files(result, out) if study.files else []
    meta = dict(provenance=result.provenance, settings=result.settings, summary=result.summary,
                verdicts=[v.as_dict() for v in result.verdicts], findings=result.findings,
                files=sorted(p.name for p in files), **(study.json(result) if study.json else {}))
    files.append(write_json(meta, out / f"{study.stem}.json"))
    if document:
        files += list(study_document(result, images).write(out, "report"))
    return files

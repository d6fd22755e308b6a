"""One report for every conjecture: a loop over the studies within a budget. Each study is run, saved in
its own folder (``lesion/``, ``paths/``, ...), and contributes one section per verdict; a study that fails
is reported in its sections and the others still run. The page opens with the table of verdicts."""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from .. import distributed as dist
from ..engine import RunSpec
from ..io.data import Dataset
from ..probes import amplify, gradcorr, identity, lesion, paths
from ..probes.common import versions
from ..progress import note
from ..study import StudyResult, Subject, roles_of
from ..verdict import Verdict
from .document import Document
from .save import save
from .tables import write_json, write_table

__all__ = ["BUDGETS", "Budget", "full_report", "SECTIONS"]


@dataclass(frozen=True)
class Budget:
    """How much work each study gets: images for lesions and identity (None: all), for amplification
    and paths; random-k deletions; routings; the synthetic sweep; lines through input space."""

    images: Optional[int]
    randomk: tuple
    samples: int
    amplify_images: int
    power_iters: int
    paths_images: int
    paths_samples: int
    synthetic: gradcorr.SyntheticOptions
    lines: int
    points: int

    def describe(self, n: Optional[int] = None) -> str:
        """What the budget does with ``n`` images."""
        def used(k):
            return f"all {n}" if k is None or (n is not None and k >= n) else f"{k}"
        return (f"Lesions and identity on {used(self.images)} images; random deletions k = "
                f"{', '.join(map(str, self.randomk))} ({self.samples} subsets each); amplification on "
                f"{used(self.amplify_images)} images ({self.power_iters} power iterations); paths on "
                f"{used(self.paths_images)} images ({self.paths_samples} routings per length); {self.lines} lines of "
                f"{self.points} points for the gradients")


BUDGETS = {
    "fast": Budget(500, (1, 2, 4, 8), 5, 64, 5, 64, 5,
                   gradcorr.SyntheticOptions(kinds=("ff-bn", "res-bn"), depths=(1, 4, 16), seeds=6, width=100,
                                             points=128), 4, 128),
    "full": Budget(None, tuple(range(1, 21)), 20, 512, 10, 512, 20, gradcorr.SyntheticOptions(), 16, 256),
}

# section key (a verdict's ``key``) -> (study, figures of that study shown in the section)
SECTIONS = {
    "lesion-single": ("lesion", ["lesion_single"]),
    "lesion-contrast": ("lesion", ["lesion_single"]),
    "lesion-random-k": ("lesion", ["lesion_random_k"]),
    "paths": ("paths", ["paths"]),
    "identity-near": ("identity", ["identity_residual_ratio", "identity_branch_ratio"]),
    "identity": ("identity", ["response_std"]),
    "refinement": ("identity", ["identity_branch_ratio"]),
    "amplify": ("amplify", ["amplify_kappa", "amplify_arithmetic"]),
    "gradcorr": ("gradcorr", ["gradcorr_block_profile"]),
    "gradcorr-synthetic": ("gradcorr-synthetic", ["gradcorr_traces", "gradcorr_lag1_vs_depth"]),
}


def _cap(data: Dataset, n: Optional[int]) -> Dataset:
    return data if n is None else data.subset(n)


def _studies(subjects: Sequence[Subject], data: Dataset, spec: RunSpec, b: Budget, out: Path):
    """(key, callable -> StudyResult) for each study, in order."""
    from ..anatomy import anatomy
    residual = [s for s in subjects if any(u.residual for u in anatomy(s.model))]
    sub = _cap(data, b.images)

    def lesions() -> StudyResult:
        store_out = out / "lesion"
        from .store import LesionStore
        store = LesionStore(store_out) if dist.is_main() else None
        n = min(sum(u.residual for u in anatomy(s.model)) for s in residual) if residual else 0
        ks = tuple(k for k in b.randomk if k <= n)
        if residual and ks:
            lesion.run(residual, sub, spec, lesion.LesionPlan(lesion.LesionMode.RANDOM_K, ks=ks, samples=b.samples),
                       store)
        single = lesion.run(subjects, sub, spec, lesion.LesionPlan(lesion.LesionMode.SINGLE), store)
        allrows = LesionStore(store_out).rows() if dist.is_main() else single.table
        allrows = allrows[allrows["model"].isin([s.label for s in subjects])]
        single.table = lesion.order_rows(allrows)
        ex = single.extras
        single.verdicts = lesion.verdicts(single.table, ex["roles"], ex["units"], ex["chance"], spec, ex["bits"])
        single.summary = lesion.summarize(single.table, ex["units"])
        single.findings = lesion.findings(single.table, ex["units"], ex["roles"])
        single.settings = dict(modes=["random-k", "single"], ks=list(ks), samples=b.samples)
        return single

    return [
        ("lesion", lesions),
        ("paths", lambda: paths.run(residual, _cap(data, b.paths_images), spec.replace(batch_size=64),
                                    paths.PathsOptions(samples=b.paths_samples))),
        ("identity", lambda: identity.run(subjects, sub, spec)),
        ("amplify", lambda: amplify.run(subjects, _cap(data, b.amplify_images), spec.replace(batch_size=128),
                                        amplify.AmplifyOptions(power_iters=b.power_iters))),
        ("gradcorr", lambda: gradcorr.run(subjects, data, spec, gradcorr.LineOptions(lines=b.lines, points=b.points))),
        ("gradcorr-synthetic", lambda: gradcorr.run_synthetic(b.synthetic, spec)),
    ]


def _section_ids(verdicts: list[Verdict], taken: dict) -> list[str]:
    """One section per verdict: its key, numbered from the second verdict of a key on (``lesion-single#2``)."""
    out = []
    for v in verdicts:
        n = sum(1 for k in list(taken) + out if k.split("#")[0] == v.key)
        out.append(v.key if n == 0 else f"{v.key}#{n + 1}")
    return out


def full_report(subjects: Sequence[Subject], data: Dataset, spec: RunSpec = RunSpec(), budget: str = "fast",
                out: str | Path = "report", command: Optional[dict] = None) -> dict:
    """Run every study on the subjects (residual networks and, optionally, plain twins, several seeds each)
    within ``budget``; write the report into ``out``. Returns the sections (verdict records as dicts)."""
    b = BUDGETS[budget]
    out = Path(out)
    t_start = time.time()
    results: dict[str, StudyResult] = {}
    sections: dict = {}
    failures: dict = {}
    for key, fn in _studies(subjects, data, spec, b, out):
        t0 = time.time()
        note(f"report: {key} ...")
        try:
            r = fn()
            if key == "identity" and "lesion" in results:
                r.verdicts += identity.refinement_verdicts(r.table, results["lesion"].table, r.extras["roles"],
                                                           spec.n_boot, spec.seed)
            results[key] = r
            if dist.is_main():
                save(r, out / key)
            for sk, v in zip(_section_ids(r.verdicts, sections), r.verdicts):
                sections[sk] = dict(v.as_dict(), study=key, seconds=round(time.time() - t0, 1))
        except Exception as e:  # noqa: BLE001 - one study's failure must not lose the others
            failures[key] = dict(error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-3000:],
                                 seconds=round(time.time() - t0, 1))
            for sk, (study, _) in SECTIONS.items():
                if study == key:
                    sections[sk] = dict(verdict="failed", study=key, error=failures[key]["error"],
                                        seconds=failures[key]["seconds"])
    if not dist.is_main():
        return sections
    total = time.time() - t_start
    frames = [r.table.assign(probe=k) for k, r in results.items() if not r.table.empty]
    if frames:
        write_table(pd.concat(frames, ignore_index=True), out / "results.csv")
    header = _header(subjects, data, b, budget, spec, total)
    write_json(dict(provenance=dict(models=[s.describe() for s in subjects], data=data.describe(), budget=budget,
                                    budget_details=b.describe(len(data)), run=spec.describe(), versions=versions(),
                                    wall_time_s=round(total, 1), **({"command": command} if command else {})),
                    sections=sections, failures=failures), out / "report.json")
    _document(results, sections, failures, header, out).write(out, "report")
    return sections


def _header(subjects, data, b: Budget, budget: str, spec: RunSpec, total: float) -> list[str]:
    roles = roles_of(list(subjects), {s.label: True for s in subjects})
    groups = sorted({r.group for r in roles.values()})
    capped = b.images is not None and b.images < len(data)
    return [
        "Networks: " + "; ".join(f"`{s.label}` ({s.provenance.get('model')}, weights "
                                 f"{str(s.provenance.get('weights_sha256') or 'random init')[:12]}"
                                 + (f", seed {s.seed}" if s.seed is not None else "") + ")" for s in subjects)
        + f" — {len(groups)} group(s): {', '.join(groups)}.",
        f"Data: `{data.spec}` [{data.split}], {len(data)} images"
        + (f"; budget `{budget}` uses {b.images} of them for lesions and identity (`--budget full` uses all)"
           if capped else f"; budget `{budget}`") + f". {b.describe(len(data))}.",
        f"Seed {spec.seed}; total time {total:.1f} s (every study, its files and this page); resprobe "
        f"{versions()['resprobe']}, torch {versions()['torch']}.",
        "Each verdict is a pure function of the measured results with its criterion and margin (the smallest "
        "effect of interest) fixed in advance: supported when the whole 95% CI lies beyond the margin, not supported "
        "when it lies wholly on the other side, inconclusive otherwise, and not applicable when a gate fails (a "
        "network that is not a competent predictor; a contrast without an equal-recipe twin of the same "
        "architecture). 'this network' means the CI comes from images and speaks for these trained networks only; "
        "'across N seeds' means it comes from N independently trained networks of each kind.",
        "Competence (the gate of every verdict about a network): " + "; ".join(
            f"`{s.label}` " + (s.competence.describe() + (" — passed" if s.competence.competent else " — FAILED")
                               if s.competence else "not measured") for s in subjects) + ".",
    ]


def _document(results: dict, sections: dict, failures: dict, header: list[str], out: Path) -> Document:
    doc = Document("resprobe report: why does this residual network work?")
    for line in header:
        doc.paragraph(line)
    verdicts = [Verdict(**{k: v for k, v in s.items() if k not in ("study", "seconds")})
                for s in sections.values() if s.get("verdict") != "failed"]
    doc.heading("Verdicts")
    doc.verdicts(verdicts)
    order = {k: i for i, k in enumerate(SECTIONS)}
    for key in sorted(sections, key=lambda k: order.get(k.split("#")[0], len(order))):
        sec = sections[key]
        study, stems = SECTIONS.get(key.split("#")[0], (sec["study"], []))
        if sec.get("verdict") == "failed":
            doc.heading(f"{key}: failed")
            doc.paragraph(f"**The {study} study failed** — {sec['error']}")
            doc.code(failures[study]["traceback"])
            continue
        v = Verdict(**{k: x for k, x in sec.items() if k not in ("study", "seconds")})
        doc.heading(v.conjecture)
        doc.verdict(v)
        r = results[study]
        doc.bullets(r.findings)
        folder = out / study
        for stem in stems:
            png = folder / f"{stem}.png"
            if png.is_file():
                from .save import FIGURES
                cap = next((c for s, _, c in FIGURES[study] if s == stem), "")
                doc.image(png, cap)
        doc.paragraph(f"Study time {sec['seconds']:.1f} s; files in `{study}/`.")
    return doc

"""The degradation experiment (He et al. 2016, Fig. 1): does a deeper plain network train worse than a
shallower one, while a deeper ResNet does not?

Input: training runs written by :func:`resprobe.training.train` (``metrics.csv``, ``model.pt``,
``config.json`` in one folder per network). Output: the training curves of every run (long format),
each final network's error on the training set (eval mode, no augmentation) and the test set, and for
every family (plain, residual) the paired difference deeper − shallower in error with a bootstrap CI
over images, plus the verdict and its criterion.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from ..api import load_model
from ..engine import predict
from ..io.data import Dataset
from ..metrics.stats import bootstrap_mean_ci, stable_seed
from .document import Document
from .plots import save_figure, training_curves_plot
from .tables import provenance, write_json, write_table

__all__ = ["read_runs", "family_and_depth", "degradation_study", "degradation_verdict"]


def family_and_depth(spec: str) -> tuple[str, int]:
    """('plain' | 'residual', depth) from a model spec such as ``cifar_plain56`` or ``cifar_resnet20_b``."""
    m = re.search(r"(plain|resnet)(\d+)", spec)
    if not m:
        raise ValueError(f"cannot tell the family and depth of {spec!r}: expected a spec like cifar_plain20 "
                         "or cifar_resnet56")
    return ("plain" if m.group(1) == "plain" else "residual"), int(m.group(2))


def read_runs(run_dirs: Sequence[str | Path]) -> tuple[pd.DataFrame, dict]:
    """Training curves of every run, long format: ``model, family, depth, epoch, split, error, loss``.

    Returns the curves and ``{model: config}`` (the recipe recorded beside each run)."""
    frames, configs = [], {}
    for d in map(Path, run_dirs):
        cfg_file, met_file = d / "config.json", d / "metrics.csv"
        if not met_file.is_file() or not cfg_file.is_file():
            raise FileNotFoundError(f"{d}: no metrics.csv/config.json — not a finished or running `resprobe train` "
                                    "folder")
        cfg = json.loads(cfg_file.read_text())
        spec = cfg.get("model") or d.name
        fam, depth = family_and_depth(spec)
        m = pd.read_csv(met_file)
        for split in ("train", "test"):
            frames.append(pd.DataFrame(dict(model=spec, family=fam, depth=depth, epoch=m["epoch"] + 1, split=split,
                                            error=m[f"{split}_error"], loss=m[f"{split}_loss"])))
        configs[spec] = dict(cfg, epochs_done=int(len(m)), run_dir=str(d))
    if not frames:
        raise ValueError("no training runs given")
    return pd.concat(frames, ignore_index=True), configs


def _pairs(specs: Sequence[str]) -> list[tuple[str, str]]:
    """(shallower, deeper) within each family, for consecutive depths."""
    by_fam: dict[str, list[tuple[int, str]]] = {}
    for s in specs:
        fam, depth = family_and_depth(s)
        by_fam.setdefault(fam, []).append((depth, s))
    out = []
    for fam in sorted(by_fam):
        runs = sorted(by_fam[fam])
        out += [(a[1], b[1]) for a, b in zip(runs, runs[1:])]
    return out


def degradation_verdict(comparisons: pd.DataFrame) -> dict:
    """Supported when, on the training set, every deeper plain network errs more than the shallower one
    (the 95% CI of the paired difference above 0) and no deeper ResNet does (its CI reaches 0 or below)."""
    tr = comparisons[comparisons["split"] == "train"]
    plain, res = tr[tr["family"] == "plain"], tr[tr["family"] == "residual"]
    criterion = ("supported when, on the training set (eval mode, no augmentation), each deeper plain net's error "
                 "exceeds the shallower one's (95% bootstrap CI of the paired difference above 0) while no deeper "
                 "ResNet's does (CI reaching 0 or below); not supported when a deeper plain net errs less (CI below 0) "
                 "or the ResNets degrade too; inconclusive otherwise")
    if plain.empty or res.empty:
        return dict(verdict="inconclusive", criterion=criterion,
                    reason="needs a shallower and a deeper network of both families")
    plain_degrades = bool((plain["ci_low"] > 0).all())
    plain_better = bool((plain["ci_high"] < 0).any())
    res_degrades = bool((res["ci_low"] > 0).any())
    if plain_degrades and not res_degrades:
        verdict = "supported"
    elif plain_better or res_degrades:
        verdict = "not supported"
    else:
        verdict = "inconclusive"
    parts = []
    for _, r in pd.concat([plain, res]).iterrows():
        parts.append(f"{r['deeper']} − {r['shallower']}: {100 * r['difference']:+.2f} points "
                     f"[{100 * r['ci_low']:+.2f}, {100 * r['ci_high']:+.2f}]")
    return dict(verdict=verdict, criterion=criterion, plain_degrades=plain_degrades, residual_degrades=res_degrades,
                reason="training error, deeper − shallower: " + "; ".join(parts))


def degradation_study(run_dirs: Sequence[str | Path], train_data: Dataset, test_data: Dataset,
                      normalize: Optional[str] = None, device="cpu", out: Optional[str | Path] = None,
                      n_boot: int = 1000, seed: int = 0, batch_size: int = 512, progress: bool = True,
                      extra: Optional[dict] = None) -> dict:
    """Curves, final errors, paired deeper − shallower comparisons and the verdict; with ``out``, write
    ``degradation.csv`` (long), ``degradation.json`` (provenance, recipe, summary), ``curves.png/svg``,
    ``report.md`` and ``report.html``. Returns ``dict(curves, final, comparisons, verdict)``."""
    t0 = time.time()
    curves, configs = read_runs(run_dirs)
    wrong, finals, provs = {}, [], []
    for spec, cfg in configs.items():
        weights = Path(cfg["run_dir"]) / "model.pt"
        model, prov = load_model(spec, str(weights), num_classes=train_data.num_classes,
                                 in_channels=train_data.input_shape[0])
        provs.append(dict(prov, epochs_done=cfg["epochs_done"], epochs=cfg.get("epochs")))
        norm = normalize or cfg.get("normalize") or "none"
        fam, depth = family_and_depth(spec)
        for split, data in (("train", train_data), ("test", test_data)):
            p = predict(model.to(device), data, batch_size, norm, device, progress, desc=f"{spec} {split}")
            wrong[spec, split] = p.wrong.astype(np.float64)
            lo, hi = bootstrap_mean_ci(p.wrong, n_boot, seed=stable_seed(seed, spec, split))
            finals.append(dict(model=spec, family=fam, depth=depth, split=split, error=float(p.wrong.mean()),
                               ci_low=lo, ci_high=hi, n_images=len(data), epochs_done=cfg["epochs_done"]))
        model.cpu()
    final = pd.DataFrame(finals)
    comps = []
    for a, b in _pairs(list(configs)):
        fam, _ = family_and_depth(a)
        for split in ("train", "test"):
            diff = wrong[b, split] - wrong[a, split]
            lo, hi = bootstrap_mean_ci(diff, n_boot, seed=stable_seed(seed, a, b, split))
            comps.append(dict(family=fam, shallower=a, deeper=b, split=split, difference=float(diff.mean()),
                              ci_low=lo, ci_high=hi, n_images=len(diff)))
    comparisons = pd.DataFrame(comps, columns=["family", "shallower", "deeper", "split", "difference", "ci_low",
                                               "ci_high", "n_images"])
    verdict = degradation_verdict(comparisons)
    res = dict(curves=curves, final=final, comparisons=comparisons, verdict=verdict)
    if out is None:
        return res
    out = Path(out)
    long = pd.concat([
        curves.assign(kind="curve").rename(columns={"error": "value"}).assign(metric="error"),
        final.assign(kind="final", metric="error").rename(columns={"error": "value"}),
        comparisons.assign(kind="deeper_minus_shallower", metric="error", model=comparisons["deeper"])
        .rename(columns={"difference": "value"}),
    ], ignore_index=True)
    write_table(long, out / "degradation.csv")
    recipe = {k: v for k, v in next(iter(configs.values())).items()
              if k in ("lr", "momentum", "weight_decay", "batch_size", "schedule", "normalize", "augment", "epochs",
                       "seed", "device")}
    write_json(dict(provenance=provenance(provs, dict(train=train_data.describe(), test=test_data.describe()), seed,
                                          device, time.time() - t0, normalize or recipe.get("normalize", "none"),
                                          recipe=recipe, **(extra or {})),
                    final=final.to_dict("records"), comparisons=comparisons.to_dict("records"), verdict=verdict),
               out / "degradation.json")
    fig, _ = training_curves_plot(curves)
    save_figure(fig, out / "curves")
    doc = Document("Degradation: plain vs residual networks of two depths (He et al. 2016, Fig. 1)")
    doc.paragraph(f"Recipe: {json.dumps(recipe)}. Epochs done: "
                  + ", ".join(f"{s} {c['epochs_done']}/{c.get('epochs')}" for s, c in configs.items()) + ".")
    doc.image(out / "curves.png", "training (dashed) and test (solid) error per epoch")
    pct = ("error", "ci_low", "ci_high")
    doc.paragraph("Final networks: error in % with its 95% bootstrap CI over images.")
    doc.table(final.assign(**{c: (100 * final[c]).round(2) for c in pct}))
    doc.paragraph("Deeper − shallower error in percentage points, paired over the same images.")
    doc.table(comparisons.assign(**{c: (100 * comparisons[c]).round(2) for c in ("difference", "ci_low", "ci_high")}))
    doc.paragraph(f"**Verdict: {verdict['verdict']}.** {verdict['reason']}. Criterion: {verdict['criterion']}.")
    doc.write(out)
    return res

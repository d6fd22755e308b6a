"""The degradation experiment (He et al. 2016, Fig. 1): does a deeper plain network train worse than a
shallower one, while a deeper ResNet does not?

Input: training runs written by :func:`resprobe.training.train` (``metrics.csv``, ``model.pt``,
``config.json`` per network; several seeds of one network share its spec). Output: the training
curves of every run (long format), each final network's error on the training set (eval mode, no
augmentation) and on the test set, and per family (plain, residual) the difference deeper − shallower
in training error: paired over images for one seed, over seeds (t) for several; the verdict with its
equivalence margin, fixed in advance.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from ..engine import RunSpec, predict
from ..errors import UsageError
from ..io.data import Dataset
from ..metrics.stats import bootstrap_mean_ci, stable_seed
from ..study import StudyResult
from ..verdict import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, Verdict, decide, seed_ci
from . import common

__all__ = ["DegradationDetail", "read_runs", "family_and_depth", "run", "degradation_verdict", "MARGIN"]

# Equivalence margin on the training error, fixed before measuring: He et al.'s Fig. 1/6 show plain-56 training
# several points above plain-20 and ResNet-56 below ResNet-20; a difference within one percentage point is no
# degradation, beyond it (with its whole CI) it is.

@dataclass(frozen=True)
class DegradationDetail:
    """The training curves (long DataFrame), final errors, deeper − shallower comparisons and each run's
    configuration, for the figure."""

    curves: pd.DataFrame
    final: pd.DataFrame
    comparisons: pd.DataFrame
    configs: dict

MARGIN = 0.01


def family_and_depth(spec: str) -> tuple[str, int]:
    """('plain' | 'residual', depth) from a model spec such as ``cifar_plain56`` or ``cifar_resnet20_b``."""
    m = re.search(r"(plain|resnet)(\d+)", spec)
    if not m:
        raise UsageError(f"cannot tell the family and depth of {spec!r}",
                         "expected a spec like cifar_plain20 or cifar_resnet56")
    return ("plain" if m.group(1) == "plain" else "residual"), int(m.group(2))


def read_runs(run_dirs: Sequence[str | Path]) -> tuple[pd.DataFrame, dict]:
    """Training curves of every run, long format: ``model, seed, family, depth, epoch, split, error,
    loss``; and ``{run name: config}`` (the recipe recorded beside each run)."""
    frames, configs = [], {}
    for d in map(Path, run_dirs):
        cfg_file, met_file = d / "config.json", d / "metrics.csv"
        if not met_file.is_file() or not cfg_file.is_file():
            raise UsageError(f"{d}: no metrics.csv/config.json", "pass folders written by resprobe train")
        cfg = json.loads(cfg_file.read_text())
        spec = cfg.get("model") or d.name
        fam, depth = family_and_depth(spec)
        m = pd.read_csv(met_file)
        seed = int(cfg.get("seed", 0))
        name = f"{spec}/seed{seed}"
        if name in configs:
            raise UsageError(f"two runs of {spec} with seed {seed} ({configs[name]['run_dir']} and {d})")
        for split in ("train", "test"):
            frames.append(pd.DataFrame(dict(model=spec, seed=seed, family=fam, depth=depth, epoch=m["epoch"] + 1,
                                            split=split, error=m[f"{split}_error"], loss=m[f"{split}_loss"])))
        configs[name] = dict(cfg, epochs_done=int(len(m)), run_dir=str(d), spec=spec)
    if not frames:
        raise UsageError("no training runs given")
    return pd.concat(frames, ignore_index=True), configs


def _pairs(specs: Sequence[str]) -> list[tuple[str, str]]:
    """(shallower, deeper) within each family, for consecutive depths."""
    by_fam: dict[str, list[tuple[int, str]]] = {}
    for s in sorted(set(specs)):
        fam, depth = family_and_depth(s)
        by_fam.setdefault(fam, []).append((depth, s))
    out = []
    for fam in sorted(by_fam):
        runs = sorted(by_fam[fam])
        out += [(a[1], b[1]) for a, b in zip(runs, runs[1:])]
    return out


def degradation_verdict(comparisons: pd.DataFrame) -> Verdict:
    """Supported when every deeper plain net's training error exceeds the shallower one's by more than the
    margin (whole CI) while every deeper ResNet's stays within it (whole CI below the margin); not
    supported when a plain pair does not degrade (CI below the margin) or a residual pair does (CI
    above); inconclusive otherwise, and always with one training run per network (image CIs speak for
    those networks, not for the architectures)."""
    conj = "Degradation: deeper plain networks train worse, deeper ResNets do not (He et al. 2016, Fig. 1)"
    crit = (f"statistic: training error deeper − shallower, per family, in eval mode on the whole training set. "
            f"Supported when each plain pair's 95% CI lies above the margin {100 * MARGIN:g} points and each residual "
            f"pair's below it; not supported when a plain pair's lies below or a residual pair's above; inconclusive "
            f"otherwise. CIs: t over seeds (at least 2 per network); with one run per network the verdict is "
            f"inconclusive and the per-network outcome is given as evidence")
    tr = comparisons[comparisons["split"] == "train"]
    plain, res = tr[tr["family"] == "plain"], tr[tr["family"] == "residual"]
    parts = [f"{r['deeper']} − {r['shallower']}: {100 * r['difference']:+.2f} points "
             f"[{100 * r['ci_low']:+.2f}, {100 * r['ci_high']:+.2f}] ({r['scope']})" for _, r in tr.iterrows()]
    if plain.empty or res.empty:
        return Verdict(conj, INCONCLUSIVE, crit, "training error, deeper − shallower", None, None, None, MARGIN,
                       "this network", reason="needs a shallower and a deeper network of both families")
    outcomes = [decide(r["ci_low"], r["ci_high"], MARGIN, "above") for _, r in plain.iterrows()] + \
               [decide(r["ci_low"], r["ci_high"], MARGIN, "below") for _, r in res.iterrows()]
    outcome = SUPPORTED if all(o == SUPPORTED for o in outcomes) else (
        NOT_SUPPORTED if NOT_SUPPORTED in outcomes else INCONCLUSIVE)
    n_seeds = int(tr["n_seeds"].min())
    reason = "training error, deeper − shallower: " + "; ".join(parts)
    ev = dict(comparisons=tr.to_dict("records"), outcome_for_these_networks=outcome)
    if n_seeds < 2:
        reason = (f"one training run per network: for these networks the outcome would be '{outcome}', but a claim "
                  f"about the architectures needs several seeds. " + reason)
        outcome = INCONCLUSIVE
    worst = res["ci_high"].max()
    return Verdict(conj, outcome, crit, "training error deeper − shallower (largest residual CI end)",
                   float(res["difference"].max()), float(res["ci_low"].min()), float(worst), MARGIN,
                   f"across {n_seeds} seeds" if n_seeds >= 2 else "these networks", int(tr["n_images"].max()),
                   n_seeds, evidence=ev, reason=reason)


def run(run_dirs: Sequence[str | Path], train_data: Dataset, test_data: Dataset, spec: RunSpec = RunSpec(batch_size=512),
        normalize: Optional[str] = None) -> StudyResult:
    """Curves, final errors, deeper − shallower comparisons and the verdict."""
    from ..loading import load_model
    curves, configs = read_runs(run_dirs)
    wrong, finals, provs = {}, [], []
    for name, cfg in configs.items():
        model, prov = load_model(cfg["spec"], str(Path(cfg["run_dir"]) / "model.pt"),
                                 num_classes=train_data.num_classes, in_channels=train_data.input_shape[0])
        provs.append(dict(prov, epochs_done=cfg["epochs_done"], epochs=cfg.get("epochs"), seed=cfg.get("seed")))
        norm = normalize or cfg.get("normalize") or "none"
        fam, depth = family_and_depth(cfg["spec"])
        model.to(spec.torch_device)
        for split, data in (("train", train_data), ("test", test_data)):
            p = predict(model, data, spec, norm, desc=f"{name} {split}")
            wrong[name, split] = p.wrong.astype(np.float64)
            lo, hi = bootstrap_mean_ci(p.wrong, spec.n_boot, seed=stable_seed(spec.seed, name, split))
            finals.append(dict(model=cfg["spec"], seed=cfg.get("seed"), family=fam, depth=depth, split=split,
                               error=float(p.wrong.mean()), ci_low=lo, ci_high=hi, n_images=len(data),
                               epochs_done=cfg["epochs_done"]))
        model.cpu()
    final = pd.DataFrame(finals)
    comparisons = _comparisons(configs, wrong, spec)
    verdict = degradation_verdict(comparisons)
    recipe = {k: v for k, v in next(iter(configs.values())).items()
              if k in ("lr", "momentum", "weight_decay", "batch_size", "schedule", "normalize", "augment", "epochs",
                       "optimizer")}
    long = pd.concat([
        curves.assign(kind="curve", metric="error").rename(columns={"error": "value"}),
        final.assign(kind="final", metric="error").rename(columns={"error": "value"}),
        comparisons.assign(kind="deeper_minus_shallower", metric="error", model=comparisons["deeper"])
        .rename(columns={"difference": "value"}),
    ], ignore_index=True)
    return StudyResult("degradation", long, summary=dict(recipe=recipe, final=final.to_dict("records"),
                                                         comparisons=comparisons.to_dict("records")),
                       verdicts=[verdict], findings=[verdict.reason],
                       provenance=dict(models=provs, data=dict(train=train_data.describe(), test=test_data.describe()),
                                       run=spec.describe(), versions=common.versions()),
                       detail=DegradationDetail(curves, final, comparisons, configs))


def _comparisons(configs: dict, wrong: dict, spec: RunSpec) -> pd.DataFrame:
    specs = [c["spec"] for c in configs.values()]
    comps = []
    for a, b in _pairs(specs):
        fam, _ = family_and_depth(a)
        seeds = sorted({c["seed"] for c in configs.values() if c["spec"] == a} &
                       {c["seed"] for c in configs.values() if c["spec"] == b})
        for split in ("train", "test"):
            diffs = [wrong[f"{b}/seed{s}", split] - wrong[f"{a}/seed{s}", split] for s in seeds]
            if len(seeds) >= 2:
                m, lo, hi = seed_ci([float(d.mean()) for d in diffs])
                scope = f"across {len(seeds)} seeds"
            elif seeds:
                m = float(diffs[0].mean())
                lo, hi = bootstrap_mean_ci(diffs[0], spec.n_boot, seed=stable_seed(spec.seed, a, b, split))
                scope = "these networks (paired over images)"
            else:
                continue
            comps.append(dict(family=fam, shallower=a, deeper=b, split=split, difference=m, ci_low=lo, ci_high=hi,
                              n_images=len(diffs[0]), n_seeds=len(seeds), scope=scope))
    return pd.DataFrame(comps, columns=["family", "shallower", "deeper", "split", "difference", "ci_low", "ci_high",
                                        "n_images", "n_seeds", "scope"])

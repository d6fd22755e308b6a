"""Layer pruning by similarity on language models, judged against the true damage.

Rankings (one pass over the windows, the residual stream of every unit's input kept per batch only):

- ``gromov-last`` / ``gromov-all``: Gromov et al. (2024) angular distance (1/π)·arccos(cos(x_ℓ, x_ℓ+n)) between
  the input of layer ℓ and of layer ℓ + n, at the window's last token (the paper's choice) or averaged over
  all tokens; the n contiguous layers of smallest distance are pruned;
- ``shortgpt-bi``: ShortGPT's block influence, 1 − cos(layer input, layer output) averaged over tokens; the n
  layers of lowest influence are pruned;
- ``llm-drop``: LLM-Drop's sublayer importance, 1 − cos(sublayer input, sublayer output) over tokens, per
  attention and MLP sublayer; the 2n least important sublayers are pruned (as many sublayers as n layers hold).

The judgment the papers leave out: the true single-deletion loss increase of every layer and sublayer, the
Spearman correlation between each ranking and that damage (95% CI resampling documents; the same documents in
both), and, for each n, the loss after pruning what each rule chooses against n layers chosen at random
(``samples`` draws) and n chosen by the true single-deletion effect (the oracle; 2n sublayers for LLM-Drop).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch

from .. import checks
from .. import distributed as dist
from ..anatomy import ResidualView, anatomy, preserved_state
from ..engine import PerImageStore, RunSpec, check_finite
from ..errors import UsageError
from ..io.text import TextData
from ..models.lm import is_placed
from ..metrics.lm import document_spearman_ci, per_document
from ..metrics.stats import stable_seed
from ..progress import progress
from ..study import StudyResult, Subject
from . import common
from .lesion_plans import LesionConfig, LesionMode, LesionPlan
from .lm_lesion import (COLUMNS, Slot, TextDetail, configs_for, rows_for, run_key, stored_sweep, text_spec, typed,
                        windows_in_batches)

__all__ = ["PruneTextOptions", "similarity_sums", "run_text", "RULES"]

RULES = ("gromov-last", "gromov-all", "shortgpt-bi", "llm-drop")
DEFAULT_NS = (1, 2, 4, 8)


@dataclass(frozen=True)
class PruneTextOptions:
    """``ns``: numbers of layers pruned (default 1, 2, 4, 8 where they leave two layers); ``samples``: random
    choices of n layers per n."""

    ns: Optional[tuple] = None
    samples: int = 20

    def __post_init__(self):
        checks.fields(self, ns=(1, 10 ** 6))
        if self.samples < 1:
            raise UsageError(f"--samples must be >= 1, got {self.samples}")


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine per token ``(N, T)``, in float64."""
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).clamp(-1, 1)


def _angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.arccos(_cos(a, b)) / np.pi


def similarity_sums(view: ResidualView, data: TextData, spec: RunSpec, ns: Sequence[int]) -> dict:
    """Per window: ``gromov-last|n`` and ``gromov-all|n`` ``(W, B - n + 1)`` (the last token's distance; the sum
    over tokens), ``shortgpt-bi`` ``(W, B)`` and ``llm-drop`` ``(W, units)`` (sums over tokens)."""
    blocks = view.blocks
    ins = [b.units[0] for b in blocks] + [len(view)]   # the stream before each layer, and the head's input
    store = PerImageStore(len(data))
    with preserved_state(view.model), torch.no_grad(), spec.autocast(), \
            progress(-(-len(data) // spec.batch_size), "pruning metrics", enabled=spec.progress) as bar:
        view.model.eval()
        for x, _, idx in windows_in_batches(data, spec):
            hs = view.unit_inputs(x)
            check_finite(hs[-1], "the residual stream", spec)
            rows = store.mark(idx)
            for n in ns:
                ang = [_angle(hs[ins[b]], hs[ins[b + n]]) for b in range(len(blocks) - n + 1)]
                store.put(f"gromov-last|{n}", rows, torch.stack([a[:, -1] for a in ang], 1))
                store.put(f"gromov-all|{n}", rows, torch.stack([a.sum(1) for a in ang], 1))
            store.put("shortgpt-bi", rows, torch.stack([(1 - _cos(hs[ins[b]], hs[ins[b + 1]])).sum(1)
                                                        for b in range(len(blocks))], 1))
            store.put("llm-drop", rows, torch.stack([(1 - _cos(hs[i], hs[i + 1])).sum(1) for i in range(len(view))], 1))
            bar.update(1)
            del hs
    return store.gather()


def _singles(view: ResidualView, spec: RunSpec, label: str) -> list:
    """Every single-layer and single-sublayer deletion, with the intact model."""
    configs = configs_for(view, LesionPlan(LesionMode.SINGLE, granularity="block"), spec.seed, label)
    configs += configs_for(view, LesionPlan(LesionMode.SINGLE), spec.seed, label)[1:]
    return list({c.key(): c for c in configs}.values())  # a layer that is one unit is deleted once


def _damage(view: ResidualView, sums: dict, docs: np.ndarray, block: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per document and item (layer or sublayer): the summed loss increase of its deletion, and the tokens."""
    base = per_document(sums[LesionConfig("baseline").key()], docs)[0]
    names = [b.name for b in view.blocks] if block else [u.name for u in view]
    cols = [per_document(sums[LesionConfig("single", label=n, k=1).key()], docs)[0] for n in names]
    return np.stack([c[:, 0] - base[:, 0] for c in cols], 1), np.stack([c[:, 1] for c in cols], 1)


def _per_doc(arr: np.ndarray, docs: np.ndarray) -> np.ndarray:
    return per_document(arr, docs)[0]


def _metric(sim: dict, key: str, docs: np.ndarray, den: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per document and item: the metric's sums and their denominators (windows or tokens per document)."""
    num = _per_doc(sim[key], docs)
    return num, np.repeat(den[:, None], num.shape[1], 1)


def _choices(rule: str, values: np.ndarray, n: int, view: ResidualView) -> tuple[tuple, str]:
    """The units a rule prunes for n layers, and how it chose them."""
    blocks = view.blocks
    if rule.startswith("gromov"):
        s = int(np.argmin(values))
        units = tuple(i for b in blocks[s:s + n] for i in b.units)
        return units, f"layers {s}..{s + n - 1}: the smallest angular distance ({values[s]:.4f})"
    if rule == "shortgpt-bi":
        pick = sorted(np.argsort(values, kind="stable")[:n].tolist())
        return tuple(i for b in pick for i in blocks[b].units), f"the {n} layers of lowest block influence"
    pick = sorted(np.argsort(values, kind="stable")[:2 * n].tolist())
    return tuple(pick), f"the {2 * n} least important sublayers"


def _label(view: ResidualView, units: Sequence[int]) -> str:
    return "+".join(view[i].name for i in units)


def _prune_configs(view: ResidualView, values: dict, damage: dict, ns: Sequence[int], samples: int,
                   seed: int) -> list[LesionConfig]:
    """For each n: each rule's choice, the oracle's (n layers; 2n sublayers) and ``samples`` random n layers."""
    rng = np.random.default_rng(stable_seed(seed, "prune-random"))
    out, B = [], len(view.blocks)
    for n in ns:
        for rule in RULES:
            units, how = _choices(rule, values[rule if not rule.startswith("gromov") else f"{rule}|{n}"], n, view)
            out.append(LesionConfig("prune", units, k=n, label=_label(view, units), note=f"{rule}: {how}"))
        for what, dmg, per in (("oracle-layers", damage["block"], n), ("oracle-sublayers", damage["unit"], 2 * n)):
            pick = sorted(np.argsort(dmg, kind="stable")[:per].tolist())
            units = tuple(i for b in pick for i in view.blocks[b].units) if what == "oracle-layers" else tuple(pick)
            out.append(LesionConfig("prune", units, k=n, label=_label(view, units),
                                    note=f"{what}: the {per} of smallest single-deletion loss increase"))
        seen: set = set()
        for _ in range(samples * 10):
            if len(seen) >= samples:
                break
            pick = tuple(sorted(rng.choice(B, size=n, replace=False).tolist()))
            if pick in seen:
                continue
            seen.add(pick)
            units = tuple(i for b in pick for i in view.blocks[b].units)
            out.append(LesionConfig("prune", units, k=n, label=_label(view, units), note=f"random: {n} layers"))
    uniq: dict = {}
    for c in out:  # a choice two rules share is run once; the rules stay named in its note
        uniq[c.key()] = LesionConfig(c.mode, c.deleted, k=c.k, label=c.label, note=uniq[c.key()].note + "; " + c.note) \
            if c.key() in uniq else c
    return list(uniq.values())


def _similarity(label: str, view: ResidualView, values: dict, damage: dict) -> list[dict]:
    """Per layer (sublayer for LLM-Drop): each rule's value beside the true single-deletion loss increase."""
    rows = []
    for rule, key, item in (("gromov-last", "gromov-last|1", "block"), ("gromov-all", "gromov-all|1", "block"),
                            ("shortgpt-bi", "shortgpt-bi", "block"), ("llm-drop", "llm-drop", "unit")):
        names = [b.name for b in view.blocks] if item == "block" else [u.name for u in view]
        rows += [dict(model=label, rule=rule, index=i, item=n, value=float(values[key][i]),
                      delta_loss=float(damage[item][i])) for i, n in enumerate(names)]
    return rows


def _correlations(label: str, sim: dict, dmg_doc: dict, docs: np.ndarray, den: dict, spec: RunSpec) -> list[dict]:
    rows = []
    for rule, key, item in (("gromov-last", "gromov-last|1", "block"), ("gromov-all", "gromov-all|1", "block"),
                            ("shortgpt-bi", "shortgpt-bi", "block"), ("llm-drop", "llm-drop", "unit")):
        num, d = _metric(sim, key, docs, den["windows" if rule == "gromov-last" else "tokens"])
        dn, dd = dmg_doc[item]
        rho, lo, hi = document_spearman_ci((num, d), (dn, dd), spec.n_boot, seed=stable_seed(spec.seed, label, rule))
        rows.append(dict(model=label, rule=rule, items="layers" if item == "block" else "sublayers",
                         n_items=num.shape[1], spearman=rho, ci_low=lo, ci_high=hi))
    return rows


def _judgment(table: pd.DataFrame) -> pd.DataFrame:
    """Per network, n and rule: the loss increase of its choice, against the random choices of n layers (median,
    the fraction of them that did better) and the oracles."""
    rows = []
    pr = table[table["mode"] == "prune"]
    for (label, n), t in pr.groupby(["model", "k"], sort=False):
        rand = t[t["note"].str.contains("random:")]["delta_loss"].to_numpy()
        oracle = {w: t[t["note"].str.contains(w + ":")]["delta_loss"] for w in ("oracle-layers", "oracle-sublayers")}
        for rule in RULES:
            r = t[t["note"].str.contains(rule + ":", regex=False)]
            if r.empty:
                continue
            r = r.iloc[0]
            rows.append(dict(model=label, n=int(n), rule=rule, delta_loss=r["delta_loss"], ci_low=r["delta_ci_low"],
                             ci_high=r["delta_ci_high"], random_median=float(np.median(rand)) if len(rand) else None,
                             random_better=float((rand < r["delta_loss"]).mean()) if len(rand) else None,
                             n_random=len(rand), oracle_layers=float(oracle["oracle-layers"].iloc[0])
                             if len(oracle["oracle-layers"]) else None, oracle_sublayers=float(
                                 oracle["oracle-sublayers"].iloc[0]) if len(oracle["oracle-sublayers"]) else None,
                             pruned=r["deleted"]))
    return pd.DataFrame(rows)


def _check_ns(view: ResidualView, ns, label: str) -> list[int]:
    B = len(view.blocks)
    if ns is None:
        return [n for n in DEFAULT_NS if n <= B - 2] or [1]
    bad = [n for n in ns if not 1 <= n <= B - 2]
    if bad:
        raise UsageError(f"{label} has {B} layers: pruning {', '.join(map(str, bad))} of them leaves fewer than two",
                         f"use --k within 1:{max(1, B - 2)}")
    return sorted(set(ns))


def _one(s: Subject, data: TextData, spec: RunSpec, options: PruneTextOptions, store) -> tuple[list, dict, dict, list]:
    view = anatomy(s.model, (data.seq_len,))
    if not is_placed(s.model):
        s.model.to(spec.torch_device)
    spec = text_spec(spec, data, s.model)
    ns = _check_ns(view, options.ns, s.label)
    docs = data.docs.numpy()
    key, settings = run_key(s, data, spec, dict(mode=LesionMode.PRUNE.value, ns=ns, samples=options.samples))
    slot = Slot(store, s.label, key, settings, "single deletions")
    sim = dist.broadcast(similarity_sums(view, data, spec, ns))
    configs = _singles(view, spec, s.label)
    sums, n1 = stored_sweep(view, data, configs, spec, slot)
    sums = dist.broadcast(sums)
    W, T = len(data), data.seq_len
    values = {k: v.sum(0) / (W if k.startswith("gromov-last") else W * T) for k, v in sim.items()}
    dmg_doc = {b: _damage(view, sums, docs, b == "block") for b in ("block", "unit")}
    damage = {b: d[0].sum(0) / d[1].sum(0) for b, d in dmg_doc.items()}
    prune = _prune_configs(view, values, damage, ns, options.samples, spec.seed)
    more, n2 = stored_sweep(view, data, [LesionConfig("baseline")] + prune, spec, slot._replace(what="pruning"))
    sums.update(more)
    tokens = _per_doc(np.stack([np.ones(W), np.full(W, T)], 1), docs)
    den = dict(windows=tokens[:, 0], tokens=tokens[:, 1])
    tables = [_correlations(s.label, sim, dmg_doc, docs, den, spec), _similarity(s.label, view, values, damage)] \
        if dist.is_main() else [[], []]
    return list({c.key(): c for c in configs + prune}.values()), sums, dict(units=view.table(), ns=ns, reused=n1 + n2), tables


def run_text(subjects: Sequence[Subject], data: TextData, spec: RunSpec = RunSpec(),
             options: PruneTextOptions = PruneTextOptions(), store=None) -> StudyResult:
    """Pruning rules on language models, judged against single deletions, random choices and the oracle (see the
    module docstring). The table holds every configuration run (baseline, single layers and sublayers, each
    rule's, the oracles' and the random choices); ``detail.tables`` the correlations and the pruning judgment."""
    common.check_labels(subjects)
    rows, units, all_sums, corr, sim, reused = [], {}, {}, [], [], {}
    docs = data.docs.numpy()
    for s in subjects:
        configs, sums, info, (c, v) = _one(s, data, spec, options, store)
        units[s.label] = info["units"]
        all_sums[s.label] = sums
        reused[s.label] = info["reused"]
        corr += c
        sim += v
        if dist.is_main():
            rows += rows_for(configs, sums, docs, dict(label=s.label, seed=spec.seed, n_boot=spec.n_boot, run=""))
    table = typed(pd.DataFrame(rows, columns=COLUMNS))
    judgment = _judgment(table) if len(table) else pd.DataFrame()
    correlations = pd.DataFrame(corr)
    from .lm_findings import findings, pruning_findings, summarize
    prov = dict(models=[s.describe() for s in subjects], data=data.describe(), run=spec.describe())
    return StudyResult("lesion", table, summary=summarize(table, units),
                       findings=findings(table, units) + pruning_findings(correlations, judgment), provenance=prov,
                       settings=dict(mode="prune-by-similarity", ns=info["ns"] if subjects else [],
                                     samples=options.samples, rules=list(RULES), text=True),
                       units=units, detail=TextDetail(all_sums, docs, reused, dict(correlations=correlations,
                                                                              pruning=judgment,
                                                                              similarity=pd.DataFrame(sim))))

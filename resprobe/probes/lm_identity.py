"""Closeness to the identity on language models, and the logit lens (issue 30, first part).

One pass over the token windows; per batch the residual stream before every unit is computed once.

- **Per unit and token** (every unit of a decoder-only transformer has the identity shortcut and no
  post-operation, so its branch's output is F(x) = y − x exactly): ``branch_ratio`` ‖F(x)‖/‖x‖ (Jastrzebski et
  al.), ``cos_in_out`` cos(x, x + F(x)), ``angular_distance`` (1/π)·arccos of that cosine. Each is a mean over
  tokens with a 95% CI that resamples documents; ``positions`` holds the mean per token position over all windows
  (the first tokens behave differently: the figures show it).
- **Logit lens**: the residual stream before each layer (and after the last, which is the model's own output)
  decoded with the model's own final norm and unembedding (its head); per layer the next-token loss of that
  decoding, KL(final ‖ layer) and the top-1 agreement with the final prediction, each with a CI over documents,
  and per position. The streams are decoded one at a time: memory holds one batch of logits, never layers ×
  tokens × vocabulary.

Verdict: closeness to identity, the image study's criterion (the median unit's ‖F(x)‖/‖x‖ below
:data:`~resprobe.probes.identity_verdicts.NEAR_IDENTITY_MARGIN`), gated on a competent model
(:mod:`resprobe.probes.lm_common`). A plain twin has no shortcut, so F = y − x does not hold: its units are
left out (said in the findings), and the logit lens is measured for residual models only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from .. import distributed as dist
from ..anatomy import AnatomyError, ResidualView, anatomy, preserved_state
from ..engine import PerImageStore, RunSpec, check_finite
from ..io.text import TextData
from ..metrics.lm import document_ratio_ci, per_document, reference, token_stats
from ..metrics.stats import stable_seed
from ..models.lm import is_placed
from ..progress import progress
from ..study import StudyResult, Subject
from . import common
from .identity_verdicts import near_identity_verdicts
from .lm_common import text_roles
from .lm_lesion import text_spec, windows_in_batches

__all__ = ["COLUMNS", "LENS_COLUMNS", "LensDetail", "measure", "run_text", "UNIT_METRICS"]

COLUMNS = ["model", "unit", "index", "part", "metric", "value", "ci_low", "ci_high", "n_windows", "n_tokens",
           "n_documents"]
LENS_COLUMNS = ["model", "layer", "stream", "loss", "loss_ci_low", "loss_ci_high", "kl", "kl_ci_low", "kl_ci_high",
                "agreement", "agree_ci_low", "agree_ci_high"]
UNIT_METRICS = ("branch_ratio", "cos_in_out", "angular_distance")


@dataclass(frozen=True)
class LensDetail:
    """The logit lens per layer (``lens``, ``LENS_COLUMNS``) and every measure's mean per token position
    (``positions``: model, kind ``unit``/``lens``, name, metric, position, value)."""

    lens: pd.DataFrame
    positions: pd.DataFrame


def _streams(view: ResidualView) -> list[tuple[str, int]]:
    """``(name, index into the unit inputs)`` of the stream before each layer and after the last."""
    return [(f"before {b.name}", b.units[0]) for b in view.blocks] + [("output", len(view))]


def _unit_stats(x: torch.Tensor, y: torch.Tensor) -> dict:
    x, y = x.double(), y.double()
    f = y - x
    ratio = torch.linalg.vector_norm(f, dim=-1) / torch.linalg.vector_norm(x, dim=-1).clamp_min(1e-30)
    cos = torch.nn.functional.cosine_similarity(x, y, dim=-1).clamp(-1, 1)
    return {"branch_ratio": ratio, "cos_in_out": cos, "angular_distance": torch.arccos(cos) / np.pi}


def measure(view: ResidualView, data: TextData, spec: RunSpec) -> tuple[dict, dict]:
    """Per window: sums over tokens ``"unit|i|metric"`` and ``"lens|j|what"`` (loss, agree, kl); per position:
    the same summed over windows (this process's windows)."""
    streams = _streams(view)
    store, pos = PerImageStore(len(data)), {}
    n_batches = len(dist.shard(-(-len(data) // spec.batch_size)))
    with preserved_state(view.model), torch.no_grad(), spec.autocast(), \
            progress(n_batches, "identity and logit lens", enabled=spec.progress) as bar:
        view.model.eval()
        for x, y, idx in windows_in_batches(data, spec):
            rows = store.mark(idx)
            hs = view.unit_inputs(x)
            final = view.head(hs[-1])
            check_finite(final, "the model's logits", spec, lambda: common.locate_nonfinite(view, x))
            ref = reference(final)
            del final
            per_token = {}
            for i in range(len(view)):
                for m, v in _unit_stats(hs[i], hs[i + 1]).items():
                    per_token[f"unit|{i}|{m}"] = v
            for j, (_, k) in enumerate(streams):   # one decoded stream at a time
                nll, agree, kl = token_stats(view.head(hs[k]), y, ref)
                per_token.update({f"lens|{j}|loss": nll, f"lens|{j}|agree": agree, f"lens|{j}|kl": kl})
            for key, v in per_token.items():
                v = v.double()
                store.put(key, rows, v.sum(1))
                pos[key] = pos.get(key, 0) + v.sum(0).cpu().numpy()
            bar.update(1)
            del hs, ref
    return store.gather(), dist.reduce_sum(pos)


def _ci_row(num: np.ndarray, docs: np.ndarray, tokens: np.ndarray, n_boot: int, seed: int) -> tuple:
    d = per_document(np.stack([num, tokens], 1), docs)[0]
    return document_ratio_ci(d[:, 0], d[:, 1], n_boot, seed=seed)


def _tables(label: str, view: ResidualView, data: TextData, got: dict, pos: dict, spec: RunSpec):
    docs, W, T = data.docs.numpy(), len(data), data.seq_len
    tokens = np.full(W, float(T))
    base = dict(n_windows=W, n_tokens=W * T, n_documents=data.n_documents)
    rows = []
    for i, u in enumerate(view):
        for m in UNIT_METRICS:
            v, lo, hi = _ci_row(got[f"unit|{i}|{m}"], docs, tokens, spec.n_boot, stable_seed(spec.seed, label, i, m))
            rows.append(dict(model=label, unit=u.name, index=i, part=u.part, metric=m, value=v, ci_low=lo, ci_high=hi,
                             **base))
    lens = []
    for j, (name, _) in enumerate(_streams(view)):
        r = dict(model=label, layer=j, stream=name)
        for what, col in (("loss", "loss"), ("kl", "kl"), ("agree", "agreement")):
            v, lo, hi = _ci_row(got[f"lens|{j}|{what}"], docs, tokens, spec.n_boot,
                                stable_seed(spec.seed, label, "lens", j, what))
            pre = "agree" if col == "agreement" else col
            r.update({col: v, f"{pre}_ci_low": lo, f"{pre}_ci_high": hi})
        lens.append(r)
    positions = [dict(model=label, kind=key.split("|")[0], name=view[int(key.split("|")[1])].name
                      if key.startswith("unit") else _streams(view)[int(key.split("|")[1])][0],
                      metric=key.split("|")[2], position=t, value=float(s[t] / W))
                 for key, s in pos.items() for t in range(T)]
    return rows, lens, positions


def _near_table(table: pd.DataFrame) -> pd.DataFrame:
    """The per-unit ‖F‖/‖x‖ rows in the columns of the image verdict (``residual_ratio``: S(x) = x here)."""
    g = table[table["metric"] == "branch_ratio"]
    return g.assign(metric="residual_ratio", downsample=False, n_images=g["n_windows"])


def run_text(subjects: Sequence[Subject], data: TextData, spec: RunSpec = RunSpec()) -> StudyResult:
    """Identity measures per unit and the logit lens per layer for every language model (see the module
    docstring); the long table holds the per-unit measures (``COLUMNS``), the detail the lens and the positions."""
    common.check_labels(subjects)
    rows, lens, positions, units, views, skipped = [], [], [], {}, {}, []
    for s in subjects:
        view = anatomy(s.model, (data.seq_len,))
        views[s.label] = view
        if not any(u.residual for u in view):
            skipped.append(s.label)
            units[s.label] = view.table()
            continue
        bad = [u.name for u in view if u.shortcut_kind != "identity" or not u.residual]
        if bad:
            raise AnatomyError(f"{s.label}: units {', '.join(bad[:3])} have no identity shortcut: F(x) = y − x does "
                               "not hold for them")
        sp = text_spec(spec, data, s.model)
        if not is_placed(s.model):
            s.model.to(sp.torch_device)
        got, pos = measure(view, data, sp)
        units[s.label] = view.table()
        if dist.is_main():
            r, l_, p = _tables(s.label, view, data, got, pos, sp)
            rows, lens, positions = rows + r, lens + l_, positions + p
    roles = text_roles(subjects, views, data, spec)
    table = pd.DataFrame(rows, columns=COLUMNS)
    prov = dict(models=[s.describe() for s in subjects], data=data.describe(), run=spec.describe())
    from .lm_findings import identity_findings
    lens_df = pd.DataFrame(lens, columns=LENS_COLUMNS)
    found = identity_findings(table, lens_df) + [
        f"{lab}: a plain network (no shortcuts): F(x) = y − x does not hold, so its units have no identity measures "
        "and no logit lens here" for lab in skipped]
    return StudyResult("identity", table, findings=found, provenance=prov, roles=roles,
                       verdicts=near_identity_verdicts(_near_table(table), roles, text=True),
                       settings=dict(text=True, metrics=list(UNIT_METRICS), lens=True), units=units,
                       detail=LensDetail(lens_df, pd.DataFrame(positions)))

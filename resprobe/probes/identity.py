"""How close is each residual unit to the identity? (He et al. 2016 Fig. 7; Jastrzebski et al. 2018;
Men et al. 2024)

One pass over the data walks every unit in decomposed form — x, S(x), F(x), y = post(S(x) + F(x)) —
(:meth:`ResidualView.walk`) and streams, per unit, over each image's whole tensor (all tokens of a
transformer's token tensor together):

- ``residual_ratio``  mean over images of ‖F(x)‖/‖S(x)‖ (the branch against the signal it is added to);
- ``branch_ratio``    mean over images of ‖F(x)‖/‖x‖ (Jastrzebski et al.'s measure; it differs from
                      ``residual_ratio`` where the shortcut is a projection or zero-pad);
- ``relative_change`` mean over images of ‖y − S(x)‖/‖S(x)‖ (includes the post-operation);
- ``cosine``          mean over images of cos(S(x), y);
- ``block_influence`` 1 − mean over images of cos(x, y) (ShortGPT's block influence, where x and y have
                      the same shape);
- ``cka``             linear CKA between unit input and output across images (S(x) vs y when the unit
                      changes shape): the unbiased minibatch estimator (Nguyen et al. 2021) on a seeded
                      random subset of images (default 2,048) in seeded random minibatches, with a
                      bootstrap CI over minibatches. The data are read in a seeded random order for this:
                      image folders are sorted by class, and minibatches of consecutive images would
                      measure within-class similarity instead;
- ``grad_cosine``     (optional, one backward pass) mean over images of cos(F(x), ∂L/∂x), L = cross-entropy;
- ``response_std``    per 3×3 convolution and per linear layer inside a unit: std of its output (after the
                      BatchNorm that follows it, if any; before addition or nonlinearity) over all elements
                      of all images (He et al. Fig. 7), with a bootstrap CI over images.

For a plain unit (no shortcut) S(x) is taken as x when it keeps the shape (``residual_ratio`` is
undefined there). 95% CIs: seeded percentile bootstrap over images, one set of resampled images shared by
every metric, unit and layer of a network (so CIs of two units are of the same resamples). Memory follows the batch size; only per-image
scalars are kept.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch

from .. import distributed as dist
from ..anatomy import ResidualView, anatomy, frozen_eval
from ..engine import PerImageStore, RunSpec, batches
from .. import checks
from ..errors import UsageError
from ..io.data import Dataset
from ..metrics.stats import (bootstrap_stats, means_stat, percentile_ci, pooled_std_stat, resample_counts,
                             stable_seed)
from ..study import StudyResult, Subject
from . import common
from .identity_verdicts import (REFINEMENT_RHO, RESPONSE_RATIO, near_identity_verdicts, refinement_verdicts,
                                response_std_verdicts)
from .identity_findings import NEAR_IDENTITY, effective_depth, findings, overview, stage_summary
from .identity_measure import (Acc, ResponseStd, Table, batch, cka_groups, cka_order, derive_metrics, response_layers,
                               unit_norms)

__all__ = ["IdentityOptions", "COLUMNS", "PER_IMAGE_METRICS", "METRIC_GROUPS", "response_layers", "run", "profile",
           "effective_depth", "stage_summary", "response_std_verdicts", "refinement_verdicts",
           "near_identity_verdicts", "findings", "NEAR_IDENTITY", "CKA_IMAGES", "cka_order", "RESPONSE_RATIO",
           "REFINEMENT_RHO"]

COLUMNS = ["model", "block", "unit", "stage", "index_in_stage", "downsample", "metric", "value", "ci_low", "ci_high",
           "n_images"]
PER_IMAGE_METRICS = ("residual_ratio", "branch_ratio", "relative_change", "cosine", "block_influence", "grad_cosine")
METRIC_GROUPS = ("norms", "cka", "response_std")  # norms: the per-image ratios and cosines
# Effective depth (Jastrzebski et al. 2018 call blocks with small ‖F‖/‖h‖ "iterative refinement"): a unit counts
# as near identity when its whole 95% CI of ‖F‖/‖S‖ lies below 0.3, as active when above, undecided otherwise.
CKA_IMAGES = 2048
BOOTSTRAP = ("percentile, 95%: per-image metrics and response std from one set of resampled images per network "
             "(seed: stable_seed(seed, network, 'images')), shared by every unit, metric and layer; CKA over its "
             "minibatch groups (seed per unit)")


@dataclass(frozen=True)
class IdentityOptions:
    """``metrics``: groups to compute (fewer groups, less time); ``grad``: add grad_cosine;
    ``cka_minibatch``: images per CKA minibatch; ``cka_images``: images in the CKA subset (None: all);
    ``threshold``: the near-identity threshold of ``residual_ratio``; ``lesion_check``: also the error with
    every near-identity unit deleted together."""

    metrics: tuple = METRIC_GROUPS
    grad: bool = False
    cka_minibatch: int = 32
    cka_images: Optional[int] = CKA_IMAGES
    threshold: float = NEAR_IDENTITY
    lesion_check: bool = False

    def __post_init__(self):
        checks.fields(self)
        want = set(self.metrics)
        if want - set(METRIC_GROUPS) or not (want or self.grad):
            raise UsageError(f"metrics must be a non-empty subset of {', '.join(METRIC_GROUPS)}; got "
                             f"{', '.join(sorted(self.metrics)) or 'nothing'}")
        if self.cka_minibatch < 4:
            raise UsageError(f"--cka-minibatch must be at least 4 (the unbiased HSIC estimator), got {self.cka_minibatch}")
        if self.cka_images is not None and self.cka_images < self.cka_minibatch:
            raise UsageError(f"--cka-images must be at least one minibatch ({self.cka_minibatch}), got {self.cka_images}")
        # a unit whose branch is as large as its shortcut is not near the identity, whatever is asked
        checks.number("--threshold", self.threshold, 0, 1, lo_open=True)

    def describe(self) -> dict:
        return dict(metrics=list(self.metrics), grad=self.grad, cka_minibatch=self.cka_minibatch,
                    cka_images="all" if self.cka_images is None else self.cka_images, threshold=self.threshold,
                    lesion_check=self.lesion_check)


def _cka_value(t: np.ndarray) -> float:
    """CKA from per-minibatch HSIC terms, rows (group, HSIC(K, L), HSIC(K, K), HSIC(L, L), images)."""
    kl, kk, ll = t[:, 1].sum(), t[:, 2].sum(), t[:, 3].sum()
    return float(kl / np.sqrt(kk * ll)) if kk > 0 and ll > 0 else float("nan")


def profile(subject: Subject, data: Dataset, spec: RunSpec, options: IdentityOptions = IdentityOptions()):
    """Per-unit identity metrics and per-layer response std of one network (the long table), and the
    per-image response sums (for paired comparisons)."""
    model, label = subject.model, subject.label
    want = set(options.metrics)
    view = anatomy(model, data.input_shape)
    model.to(spec.torch_device)
    n = len(view)
    m = options.cka_minibatch
    cka_on = "cka" in want
    if cka_on and spec.batch_size % m:  # CKA minibatches never straddle batches; the values do not depend on it
        spec = spec.replace(batch_size=max(m, spec.batch_size - spec.batch_size % m))
    chosen = set(cka_groups(len(data), m, options.cka_images, spec.seed).tolist()) if cka_on else set()
    order = cka_order(len(data), spec.seed) if cka_on else None
    store = PerImageStore(len(data))
    layers = response_layers(model, view) if "response_std" in want else []
    table = Table(n, len(layers))
    acc = Acc(store=store, table=table, ckas=[[] for _ in range(n)], minibatch=m, chosen=chosen, want=want,
               grad=options.grad, spec=spec,
               position=np.argsort(order.numpy()) if order is not None else np.arange(len(data)))
    if chosen:  # Gram slots: the stem's output, each unit's output, and S(x) where a unit changes the shape
        slots = 1 + n + sum(1 for u in view if u.parts.shortcut is not None and u.downsample)
        acc.gram_buf = torch.empty((slots, spec.batch_size // m, m, m), device=spec.torch_device)
    with frozen_eval(model), ResponseStd(model, layers, table) as rs, spec.autocast():
        acc.rs = rs if rs.layers else None
        for x, y, idx in batches(data, spec, subject.normalize, f"identity {label}", order=order):
            rows = store.mark(idx)
            table.begin(len(rows))
            batch(view, x, y, rows, acc)
            store.put(("sums",), rows, table.t)
            table.t = table.np = None
    gathered = store.gather(lambda k: "|".join(map(str, k)))
    cka_terms = dist.gather_lists({i: acc.ckas[i] for i in range(n)}) if cka_on else None
    # what each unit is (residual, identity shortcut, same shape, S(x) is x), as seen by whichever rank ran a batch
    kinds = dist.gather_lists({i: [acc.kinds[i]] if i in acc.kinds else [] for i in range(n)})
    if gathered is None:
        return None, None, view
    sums = gathered.pop("sums", None)
    wrong = gathered.pop("wrong", None)
    if wrong is not None and len(wrong) == len(data) and not common.known_competence(subject, data):
        common.record_competence(subject, data, int(wrong.sum()), len(wrong))
    if sums is not None and "norms" in want:  # the norm metrics of each unit, from the gathered sums
        for i in range(n):
            if kinds[i]:
                gathered.update({f"{metric}|{i}": v
                                 for metric, v in derive_metrics(unit_norms(sums, table, i, kinds[i][0]),
                                                                  *kinds[i][0][:3]).items()})
    resp = None
    if layers and sums is not None and len(sums):  # per layer (n, 2): Σr, Σr² per image
        cols = [table.layer(j) for j in range(len(layers))]
        s1, s2 = sums[:, cols], sums[:, [c + 1 for c in cols]]
        per = [rs.per_image[meas] for _, meas in layers]
        resp = dict(s1=s1, s2=s2, per_image=per, layers=[meas for _, meas in layers])
    keys = [f"{metric}|{u.index}" for u in view for metric in PER_IMAGE_METRICS
            if gathered.get(f"{metric}|{u.index}") is not None and len(gathered[f"{metric}|{u.index}"])]
    cis, resp_ci = _image_cis(gathered, keys, resp, spec, label)
    rows = _rows(view, label, gathered, cis, cka_terms, spec)
    if resp is not None:
        rows += _response_rows(view, label, layers, resp, resp_ci)
    return pd.DataFrame(rows, columns=COLUMNS), resp, view


def _base(view: ResidualView, label: str, u) -> dict:
    return dict(model=label, block=u.block, unit=u.name, stage=u.stage, index_in_stage=u.index_in_stage,
                downsample=u.downsample)


def _image_seed(spec: RunSpec, label: str) -> int:
    """Seed of the image resamples behind every per-image CI of one network (metrics and response std)."""
    return stable_seed(spec.seed, label, "images")


def _image_cis(gathered: dict, keys: list, resp: Optional[dict], spec: RunSpec, label: str):
    """Bootstrap CIs over images, all from one set of image resamples: of the means of the per-image vectors
    ``gathered[k]`` (one matrix product per chunk of resamples for all of them) and of the pooled response
    std of every measured layer. Returns ({key: (low, high)}, (low, high) arrays over layers or None)."""
    by_len: dict[int, list] = {}
    for k in keys:
        by_len.setdefault(len(gathered[k]), []).append(k)
    n_resp = len(resp["s1"]) if resp is not None and len(resp["s1"]) else None
    stats_of: dict[int, list] = {}
    for n, ks in by_len.items():
        stats_of.setdefault(n, []).append(("means", ks, means_stat(np.stack([gathered[k] for k in ks], 1))))
    if n_resp is not None:
        stats_of.setdefault(n_resp, []).append(("std", None, pooled_std_stat(resp["s1"], resp["s2"],
                                                                             resp["per_image"])))
    cis, resp_ci = {}, None
    for n, todo in stats_of.items():
        boots = bootstrap_stats(n, [t[2] for t in todo], spec.n_boot, _image_seed(spec, label))
        for (kind, ks, _), b in zip(todo, boots):
            lo, hi = percentile_ci(b)
            if kind == "means":
                cis.update({k: (float(a), float(c)) for k, a, c in zip(ks, lo, hi)})
            else:
                resp_ci = (lo, hi)
    return cis, resp_ci


def _cka_ci(t: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    """Percentile bootstrap CI of CKA over its minibatch groups (rows of ``t``), resamples vectorised."""
    if len(t) < 2:
        return float("nan"), float("nan")
    boots = np.empty(n_boot)
    s = 0
    for _, counts in resample_counts(len(t), n_boot, seed):
        kl, kk, ll = (counts @ t[:, 1:4]).T
        with np.errstate(invalid="ignore", divide="ignore"):
            boots[s:s + len(counts)] = np.where((kk > 0) & (ll > 0), kl / np.sqrt(np.abs(kk * ll)), np.nan)
        s += len(counts)
    if not np.isfinite(boots).any():
        return float("nan"), float("nan")
    lo, hi = np.nanquantile(boots, [0.025, 0.975])
    return float(lo), float(hi)


def _rows(view, label, gathered, cis: dict, cka_terms, spec: RunSpec) -> list[dict]:
    rows = []
    for u in view:
        for metric in PER_IMAGE_METRICS:
            key = f"{metric}|{u.index}"
            if key not in cis:
                continue
            v = gathered[key]
            lo, hi = cis[key]
            rows.append(dict(_base(view, label, u), metric=metric, value=float(v.mean()), ci_low=lo, ci_high=hi,
                             n_images=len(v)))
        if cka_terms is not None:
            t = np.array(sorted(cka_terms[u.index]), dtype=float).reshape(-1, 5)
            value = _cka_value(t) if len(t) else float("nan")
            lo, hi = _cka_ci(t, spec.n_boot, stable_seed(spec.seed, label, u.name, "cka"))
            rows.append(dict(_base(view, label, u), metric="cka", value=value, ci_low=lo, ci_high=hi,
                             n_images=int(t[:, 4].sum()) if len(t) else 0))
    return rows


def _response_rows(view, label, layers, resp: dict, ci) -> list[dict]:
    from ..metrics.stats import pooled_std
    s1, s2, per = resp["s1"], resp["s2"], resp["per_image"]
    lo, hi = ci
    std = pooled_std(s1.sum(0), s2.sum(0), len(s1) * np.asarray(per, float))
    owner = {}
    for u in view:
        for mod in (u.parts.modules or (u.module,)):
            for name, sub in view.model.named_modules():
                if sub is mod:
                    owner.setdefault(name, u)
    rows = []
    for j, (layer, measured) in enumerate(layers):
        u = next((owner[p] for p in sorted(owner, key=len, reverse=True) if layer == p or layer.startswith(p + ".")),
                 None)
        rows.append(dict(model=label, block=u.block if u else "", unit=measured, stage=u.stage if u else -1,
                         index_in_stage=u.index_in_stage if u else -1, downsample=u.downsample if u else False,
                         metric="response_std", value=float(std[j]), ci_low=float(lo[j]), ci_high=float(hi[j]),
                         n_images=len(s1)))
    return rows


def run(subjects: Sequence[Subject], data: Dataset, spec: RunSpec = RunSpec(),
        options: IdentityOptions = IdentityOptions(), lesions: Optional[StudyResult] = None) -> StudyResult:
    """Identity metrics of every subject (long table ``COLUMNS``), effective depth, stage summaries,
    findings and the He Fig. 7 verdict (with a plain twin); given the lesion study's result of the same
    networks, also Jastrzebski et al.'s refinement verdict (are near-identity units the cheap ones to delete?).
    On token windows (``data`` a :class:`~resprobe.io.text.TextData`): :func:`resprobe.probes.lm_identity.run_text`
    (per-unit measures and the logit lens; no verdict yet)."""
    from ..io.text import TextData
    if isinstance(data, TextData):
        from .lm_identity import run_text
        return run_text(subjects, data, spec)
    common.check_labels(subjects)
    frames, responses, views = [], {}, {}
    for s in subjects:
        df, resp, view = profile(s, data, spec, options)
        frames.append(df)
        responses[s.label] = resp
        views[s.label] = view
    if not dist.is_main():
        return StudyResult("identity", pd.DataFrame(columns=COLUMNS))
    table = pd.concat(frames, ignore_index=True)
    roles = common.roles(subjects, views, data, spec)
    lesion = _lesion_check(subjects, data, spec, table, options.threshold) if options.lesion_check else {}
    eff = effective_depth(table, options.threshold)
    verdicts = (near_identity_verdicts(table, roles)
                + response_std_verdicts(table, roles, responses, spec.n_boot, spec.seed))
    if lesions is not None:
        verdicts += refinement_verdicts(table, lesions.table, roles, spec.n_boot, spec.seed)
    return StudyResult("identity", table, summary=dict(effective_depth=eff, lesion_check=lesion,
                                                       overview=overview(table),
                                                       stage_summary=stage_summary(table).to_dict("records")),
                       verdicts=verdicts, findings=findings(table, options.threshold, lesion, roles),
                       provenance=dict(common.provenance(subjects, data, spec), sums="torch operations",
                                       bootstrap=BOOTSTRAP),
                       settings=options.describe(),
                       roles=roles, units={lab: v.table() for lab, v in views.items()})


def _lesion_check(subjects, data, spec, table, threshold) -> dict:
    from .lesion import LesionConfig, sweep
    out = {}
    eff = effective_depth(table, threshold)
    for s in subjects:
        near = eff.get(s.label, {}).get("near_identity_units", [])
        if not near:
            continue
        view = anatomy(s.model, data.input_shape)
        idx = tuple(sorted(view.indices(near)))
        configs = [LesionConfig("baseline"), LesionConfig("set", idx, k=len(idx), label="+".join(near))]
        counts = sweep(view, data, configs, spec, s.normalize, f"lesion check {s.label}")
        if counts[0] is None:
            continue
        from ..metrics.stats import bootstrap_proportion_ci
        lo, hi = bootstrap_proportion_ci(counts[1].wrong, counts[1].n, spec.n_boot, seed=stable_seed(spec.seed, s.label))
        out[s.label] = dict(n_deleted=len(idx), baseline_error=counts[0].wrong / counts[0].n,
                            error=counts[1].wrong / counts[1].n, ci_low=lo, ci_high=hi)
    return out


# --- summaries, findings, verdicts ----------------------------------------------------------------------



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

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import distributed as dist
from .. import fmt
from ..anatomy import ResidualView, anatomy, frozen_eval
from ..engine import PerImageStore, RunSpec, batches, check_finite
from .. import checks
from ..errors import UsageError
from ..io.data import Dataset
from ..metrics.similarity import cosine, hsic_unbiased, minibatch_grams, per_image_norm
from ..metrics.stats import (bootstrap_stats, means_stat, percentile_ci, pooled_std_stat, resample_counts,
                             stable_seed)
from ..study import StudyResult, Subject
from . import common
from .identity_verdicts import (REFINEMENT_RHO, RESPONSE_RATIO, near_identity_verdicts, refinement_verdicts,
                                response_std_verdicts)

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
NEAR_IDENTITY = 0.3
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


def response_layers(model: nn.Module, view: Optional[ResidualView] = None) -> list[tuple[str, str]]:
    """(layer, measured module) for every 3×3 convolution of the model and every linear layer inside a
    unit: the measured module is the BatchNorm that directly follows the layer in its parent, else the
    layer itself."""
    mods = list(model.named_modules())
    blocks = tuple(b.name + "." for b in view.blocks) if view is not None else ()
    out = []
    for p, (name, m) in enumerate(mods):
        conv = isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (3, 3)
        lin = isinstance(m, nn.Linear) and blocks and name.startswith(blocks)
        if not (conv or lin):
            continue
        parent = name.rpartition(".")[0]
        nxt = mods[p + 1] if p + 1 < len(mods) else None
        width = m.out_channels if conv else m.out_features
        if (nxt is not None and isinstance(nxt[1], nn.modules.batchnorm._BatchNorm)
                and nxt[0].rpartition(".")[0] == parent and nxt[1].num_features == width):
            out.append((name, nxt[0]))
        else:
            out.append((name, name))
    return out


# columns of a unit in the batch table: Σy², Σ(y − S(x))², ΣS(x)², ΣF, ΣF², cos(x, y) per image (sums over the
# image's whole tensor); ‖x‖ of a unit is ‖y‖ of the one before it (of the stem's output for the first)
_UNIT_COLUMNS = ("y2", "d2", "s2", "f1", "f2", "cos_xy")


class _Table:
    """The per-image sums of one batch in one float64 table (rows: the batch's images), copied into the store
    once per batch (no tensor per unit kept). Columns: Σx, Σx² of the stem's output,
    then :data:`_UNIT_COLUMNS` per unit, then Σr, Σr² per measured response layer; NaN where nothing was
    written."""

    def __init__(self, n_units: int, n_layers: int):
        self.n_units = n_units
        self.width = 2 + len(_UNIT_COLUMNS) * n_units + 2 * n_layers
        self._full: Optional[torch.Tensor] = None
        self.t: Optional[torch.Tensor] = None  # this batch's rows
        self.np: Optional[np.ndarray] = None  # the same memory, for numpy

    def unit(self, i: int) -> int:
        return 2 + len(_UNIT_COLUMNS) * i

    def x2(self, i: int) -> int:
        """The column of Σx² of unit i's input."""
        return 1 if i == 0 else self.unit(i - 1)

    def layer(self, j: int) -> int:
        return 2 + len(_UNIT_COLUMNS) * self.n_units + 2 * j

    def begin(self, b: int) -> torch.Tensor:
        if self._full is None or len(self._full) < b:
            self._full = torch.empty((b, self.width), dtype=torch.float64)
        self.t = self._full[:b]
        self.t.fill_(float("nan"))
        self.np = self.t.numpy()
        return self.t

    def write(self, col: int, values: torch.Tensor) -> None:
        """Torch operations' per-image values (B,) or (B, k) into columns col…"""
        v = values.detach().to("cpu", torch.float64)
        self.t[:, col:col + (v.shape[1] if v.dim() == 2 else 1)] = v if v.dim() == 2 else v[:, None]


class _ResponseStd:
    """Forward hooks that write per-image sums Σr and Σr² of chosen layers' outputs into the batch table
    (:class:`_Table`, ``self.table``; nothing outside a batch); removed on exit, always."""

    def __init__(self, model: nn.Module, layers: list, table: _Table):
        self.layers = layers  # (layer, measured module), as response_layers gives them
        self.per_image = {measured: 0 for _, measured in self.layers}  # elements per image
        self.table = table
        self._mods = dict(model.named_modules())
        self._handles = []

    def _update(self, j: int, measured: str, out: torch.Tensor) -> None:
        if self.table.t is None:
            return
        flat = out.detach().reshape(out.shape[0], -1)
        self.per_image[measured] = flat.shape[1]
        self.table.write(self.table.layer(j), torch.stack([flat.sum(1).double(),
                                                           torch.linalg.vector_norm(flat, dim=1).double().pow(2)], 1))

    def __enter__(self):
        try:
            for j, (_, measured) in enumerate(self.layers):
                self._handles.append(self._mods[measured].register_forward_hook(
                    lambda mod, args, out, j=j, measured=measured: self._update(j, measured, out)))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return False


def _add_cka_terms(ckas: list, groups: Sequence[int], sizes: Sequence[int], pairs: list) -> None:
    """HSIC terms of one batch's CKA groups for every unit at once, appended to ``ckas[unit index]`` as
    (group, HSIC(K, L), HSIC(K, K), HSIC(L, L), images): ``pairs`` holds (unit index, Grams of its
    input, Grams of its output), lists aligned with ``groups``. One batched estimator call per kind of term;
    HSIC(K, K) once per distinct Gram matrix (a unit's output Grams are the next unit's input Grams)."""
    for z in sorted(set(sizes)):
        sel = [j for j, s in enumerate(sizes) if s == z]
        slot: dict = {}
        uniq = []
        for _, Ks, Ls in pairs:
            for j in sel:
                for g in (Ks[j], Ls[j]):
                    if id(g) not in slot:
                        slot[id(g)] = len(uniq)
                        uniq.append(g)
        G = torch.stack(uniq)
        own = hsic_unbiased(G, G).tolist()
        cross = hsic_unbiased(torch.stack([Ks[j] for _, Ks, _ in pairs for j in sel]),
                              torch.stack([Ls[j] for _, _, Ls in pairs for j in sel])).tolist()
        r = 0
        for i, Ks, Ls in pairs:
            for j in sel:
                ckas[i].append((groups[j], cross[r], own[slot[id(Ks[j])]], own[slot[id(Ls[j])]], z))
                r += 1


def _cka_value(t: np.ndarray) -> float:
    """CKA from per-minibatch HSIC terms, rows (group, HSIC(K, L), HSIC(K, K), HSIC(L, L), images)."""
    kl, kk, ll = t[:, 1].sum(), t[:, 2].sum(), t[:, 3].sum()
    return float(kl / np.sqrt(kk * ll)) if kk > 0 and ll > 0 else float("nan")


def cka_order(n: int, seed: int) -> torch.Tensor:
    """The seeded random order in which the identity pass reads the images when it computes CKA: its
    minibatch g is the images at positions [g·m, (g+1)·m) of this order."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(stable_seed(seed, "cka-order")))


def _cka_groups(n: int, m: int, images: Optional[int], seed: int) -> np.ndarray:
    """Which minibatch groups (positions [g·m, (g+1)·m) of :func:`cka_order`) enter the CKA: a seeded subset."""
    n_groups = -(-n // m)
    if images is None or images >= n:
        return np.arange(n_groups)
    want = -(-images // m)
    rng = np.random.default_rng(stable_seed(seed, "cka-groups"))
    return np.sort(rng.choice(n_groups, size=min(want, n_groups), replace=False))


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
    chosen = set(_cka_groups(len(data), m, options.cka_images, spec.seed).tolist()) if cka_on else set()
    order = cka_order(len(data), spec.seed) if cka_on else None
    store = PerImageStore(len(data))
    layers = response_layers(model, view) if "response_std" in want else []
    table = _Table(n, len(layers))
    acc = _Acc(store=store, table=table, ckas=[[] for _ in range(n)], minibatch=m, chosen=chosen, want=want,
               grad=options.grad, spec=spec,
               position=np.argsort(order.numpy()) if order is not None else np.arange(len(data)))
    if chosen:  # Gram slots: the stem's output, each unit's output, and S(x) where a unit changes the shape
        slots = 1 + n + sum(1 for u in view if u.parts.shortcut is not None and u.downsample)
        acc.gram_buf = torch.empty((slots, spec.batch_size // m, m, m), device=spec.torch_device)
    with frozen_eval(model), _ResponseStd(model, layers, table) as rs, spec.autocast():
        acc.rs = rs if rs.layers else None
        for x, y, idx in batches(data, spec, subject.normalize, f"identity {label}", order=order):
            rows = store.mark(idx)
            table.begin(len(rows))
            _batch(view, x, y, rows, acc)
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
                                 for metric, v in _derive_metrics(_unit_norms(sums, table, i, *kinds[i][0]),
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


@dataclass
class _Acc:
    """What one identity pass accumulates, and how."""

    store: PerImageStore  # per-image values: the batch tables ("sums",) and grad_cosine per unit
    table: _Table  # this batch's per-image sums
    ckas: list  # per unit, its CKA groups' HSIC terms (group, kl, kk, ll, images)
    minibatch: int
    chosen: set
    want: set
    grad: bool
    spec: RunSpec
    position: np.ndarray  # each image's position in the reading order (CKA minibatch g: positions [g·m, (g+1)·m))
    rs: Optional["_ResponseStd"] = None  # the response-std hooks
    buffers: dict = None  # reused scratch tensors, by shape
    # unit index -> (residual, identity shortcut, same shape, S(x) is x: an identity shortcut or a plain unit)
    kinds: dict = field(default_factory=dict)
    # a batch's Gram matrices (slots, groups per batch, m, m), allocated before the pass and reused by every batch
    gram_buf: Optional[torch.Tensor] = None
    gram_next: int = 0

    def gram_slot(self) -> Optional[torch.Tensor]:
        """The next free slot of :attr:`gram_buf` (None when there is none)."""
        if self.gram_buf is None or self.gram_next >= len(self.gram_buf):
            return None
        self.gram_next += 1
        return self.gram_buf[self.gram_next - 1]


def _batch(view, x, y, idx: np.ndarray, acc: _Acc) -> None:
    m, chosen, want, grad, ckas, spec = acc.minibatch, acc.chosen, acc.want, acc.grad, acc.ckas, acc.spec
    put = (lambda metric, i, v: acc.store.put((metric, i), idx, v))
    with torch.set_grad_enabled(grad):
        h = view.stem(x)
        if grad:
            h = h.detach().requires_grad_(True)
        first = int(acc.position[idx[0]])
        # CKA minibatch groups in this batch: positions [g·m, (g+1)·m) of the reading order (a batch holds
        # whole groups)
        groups = sorted({(first + j) // m for j in range(len(idx))} & chosen)
        starts = [g * m - first for g in groups]
        sizes = [min(m, len(idx) - s) for s in starts]
        keep = [k for k, s in enumerate(sizes) if s >= 4]
        groups, starts, sizes = [groups[k] for k in keep], [starts[k] for k in keep], [sizes[k] for k in keep]
        acc.gram_next = 0  # the previous batch's Gram matrices are spent (its HSIC terms are computed)

        def grams(t):
            """Linear Gram matrices of the chosen groups (a list aligned with ``groups``)."""
            out = [None] * len(starts)
            slot = acc.gram_slot()
            full = [j for j, z in enumerate(sizes) if z == m]
            runs = []  # full groups in runs of consecutive positions: each run is a view, no copy
            for j in full:
                if runs and starts[j] == starts[runs[-1][-1]] + m:
                    runs[-1].append(j)
                else:
                    runs.append([j])
            for run in runs:
                a = starts[run[0]]
                into = slot[run[0]:run[0] + len(run)] if slot is not None else None  # a run's j are consecutive
                for j, g in zip(run, _grams(t[a:a + len(run) * m], m, into)):
                    out[j] = g
            for j, z in enumerate(sizes):
                if z != m:
                    out[j] = _grams(t[starts[j]:starts[j] + z], z)[0]
            return out

        inputs, branches, cka_pairs = [], [], []
        g_in = grams(h.detach()) if groups else None
        table = acc.table
        if "norms" in want:  # ‖x‖ of the first unit
            table.write(1, per_image_norm(h.detach()).pow(2))
        for st in view.walk(h):
            i = st.index
            if grad:
                inputs.append(st.x)
                branches.append(st.f.detach())
            if "norms" in want:
                _norm_metrics(st, acc)
            if groups:
                g_out = grams(st.y.detach())
                same = tuple(st.x.shape) == tuple(st.y.shape)
                cka_pairs.append((i, g_in if (same or st.s is None) else grams(st.s.detach()), g_out))
                g_in = g_out
            h = st.y
            del st  # x, S(x), F(x) of this unit freed before the next unit runs (the forward's working set)
        if cka_pairs:
            _add_cka_terms(ckas, groups, sizes, cka_pairs)
        # one check per batch: a non-finite value anywhere reaches the last unit's output
        check_finite(h.detach(), "the last unit's output", spec, lambda: common.locate_nonfinite(view, x))
        logits = view.head(h)
        acc.store.put(("wrong",), idx, logits.detach().argmax(1) != y)  # the network's competence, from this pass
        if grad:
            loss = F.cross_entropy(logits, y, reduction="sum")
            gr = torch.autograd.grad(loss, inputs)
            for i, (f, g) in enumerate(zip(branches, gr)):
                if view[i].residual and f.shape == g.shape:  # undefined where the unit changes shape
                    put("grad_cosine", i, cosine(f, g))


def _grams(t: torch.Tensor, m: int, into: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Gram matrices of consecutive minibatches of ``m`` images of ``t`` (:func:`minibatch_grams`), written into
    ``into`` when given and of their dtype (a float64 network's Gram matrices are not rounded to a float32
    slot)."""
    g = minibatch_grams(t, m)
    if into is not None and into.dtype == g.dtype:
        g = into.copy_(g)
    return g


def _norm_metrics(st, acc: _Acc) -> None:
    """The per-image norms of the unit of step ``st`` into its columns of the batch table (:data:`_UNIT_COLUMNS`),
    as squared norms, from which :func:`_unit_norms` and :func:`_derive_metrics` compute its metrics after the
    pass. S(x) is x for a plain unit that keeps the shape; a unit without S(x) that changes the shape has no
    metrics."""
    i, residual, identity_shortcut = st.index, st.unit.residual, st.s is st.x
    x, y = st.x.detach(), st.y.detach()
    same = tuple(x.shape) == tuple(y.shape)
    s = st.s.detach() if st.s is not None else (x if same else None)
    table = acc.table
    col = table.unit(i)
    if s is not None and i not in acc.kinds:
        acc.kinds[i] = (bool(residual), bool(identity_shortcut), same, bool(identity_shortcut or st.s is None))
    cos = s is not None and same and not identity_shortcut  # cos(x, y) differs from cos(S(x), y)
    # the unit's columns as one (B, 6) block, one copy to the table (one sync on a GPU)
    ny = per_image_norm(y)
    block = torch.full((ny.shape[0], len(_UNIT_COLUMNS)), float("nan"), dtype=torch.float64, device=ny.device)
    block[:, 0] = ny.pow(2)
    if s is not None:
        block[:, 1] = per_image_norm(_difference(y, s, acc)).pow(2)
        if st.s is not None and not identity_shortcut:
            block[:, 2] = per_image_norm(s).pow(2)
        if residual:
            block[:, 4] = per_image_norm(st.f.detach()).pow(2)
        if cos:
            block[:, 5] = cosine(x, y, norm_a=table.t[:, table.x2(i)].sqrt().to(ny.device), norm_b=ny)
    table.write(col, block)


def _unit_norms(sums: np.ndarray, table: _Table, i: int, residual: bool, identity_shortcut: bool, same: bool,
                s_is_x: bool) -> np.ndarray:
    """Per-image ‖x‖, ‖y‖, ‖S(x)‖, ‖y − S(x)‖, ‖F(x)‖, cos(x, y) of unit i (n, 6) from the gathered batch tables."""
    c = table.unit(i)
    nx = np.sqrt(sums[:, table.x2(i)])
    ns = nx if s_is_x else np.sqrt(sums[:, c + 2])
    nf = np.sqrt(sums[:, c + 4]) if residual else np.full(len(sums), np.nan)
    return np.stack([nx, np.sqrt(sums[:, c]), ns, np.sqrt(sums[:, c + 1]), nf, sums[:, c + 5]], 1)


def _derive_metrics(norms: np.ndarray, residual: bool, identity_shortcut: bool, same_shape: bool) -> dict:
    """The per-image metrics of one unit from its norms (n, 6) (:func:`_unit_norms`)."""
    nx, ny, ns, nd, nf, cxy = norms.T
    nsc = np.maximum(ns, 1e-12)
    out = {}
    if residual:
        out["residual_ratio"] = nf / nsc
        out["branch_ratio"] = nf / np.maximum(nx, 1e-12)
    out["relative_change"] = nd / nsc
    # cos(s, y) from the three norms (law of cosines): no extra pass over the activations
    with np.errstate(invalid="ignore"):
        cos = np.clip((ns * ns + ny * ny - nd * nd) / np.maximum(2 * ns * ny, 1e-12), -1, 1)
        out["cosine"] = cos
        if same_shape:
            out["block_influence"] = 1 - (cos if identity_shortcut else np.clip(cxy, -1, 1))
    return out


def _difference(y: torch.Tensor, s: torch.Tensor, acc: Optional[_Acc]) -> torch.Tensor:
    """y − s, written into a scratch tensor reused across units and batches (no allocation per unit)."""
    if acc is None or y.shape != s.shape:
        return y - s
    if acc.buffers is None:
        acc.buffers = {}
    key = (tuple(y.shape), y.dtype, y.device)
    buf = acc.buffers.get(key)
    if buf is None:
        buf = acc.buffers[key] = torch.empty_like(y)
    return torch.sub(y, s, out=buf)


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
    networks, also Jastrzebski et al.'s refinement verdict (are near-identity units the cheap ones to delete?)."""
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

def effective_depth(df: pd.DataFrame, threshold: float = NEAR_IDENTITY) -> dict:
    """Per model: units whose whole 95% CI of ‖F‖/‖S‖ lies above ``threshold`` (active: the effective
    depth), below it (near identity), or across it (undecided)."""
    out = {}
    for model, g in df[df["metric"] == "residual_ratio"].groupby("model", sort=False):
        active = g[g["ci_low"] > threshold]["unit"].tolist()
        near = g[g["ci_high"] < threshold]["unit"].tolist()
        undecided = g[~g["unit"].isin(active + near)]["unit"].tolist()
        out[str(model)] = dict(threshold=threshold, effective_depth=len(active), n_units=len(g), active_units=active,
                               near_identity_units=near, undecided_units=undecided)
    return out


def overview(df: pd.DataFrame) -> list[dict]:
    """Per model and metric: mean, median, min and max over units (layers for response_std)."""
    g = df.groupby(["model", "metric"], sort=False)["value"]
    s = g.agg(["mean", "median", "min", "max", "count"]).reset_index()
    return s.to_dict("records")


def stage_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Mean of each per-unit metric over the units of each stage (and the first block vs the rest)."""
    d = df[df["metric"] != "response_std"]
    g = d.groupby(["model", "stage", "metric"], sort=False)["value"]
    s = g.mean().rename("mean").to_frame()
    s["first_block"] = d[d["index_in_stage"] == 0].groupby(["model", "stage", "metric"], sort=False)["value"].mean()
    s["later_blocks"] = d[d["index_in_stage"] > 0].groupby(["model", "stage", "metric"], sort=False)["value"].mean()
    s["n_units"] = g.size()
    return s.reset_index()


def _runs(units: list[str], stages: dict[str, int], order: list[str]) -> list[list[str]]:
    """Group units into runs that are consecutive in forward order and within one stage."""
    pos = {b: i for i, b in enumerate(order)}
    runs: list[list[str]] = []
    for b in sorted(units, key=pos.get):
        if runs and pos[b] == pos[runs[-1][-1]] + 1 and stages[b] == stages[runs[-1][-1]]:
            runs[-1].append(b)
        else:
            runs.append([b])
    return runs


def _fmt_ci(v: float, lo: float, hi: float, nd: int = 3) -> str:
    return fmt.ci(v, lo, hi, nd)


def findings(df: pd.DataFrame, threshold: float = NEAR_IDENTITY, lesion: Optional[dict] = None,
             roles: Optional[dict] = None) -> list[str]:
    """Plain-language findings, each computed from ``df``; comparisons only where the CIs separate."""
    out = []
    eff = effective_depth(df, threshold)
    for model, e in eff.items():
        g = df[(df["model"] == model) & (df["metric"] == "residual_ratio")]
        stages = dict(zip(g["unit"], g["stage"]))
        order = g["unit"].tolist()
        vals = dict(zip(g["unit"], g["value"]))
        br = df[(df["model"] == model) & (df["metric"] == "branch_ratio")]["value"]
        out.append(f"**{model}**: effective depth {e['effective_depth']} of {e['n_units']} residual units (95% CI of "
                   f"‖F‖/‖S‖ above {threshold}); {len(e['near_identity_units'])} near identity (CI below), "
                   f"{len(e['undecided_units'])} undecided. ‖F‖/‖S‖ over units: median {np.median(list(vals.values())):.3f}, "
                   f"mean {np.mean(list(vals.values())):.3f}, range {min(vals.values()):.3f}–{max(vals.values()):.3f}"
                   + (f"; ‖F‖/‖x‖: median {br.median():.3f}, range {br.min():.3f}–{br.max():.3f}." if len(br) else "."))
        lows = dict(zip(g["unit"], g["ci_low"]))
        above = [u for u, v in vals.items() if lows[u] > 1]
        if above:
            out.append(f"{model}: in {len(above)} units the branch outweighs the shortcut (95% CI of ‖F‖/‖S‖ above "
                       "1): " + ", ".join(f"{u} {vals[u]:.2f}" for u in above) + ".")
        for run_ in _runs(e["near_identity_units"], stages, order):
            name = run_[0] if len(run_) == 1 else f"{run_[0]}–{run_[-1]}"
            out.append(f"{model}: unit{'s' if len(run_) > 1 else ''} {name}: ‖F‖/‖S‖ ≤ "
                       f"{max(vals[b] for b in run_):.3f}, CI below {threshold} — near identity.")
        out += _first_vs_later(df, model)
        gc = df[(df["model"] == model) & (df["metric"] == "grad_cosine")]
        if len(gc):
            out.append(f"{model}: cos(F(x), ∂L/∂x) is negative (95% CI below 0) in {int((gc['ci_high'] < 0).sum())} "
                       f"of {len(gc)} units, positive in {int((gc['ci_low'] > 0).sum())}; median {gc['value'].median():.3f}.")
        if lesion and model in lesion:
            le = lesion[model]
            out.append(f"{model}: deleting the {le['n_deleted']} near-identity units together changes the error from "
                       f"{le['baseline_error']:.4f} to {_fmt_ci(le['error'], le['ci_low'], le['ci_high'], 4)}.")
    rs = df[df["metric"] == "response_std"]
    if rs["model"].nunique() >= 1:
        stats = rs.groupby("model", sort=False)["value"].agg(["median", "mean", "count"])
        out.append("Response std (He et al. Fig. 7), median over layers: "
                   + "; ".join(f"{m} {r['median']:.3f} (mean {r['mean']:.3f}, {int(r['count'])} layers)"
                               for m, r in stats.iterrows()) + ".")
    return out


def _first_vs_later(df: pd.DataFrame, model: str) -> list[str]:
    """Per stage, the first block's ‖F‖/‖x‖ and ‖F‖/‖S‖ against the later blocks' (Jastrzebski: the first
    block of a stage changes the representation most), a ranking stated only where the CIs separate."""
    out = []
    for metric in ("branch_ratio", "residual_ratio"):
        g = df[(df["model"] == model) & (df["metric"] == metric)]
        if g.empty:
            continue
        for stage, s in g.groupby("stage"):
            first, later = s[s["index_in_stage"] == 0], s[s["index_in_stage"] > 0]
            if first.empty or later.empty:
                continue
            f = first.iloc[0]
            lmax, lmin = later["ci_high"].max(), later["ci_low"].min()
            if f["ci_low"] > lmax:
                rel = "larger than every later block's"
            elif f["ci_high"] < lmin:
                rel = "smaller than every later block's"
            else:
                rel = "not distinguishable from the later blocks' (CIs overlap)"
            label = "‖F‖/‖x‖" if metric == "branch_ratio" else "‖F‖/‖S‖"
            out.append(f"{model}, stage {int(stage) + 1}: first block {f['unit']} {label} "
                       f"{_fmt_ci(f['value'], f['ci_low'], f['ci_high'])}, {rel} "
                       f"(later blocks {later['value'].min():.3f}–{later['value'].max():.3f}).")
    return out

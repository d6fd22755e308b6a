"""The identity study's one pass: per-image sums of every unit in one float64 table per batch, response-std
hooks and CKA's HSIC terms (see :mod:`resprobe.probes.identity` for the metrics)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..anatomy import ResidualView
from ..engine import PerImageStore, RunSpec, check_finite
from ..metrics.similarity import cosine, hsic_unbiased, minibatch_grams, per_image_norm
from ..metrics.stats import stable_seed
from . import common

__all__ = ["response_layers", "Table", "ResponseStd", "cka_order", "cka_groups", "Acc", "batch", "unit_norms",
           "derive_metrics"]


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


class Table:
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


class ResponseStd:
    """Forward hooks that write per-image sums Σr and Σr² of chosen layers' outputs into the batch table
    (:class:`Table`, ``self.table``; nothing outside a batch); removed on exit, always."""

    def __init__(self, model: nn.Module, layers: list, table: Table):
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


def cka_order(n: int, seed: int) -> torch.Tensor:
    """The seeded random order in which the identity pass reads the images when it computes CKA: its
    minibatch g is the images at positions [g·m, (g+1)·m) of this order."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(stable_seed(seed, "cka-order")))


def cka_groups(n: int, m: int, images: Optional[int], seed: int) -> np.ndarray:
    """Which minibatch groups (positions [g·m, (g+1)·m) of :func:`cka_order`) enter the CKA: a seeded subset."""
    n_groups = -(-n // m)
    if images is None or images >= n:
        return np.arange(n_groups)
    want = -(-images // m)
    rng = np.random.default_rng(stable_seed(seed, "cka-groups"))
    return np.sort(rng.choice(n_groups, size=min(want, n_groups), replace=False))


@dataclass
class Acc:
    """What one identity pass accumulates, and how."""

    store: PerImageStore  # per-image values: the batch tables ("sums",) and grad_cosine per unit
    table: Table  # this batch's per-image sums
    ckas: list  # per unit, its CKA groups' HSIC terms (group, kl, kk, ll, images)
    minibatch: int
    chosen: set
    want: set
    grad: bool
    spec: RunSpec
    position: np.ndarray  # each image's position in the reading order (CKA minibatch g: positions [g·m, (g+1)·m))
    rs: Optional["ResponseStd"] = None  # the response-std hooks
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


def _cka_layout(acc: Acc, idx: np.ndarray) -> tuple[list, list, list]:
    """The CKA minibatch groups in this batch (positions [g·m, (g+1)·m) of the reading order; a batch holds
    whole groups): their numbers, first rows in the batch and sizes (groups under 4 images are left out)."""
    m = acc.minibatch
    first = int(acc.position[idx[0]])
    groups = sorted({(first + j) // m for j in range(len(idx))} & acc.chosen)
    starts = [g * m - first for g in groups]
    sizes = [min(m, len(idx) - s) for s in starts]
    keep = [k for k, s in enumerate(sizes) if s >= 4]
    return [groups[k] for k in keep], [starts[k] for k in keep], [sizes[k] for k in keep]


def _group_grams(acc: Acc, t: torch.Tensor, starts: list, sizes: list) -> list:
    """Linear Gram matrices of the chosen groups (a list aligned with ``starts``)."""
    m = acc.minibatch
    out = [None] * len(starts)
    slot = acc.gram_slot()
    runs = []  # full groups in runs of consecutive positions: each run is a view, no copy
    for j in (j for j, z in enumerate(sizes) if z == m):
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


def batch(view, x, y, idx: np.ndarray, acc: Acc) -> None:
    want, grad, ckas, spec = acc.want, acc.grad, acc.ckas, acc.spec
    put = (lambda metric, i, v: acc.store.put((metric, i), idx, v))
    with torch.set_grad_enabled(grad):
        h = view.stem(x)
        if grad:
            h = h.detach().requires_grad_(True)
        groups, starts, sizes = _cka_layout(acc, idx)
        acc.gram_next = 0  # the previous batch's Gram matrices are spent (its HSIC terms are computed)

        def grams(t):
            return _group_grams(acc, t, starts, sizes)

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


def _norm_metrics(st, acc: Acc) -> None:
    """The per-image norms of the unit of step ``st`` into its columns of the batch table (:data:`_UNIT_COLUMNS`),
    as squared norms, from which :func:`unit_norms` and :func:`derive_metrics` compute its metrics after the
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


def _difference(y: torch.Tensor, s: torch.Tensor, acc: Optional[Acc]) -> torch.Tensor:
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


def unit_norms(sums: np.ndarray, table: Table, i: int, kind: tuple) -> np.ndarray:
    """Per-image ‖x‖, ‖y‖, ‖S(x)‖, ‖y − S(x)‖, ‖F(x)‖, cos(x, y) of unit i (n, 6) from the gathered batch tables;
    ``kind``: (residual, identity shortcut, same shape, S(x) is x)."""
    residual, s_is_x = kind[0], kind[3]
    c = table.unit(i)
    nx = np.sqrt(sums[:, table.x2(i)])
    ns = nx if s_is_x else np.sqrt(sums[:, c + 2])
    nf = np.sqrt(sums[:, c + 4]) if residual else np.full(len(sums), np.nan)
    return np.stack([nx, np.sqrt(sums[:, c]), ns, np.sqrt(sums[:, c + 1]), nf, sums[:, c + 5]], 1)


def derive_metrics(norms: np.ndarray, residual: bool, identity_shortcut: bool, same_shape: bool) -> dict:
    """The per-image metrics of one unit from its norms (n, 6) (:func:`unit_norms`)."""
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

"""The lesion engine: every configuration of a sweep evaluated from its first modified unit, reusing the
prefix it shares with the previous configuration (see :mod:`resprobe.probes.lesion`)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .. import distributed as dist
from ..anatomy import Op, ResidualView, preserved_state
from ..engine import PerImageStore, RunSpec, batches, check_finite
from ..io.data import Dataset
from . import common
from .lesion_plans import LesionConfig

__all__ = ["stream_logits", "sweep", "Counts"]


def _common_prefix(a: tuple, b: tuple) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@torch.no_grad()
def stream_logits(view: ResidualView, x: torch.Tensor, configs: Sequence[LesionConfig], order: Sequence[int],
                  hs: Optional[list] = None, clean_logits: Optional[torch.Tensor] = None):
    """Yield ``(config index, logits)`` for one batch, in ``order``, reusing the unit inputs that a
    configuration shares with the previous one (the prefix tree of the sorted configurations). ``hs``,
    ``clean_logits``: the intact network's unit inputs and logits, when already computed."""
    n = len(view)
    hs = list(hs) if hs is not None else view.unit_inputs(x)
    prev_sig = tuple((Op.KEEP,) for _ in range(n))  # the intact network
    prev_logits = clean_logits
    for ci in order:
        c = configs[ci]
        sig = c.signature(n)
        L = _common_prefix(prev_sig, sig)
        if L == n and prev_logits is not None:
            yield ci, prev_logits
            continue
        edits = c.edits()
        del hs[L + 1:]
        i = L
        while i < n:  # a parallel range is one step; the inputs inside it are never a later prefix's end
            out, last = view.step(i, hs[i], edits)
            hs += [None] * (last - i) + [out]
            i = last + 1
        prev_logits = view.head(hs[n])
        prev_sig = sig
        yield ci, prev_logits


class Counts:
    __slots__ = ("wrong", "loss", "n", "top5_wrong", "broken", "fixed", "nonfinite", "bits")

    def __init__(self):
        self.wrong, self.loss, self.n, self.top5_wrong, self.broken, self.fixed, self.nonfinite = 0, 0.0, 0, 0, 0, 0, 0
        self.bits = None

    def add(self, logits: torch.Tensor, y: torch.Tensor, base_wrong: torch.Tensor, finite: bool) -> torch.Tensor:
        """Count one batch; returns the per-image wrong bits."""
        logits = logits.float()
        w = logits.argmax(1) != y
        self.wrong += int(w.sum())
        self.broken += int((w & ~base_wrong).sum())
        self.fixed += int((~w & base_wrong).sum())
        self.loss += float(F.cross_entropy(logits, y, reduction="sum")) if finite else float("nan")
        self.nonfinite += int(not finite)
        self.n += len(y)
        if logits.shape[1] >= 10:
            self.top5_wrong += int((~(logits.topk(5, 1).indices == y[:, None]).any(1)).sum())
        return w

    def scalars(self) -> list:
        return [self.wrong, self.loss, self.n, self.top5_wrong, self.broken, self.fixed, self.nonfinite]


def sweep(view: ResidualView, data: Dataset, configs: Sequence[LesionConfig], spec: RunSpec, normalize: str,
          desc: str = "lesion") -> list[Optional[Counts]]:
    """Counts (and per-image wrong bits, in data order) of every runnable configuration over ``data``;
    None for the others. In a distributed run the totals are on rank 0."""
    n = len(view)
    order = sorted((i for i, c in enumerate(configs) if c.runnable), key=lambda i: configs[i].signature(n))
    counts = {i: Counts() for i in order}
    store = PerImageStore(len(data))
    with preserved_state(view.model), torch.no_grad(), spec.autocast():
        view.model.eval()
        for x, y, idx in batches(data, spec, normalize, desc):
            hs = view.unit_inputs(x)
            base = view.head(hs[-1])
            check_finite(base, "the intact network's logits", spec, lambda: common.locate_nonfinite(view, x))
            base_wrong = base.argmax(1) != y
            i_np = store.mark(idx)
            for ci, logits in stream_logits(view, x, configs, order, hs, base):
                finite = check_finite(logits, f"the logits of configuration {configs[ci].key()}", spec)
                store.put(ci, i_np, counts[ci].add(logits, y, base_wrong, finite))
    totals = dist.reduce_sum({i: c.scalars() for i, c in counts.items()})
    bits = dist.gather_rows(store.index(), {str(i): store.columns.get(i, np.zeros(len(data), bool))[store.index()]
                                            for i in counts})
    if totals is None:
        return [None] * len(configs)
    out: list[Optional[Counts]] = [None] * len(configs)
    for i in order:
        c = Counts()
        c.wrong, c.loss, c.n, c.top5_wrong, c.broken, c.fixed, c.nonfinite = totals[i]
        c.bits = bits[str(i)]
        out[i] = c
    return out



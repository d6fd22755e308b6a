"""How close is each residual block to the identity? (He et al. 2016 Fig. 7; Jastrzebski et al. 2018)

One pass over the data runs every block in decomposed form — S(x), F(x), y = post(S(x) + F(x)) —
and streams, per block:

- ``residual_ratio``  mean over images of ‖F(x)‖/‖S(x)‖;
- ``relative_change`` mean over images of ‖y − S(x)‖/‖S(x)‖ (includes the post-activation);
- ``cosine``          mean over images of cos(S(x), y);
- ``cka``             linear CKA between block input and output across images (S(x) vs y when the block
                      changes shape), unbiased minibatch estimator (Nguyen et al. 2021);
- ``grad_cosine``     (optional, one backward pass) mean over images of cos(F(x), ∂L/∂x), L = cross-entropy
                      (residual blocks that keep the shape; undefined where F(x) and x differ in shape);
- ``response_std``    per 3×3 conv layer: std of its output after BN (before addition or nonlinearity) over
                      all elements of all images (He et al. Fig. 7), with a bootstrap CI over images.

For a plain block (no shortcut) S(x) is taken as x when the block keeps the shape (``residual_ratio``
is undefined there); shape-changing plain blocks get CKA only. 95% CIs: seeded bootstrap over images
(CKA: none).
Memory follows the batch size; only per-image scalars are kept.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..anatomy import ResidualView, anatomy, frozen_eval
from ..io.data import Dataset
from ..metrics.similarity import MinibatchCKA, PerImageMoments, cosine, minibatch_grams, per_image_norm
from ..metrics.stats import bootstrap_mean_ci, bootstrap_pooled_std_ci, stable_seed

__all__ = ["COLUMNS", "PER_IMAGE_METRICS", "METRIC_GROUPS", "response_layers", "identity_profile", "effective_depth",
           "stage_summary"]

COLUMNS = ["model", "block", "stage", "index_in_stage", "downsample", "metric", "value", "ci_low", "ci_high",
           "n_images"]
PER_IMAGE_METRICS = ("residual_ratio", "relative_change", "cosine", "grad_cosine")
METRIC_GROUPS = ("norms", "cka", "response_std")  # norms: residual_ratio, relative_change, cosine


def response_layers(model: nn.Module) -> list[tuple[str, str]]:
    """(conv name, module whose output is measured) for every 3×3 convolution: the BatchNorm that
    directly follows it inside the same parent module, else the convolution itself."""
    mods = list(model.named_modules())
    out = []
    for p, (name, m) in enumerate(mods):
        if isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (3, 3):
            parent = name.rpartition(".")[0]
            nxt = mods[p + 1] if p + 1 < len(mods) else None
            if (nxt is not None and isinstance(nxt[1], nn.BatchNorm2d) and nxt[0].rpartition(".")[0] == parent
                    and nxt[1].num_features == m.out_channels):
                out.append((name, nxt[0]))
            else:
                out.append((name, name))
    return out


class _ResponseStd:
    """Forward hooks that accumulate the std of chosen layers' outputs; removed on exit, always."""

    def __init__(self, model: nn.Module, enabled: bool = True):
        self.layers = response_layers(model) if enabled else []
        self.moments = {measured: PerImageMoments() for _, measured in self.layers}
        self._mods = dict(model.named_modules())
        self._handles = []

    def __enter__(self):
        try:
            for _, measured in self.layers:
                acc = self.moments[measured]
                self._handles.append(self._mods[measured].register_forward_hook(
                    lambda mod, args, out, acc=acc: acc.update(out)))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return False


def _block_of(layer: str, view: ResidualView):
    for b in view:
        if layer == b.name or layer.startswith(b.name + "."):
            return b
    return None


def identity_profile(model: nn.Module, data: Dataset, model_label: str = "model", batch_size: int = 256,
                     normalize: str = "none", device="cpu", grad: bool = False, cka_minibatch: int = 32,
                     seed: int = 0, n_boot: int = 1000, progress: bool = True,
                     metrics: Sequence[str] = METRIC_GROUPS) -> pd.DataFrame:
    """Per-block identity metrics and per-layer response std of ``model`` over ``data`` (long DataFrame).

    ``metrics``: the groups to compute, any of ``norms`` (residual_ratio, relative_change, cosine),
    ``cka``, ``response_std`` (all by default; ``grad`` adds grad_cosine). Fewer groups, less time."""
    want = set(metrics)
    unknown = want - set(METRIC_GROUPS)
    if unknown or not (want or grad):
        raise ValueError(f"metrics must be a non-empty subset of {', '.join(METRIC_GROUPS)}; got {sorted(metrics)}")
    view = anatomy(model, data.input_shape)
    model.to(device)
    n = len(view)
    per_image = {m: [[] for _ in range(n)] for m in PER_IMAGE_METRICS}
    ckas = [MinibatchCKA(cka_minibatch) for _ in range(n)]
    cka = "cka" in want
    with frozen_eval(model), _ResponseStd(model, "response_std" in want) as rs:
        bar = tqdm(data.batches(batch_size, normalize, device), total=-(-len(data) // batch_size),
                   desc=f"identity {model_label}", disable=not progress, leave=False)
        for x, y, _ in bar:
            with torch.set_grad_enabled(grad):
                h = view.stem(x)
                if grad:
                    h = h.detach().requires_grad_(True)
                inputs, branches = [], []
                g_in = minibatch_grams(h.detach(), cka_minibatch) if cka else None  # each input's Gram, reused
                n_in = None  # ‖block input‖ per image, carried from the previous block's output
                for i, b in enumerate(view):
                    if grad:  # kept only for the backward pass: no activations piled up otherwise
                        inputs.append(h)
                    f = b.branch(h)
                    if b.residual:
                        s = b.shortcut(h)
                        out = b.post(s + f)
                    else:
                        out = b.post(f)
                        s = h if tuple(h.shape) == tuple(out.shape) else None
                    if grad:
                        branches.append(f.detach())
                    xd, od = h.detach(), out.detach()
                    sd = None if s is None else s.detach()
                    # an identity shortcut returns its input itself: its norm is the previous output's
                    if "norms" in want:
                        n_in = _block_metrics(per_image, i, b.residual, sd, f.detach(), od,
                                              ns=n_in if (s is h and n_in is not None) else None)
                    if cka:
                        g_out = minibatch_grams(od, cka_minibatch)
                        same = tuple(xd.shape) == tuple(od.shape)
                        ckas[i].update_grams(g_in if (same or sd is None) else minibatch_grams(sd, cka_minibatch),
                                             g_out)
                        g_in = g_out
                    h = out
                if grad:
                    loss = F.cross_entropy(view.head(h), y, reduction="sum")
                    grads = torch.autograd.grad(loss, inputs)
                    for i, (f, g) in enumerate(zip(branches, grads)):
                        if view[i].residual and f.shape == g.shape:  # undefined where the block changes shape
                            per_image["grad_cosine"][i].append(cosine(f, g).cpu().numpy())
    rows = []
    for i, b in enumerate(view):
        base = dict(model=model_label, block=b.name, stage=b.stage, index_in_stage=b.index_in_stage,
                    downsample=b.downsample)
        for m in PER_IMAGE_METRICS:
            if not per_image[m][i]:
                continue
            v = np.concatenate(per_image[m][i])
            lo, hi = bootstrap_mean_ci(v, n_boot=n_boot, seed=stable_seed(seed, model_label, b.name, m))
            rows.append(dict(base, metric=m, value=float(v.mean()), ci_low=lo, ci_high=hi, n_images=len(v)))
        if "cka" in want:
            rows.append(dict(base, metric="cka", value=ckas[i].value(), ci_low=np.nan, ci_high=np.nan,
                             n_images=ckas[i].batches * ckas[i].minibatch))
    if rs.layers:  # one bootstrap over images for all layers (shared resamples)
        sums = [rs.moments[measured].sums() for _, measured in rs.layers]
        lo, hi = bootstrap_pooled_std_ci(np.stack([a for a, _ in sums], 1), np.stack([b for _, b in sums], 1),
                                         [rs.moments[measured].per_image for _, measured in rs.layers], n_boot,
                                         seed=stable_seed(seed, model_label, "response_std"))
    for j, (conv, measured) in enumerate(rs.layers):
        b = _block_of(conv, view)
        mom = rs.moments[measured]
        rows.append(dict(model=model_label, block=measured, stage=b.stage if b else -1,
                         index_in_stage=b.index_in_stage if b else -1, downsample=b.downsample if b else False,
                         metric="response_std", value=mom.std, ci_low=float(lo[j]), ci_high=float(hi[j]),
                         n_images=mom.n_images))
    return pd.DataFrame(rows, columns=COLUMNS)


def _block_metrics(per_image, i: int, residual: bool, s, f, y, ns=None):
    """Append block ``i``'s per-image metrics; return ‖y‖ per image (None when nothing was measured).
    ``ns``: ‖s‖ per image when already known (identity shortcut: the previous block's ‖y‖)."""
    if s is None:
        return None
    ns = per_image_norm(s) if ns is None else ns
    ny, nd = per_image_norm(y), per_image_norm(y - s)
    nsc = ns.clamp_min(1e-12)
    if residual:
        per_image["residual_ratio"][i].append((per_image_norm(f) / nsc).cpu().numpy())
    per_image["relative_change"][i].append((nd / nsc).cpu().numpy())
    # cos(s, y) from the three norms (law of cosines): no extra pass over the activations
    cos = (ns * ns + ny * ny - nd * nd) / (2 * ns * ny).clamp_min(1e-12)
    per_image["cosine"][i].append(cos.clamp(-1, 1).cpu().numpy())
    return ny


def effective_depth(df: pd.DataFrame, threshold: float = 0.3) -> dict:
    """Per model: blocks whose mean ‖F‖/‖S‖ exceeds ``threshold`` (the effective depth), and the others."""
    out = {}
    for model, g in df[df["metric"] == "residual_ratio"].groupby("model", sort=False):
        active = g[g["value"] > threshold]["block"].tolist()
        near = g[g["value"] <= threshold]["block"].tolist()
        out[str(model)] = dict(threshold=threshold, effective_depth=len(active), n_blocks=len(g),
                               active_blocks=active, near_identity_blocks=near)
    return out


def stage_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Mean of each per-block metric over the blocks of each stage (and the first block vs the rest)."""
    d = df[df["metric"] != "response_std"]
    g = d.groupby(["model", "stage", "metric"], sort=False)["value"]
    s = g.mean().rename("mean").to_frame()
    s["first_block"] = d[d["index_in_stage"] == 0].groupby(["model", "stage", "metric"], sort=False)["value"].mean()
    s["later_blocks"] = d[d["index_in_stage"] > 0].groupby(["model", "stage", "metric"], sort=False)["value"].mean()
    s["n_blocks"] = g.size()
    return s.reset_index()

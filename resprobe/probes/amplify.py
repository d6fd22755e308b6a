"""Perturbation amplification: is a residual block a "differential amplifier"?

Per block B (input x, shortcut S, branch F, output y = post(S(x) + F(x))), streamed over images:

- ``random_gain_{block,branch,shortcut}`` ‖B(x+δ) − B(x)‖/‖δ‖ (and for F, S) for a random δ with
  ‖δ‖ = ε‖x‖, per ε (the linear regime shows as gains that do not depend on ε);
- ``amplifier_ratio`` (‖ΔF‖/‖F‖)/(‖Δy‖/‖y‖) for the same δ: > 1 means the branch changes
  relatively more than the block's output — the "differential amplifier" reading;
- ``worst_gain_{block,branch}`` the spectral norm of the Jacobian at x, by K power iterations with
  ``torch.func`` jvp/vjp, batched over images (images are independent in eval mode);
- ``gain_to_logits`` from the input of block i to the logits, ``gain_from_image`` from the image to
  block i's output (random δ, per ε), and end to end ``flip_rate`` and ``margin_change`` under input noise;
- ``weight_rel_change_{branch,block}`` and ``weight_amplifier_ratio``: every parameter tensor p of the
  block perturbed by ε‖p‖ in a random direction; relative change of F(x) vs of y (weights restored
  bit-identically afterwards).

95% CIs: seeded bootstrap over images.
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from torch.func import jvp, vjp
from tqdm.auto import tqdm

from ..anatomy import anatomy, frozen_eval
from ..metrics.similarity import per_image_norm
from ..metrics.stats import bootstrap_mean_ci, stable_seed

__all__ = ["COLUMNS", "power_iteration", "amplification_profile"]

COLUMNS = ["model", "block", "metric", "eps", "value", "ci_low", "ci_high", "n_images"]


def _unit(shape, gen, device, dtype):
    u = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    return u / per_image_norm(u).to(dtype).view(-1, *[1] * (u.dim() - 1)).clamp_min(1e-30)


def power_iteration(fn, x: torch.Tensor, iters: int = 10, gen: torch.Generator | None = None) -> torch.Tensor:
    """Per-image spectral norm of the Jacobian of ``fn`` at ``x`` (a batch of independent images):
    v ← Jᵀ J v / ‖Jᵀ J v‖ by jvp and vjp, then σ = ‖J v‖."""
    v = _unit(x.shape, gen or torch.Generator().manual_seed(0), x.device, x.dtype)
    for _ in range(iters):
        _, jv = jvp(fn, (x,), (v,))
        _, pull = vjp(fn, x)
        (w,) = pull(jv)
        v = w / per_image_norm(w).to(w.dtype).view(-1, *[1] * (w.dim() - 1)).clamp_min(1e-30)
    _, jv = jvp(fn, (x,), (v,))
    return per_image_norm(jv)


def amplification_profile(model: nn.Module, data, model_label: str = "model",
                          eps: Sequence[float] = (1e-4, 1e-3, 1e-2), power_iters: int = 10, batch_size: int = 128,
                          normalize: str = "none", device="cpu", seed: int = 0, n_boot: int = 1000,
                          weight_perturbation: bool = True, progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """The measurements above for every block of ``model``; returns the long DataFrame and timings."""
    view = anatomy(model, data.input_shape)
    n = len(view)
    vals: dict[tuple, list] = {}

    def add(block, metric, e, t):
        vals.setdefault((block, metric, e), []).append(t.detach().double().cpu().numpy())

    gen = torch.Generator().manual_seed(seed)
    timing = dict(forward_s=0.0, power_iteration_s=0.0, images=0)
    model.to(device)
    with frozen_eval(model), torch.no_grad():
        bar = tqdm(data.batches(batch_size, normalize, device), total=-(-len(data) // batch_size),
                   desc=f"amplify {model_label}", disable=not progress, leave=False)
        for x, y, _ in bar:
            t0 = time.perf_counter()
            hs = view.block_inputs(x)
            logits = view.head(hs[-1])
            timing["forward_s"] += time.perf_counter() - t0
            timing["images"] += len(y)
            top2 = logits.topk(2, 1).values
            margin = top2[:, 0] - top2[:, 1]
            pred = logits.argmax(1)
            # one random direction per image (and per block input), shared by every ε: differences
            # between ε then reflect the nonlinearity only, not a new draw
            u_img = _unit(x.shape, gen, x.device, x.dtype)
            u_blk = [_unit(h.shape, gen, h.device, h.dtype) for h in hs[:-1]]
            for e in eps:
                # end to end and from the image to every block's output
                d = u_img * e * per_image_norm(x).to(x.dtype).view(-1, 1, 1, 1)
                hp = view.block_inputs(x + d)
                lp = view.head(hp[-1])
                nd = per_image_norm(d)
                for i in range(n):
                    add(view[i].name, "gain_from_image", e, per_image_norm(hp[i + 1] - hs[i + 1]) / nd)
                add("network", "flip_rate", e, (lp.argmax(1) != pred).double())
                tp = lp.gather(1, pred[:, None]).squeeze(1)
                other = lp.scatter(1, pred[:, None], float("-inf")).max(1).values
                add("network", "margin_change", e, ((tp - other) - margin).abs() / margin.clamp_min(1e-12))
                for i, b in enumerate(view):
                    h = hs[i]
                    dh = u_blk[i] * e * per_image_norm(h).to(h.dtype).view(-1, *[1] * (h.dim() - 1))
                    ndh = per_image_norm(dh)
                    f0, f1 = b.branch(h), b.branch(h + dh)
                    y0, y1 = hs[i + 1], view.run_block(i, h + dh)
                    dy, df = per_image_norm(y1 - y0), per_image_norm(f1 - f0)
                    add(b.name, "random_gain_block", e, dy / ndh)
                    add(b.name, "random_gain_branch", e, df / ndh)
                    if b.residual:
                        add(b.name, "random_gain_shortcut", e, per_image_norm(b.shortcut(h + dh) - b.shortcut(h)) / ndh)
                        rel_f = df / per_image_norm(f0).clamp_min(1e-12)
                        rel_y = dy / per_image_norm(y0).clamp_min(1e-12)
                        add(b.name, "amplifier_ratio", e, rel_f / rel_y.clamp_min(1e-30))
                    out_p = view.run(y1, i + 1)  # to the logits, from the perturbed output of block i
                    add(b.name, "gain_to_logits", e, per_image_norm(out_p - logits) / ndh)
                    if weight_perturbation:
                        _weight_rows(b, h, e, gen, add)
            t0 = time.perf_counter()
            with torch.enable_grad():
                for i, b in enumerate(view):
                    add(b.name, "worst_gain_block", None, power_iteration(lambda t, i=i: view.run_block(i, t),
                                                                          hs[i], power_iters, gen))
                    add(b.name, "worst_gain_branch", None, power_iteration(b.branch, hs[i], power_iters, gen))
            timing["power_iteration_s"] += time.perf_counter() - t0
    rows = []
    for (block, metric, e), parts in vals.items():
        v = np.concatenate(parts)
        lo, hi = bootstrap_mean_ci(v, n_boot=n_boot, seed=stable_seed(seed, model_label, block, metric, e))
        rows.append(dict(model=model_label, block=block, metric=metric, eps=e, value=float(v.mean()), ci_low=lo,
                         ci_high=hi, n_images=len(v)))
    timing["power_iterations"] = power_iters
    timing["power_iteration_per_forward"] = timing["power_iteration_s"] / max(timing["forward_s"], 1e-12)
    return pd.DataFrame(rows, columns=COLUMNS), timing


def _weight_rows(b, h, e, gen, add) -> None:
    """Relative change of F(x) and of y when every parameter tensor of the block moves by ε‖p‖."""
    params = [p for p in b.module.parameters()]
    if not params:
        return
    saved = [p.detach().clone() for p in params]
    f0, y0 = b.branch(h), b.module(h)
    try:
        for p in params:
            r = torch.randn(p.shape, generator=gen).to(p)
            p.add_(r * (e * p.norm() / r.norm().clamp_min(1e-30)))
        f1, y1 = b.branch(h), b.module(h)
    finally:
        for p, s in zip(params, saved):
            p.copy_(s)
    rel_f = per_image_norm(f1 - f0) / per_image_norm(f0).clamp_min(1e-12)
    rel_y = per_image_norm(y1 - y0) / per_image_norm(y0).clamp_min(1e-12)
    add(b.name, "weight_rel_change_branch", e, rel_f)
    add(b.name, "weight_rel_change_block", e, rel_y)
    add(b.name, "weight_amplifier_ratio", e, rel_f / rel_y.clamp_min(1e-30))

"""Perturbation amplification: is a residual unit a "differential amplifier"?

The conjecture (seed §2.3): *the residual structure amplifies small perturbations of its input, and is
therefore more sensitive.* Two readings, kept apart:

(a) **Arithmetic.** For a unit y = S(x) + F(x) with a small branch, a change of y is a large *relative*
    change of F: (‖ΔF‖/‖F‖)/(‖Δy‖/‖y‖) = (‖ΔF‖/‖Δy‖)·(‖y‖/‖F‖), and ‖ΔF‖ ≈ ‖Δy‖ when the change comes from
    the branch. The ratio (``amplifier_ratio``) restates ‖y‖/‖F‖ (``output_branch_ratio``), the inverse of
    the identity probe's ratio: it is shown, never counted as evidence.
(b) **Empirical** (the verdict). The relative sensitivity of the branch to its input,
    κ = (‖ΔF‖/‖F‖)/(‖δ‖/‖x‖), for random directions δ at several ε (``kappa``) and for the worst-case
    direction (``kappa_worst`` = σ_max(∂F/∂x)·‖x‖/‖F‖), compared unit by unit with the matching unit of a
    plain twin trained with the same recipe.

Also per unit: random gains of the unit, its branch and its shortcut (‖Δout‖/‖δ‖ for ‖δ‖ = ε‖x‖; one
direction per image shared by all ε, so a flat gain across ε shows the linear regime), worst-case gains
(Jacobian spectral norms by power iteration, J v and Jᵀ u in closed form for chains of convolutions,
BatchNorms and ReLUs, else from one linearization and one pullback per branch and batch, batched over images), gains from each unit's input to the logits and from the image to each
unit's output, and end to end the flip rate and margin change under input noise. 95% CIs: bootstrap
over images.
"""
from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass
from typing import Sequence

import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import linearize, vjp

from .. import distributed as dist
from ..anatomy import ResidualView, anatomy, frozen_eval
from ..anatomy.parts import identity
from ..engine import PerImageStore, RunSpec, batch_generator, batches, check_finite
from .. import checks
from ..errors import UsageError
from ..io.data import Dataset
from ..metrics.similarity import per_image_norm
from ..metrics.stats import bootstrap_mean_ci, stable_seed
from ..study import StudyResult, Subject
from ..verdict import Role, pairs_by_seed
from . import common
from .amplify_verdicts import AMPLIFIER_LOG_RATIO, amplifier_verdicts

__all__ = ['AmplifyDetail', "AmplifyOptions", "COLUMNS", "power_iteration", "spectral_norms", "profile", "run", "amplifier_verdicts",
           "AMPLIFIER_LOG_RATIO"]

COLUMNS = ["model", "unit", "metric", "eps", "value", "ci_low", "ci_high", "n_images"]


@dataclass(frozen=True)
class AmplifyDetail:
    """Seconds spent per network and part of the measurement (written to the JSON)."""

    timing: dict

@dataclass(frozen=True)
class AmplifyOptions:
    eps: tuple = (1e-4, 1e-3, 1e-2)
    power_iters: int = 10

    def __post_init__(self):
        checks.fields(self)
        # below 1e-6 a float32 perturbation is lost in rounding (float32 resolves 1.2e-7 relative)
        if not self.eps or any(not 1e-6 <= e < 1 for e in self.eps):
            raise UsageError(f"--eps values must lie in [1e-6, 1) (float32 cannot resolve smaller relative "
                             f"perturbations), got {list(self.eps)}")
        if self.power_iters < 1:
            raise UsageError(f"--power-iters must be >= 1, got {self.power_iters}")

    def describe(self) -> dict:
        return dict(eps=list(self.eps), power_iters=self.power_iters)


def _unit(shape, gen, device, dtype):
    """Random unit vectors, one per image. ``gen``: one generator for the batch, or one per image (then
    each image's draws do not depend on which images share its batch: results do not depend on the batch
    size or on how a distributed run splits the data)."""
    if isinstance(gen, (list, tuple)):
        u = torch.stack([torch.randn(tuple(shape[1:]), generator=g) for g in gen])
    else:
        u = torch.randn(shape, generator=gen)
    u = u.to(device=device, dtype=dtype)
    return u / per_image_norm(u).to(dtype).view(-1, *[1] * (u.dim() - 1)).clamp_min(1e-30)


def _normalize(w: torch.Tensor) -> torch.Tensor:
    return w / per_image_norm(w).to(w.dtype).view(-1, *[1] * (w.dim() - 1)).clamp_min(1e-30)


def _math_attention():
    """Forward-mode AD needs attention's math kernel (the fused CPU kernel has no jvp)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        return sdpa_kernel([SDPBackend.MATH])
    except ImportError:  # pragma: no cover - older torch
        return contextlib.nullcontext()


def _power(jv, jtu, x: torch.Tensor, iters: int, gen) -> torch.Tensor:
    """Per-image σ_max of a linear map given as J v (``jv``) and Jᵀ u (``jtu``): v ← JᵀJ v / ‖JᵀJ v‖, σ = ‖J v‖."""
    v = _unit(x.shape, gen, x.device, x.dtype)
    for _ in range(iters):
        v = _normalize(jtu(jv(v)))
    return per_image_norm(jv(v))


def _linear(fn, x):
    """(F(x), J v, Jᵀ u) of ``fn`` at ``x``: one linearization and one pullback, reused by every iteration.
    (Measured on ResNet-56, batch 128, 1 thread: J v from the linearization costs 1.5 branch forwards, Jᵀ u
    1.6, the tracing 10–16 per unit and batch; the double-backward trick, which needs no tracing, makes J v
    cost 3–4.5 branch forwards and the whole computation slower — 93× a forward against 77.6×.)"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # linearize's tracer warns about its own internals
        out, jv = linearize(fn, x)
    _, pull = vjp(fn, x)
    return out, jv, lambda u: pull(u)[0]


_CHAIN_LEAVES = (nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.ReLU, nn.Identity, nn.Dropout)


def _record_leaf_calls(fn, x):
    """``fn(x)`` with every leaf module call recorded as (module, input, output), in order."""
    calls = []

    def hook(mod, args, out):
        if next(mod.children(), None) is None:
            calls.append((mod, args, out))

    h = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        out = fn(x)
    finally:
        h.remove()
    return out, calls


def _chain_linear(fn, x):
    """(F(x), J v, Jᵀ u) in closed form when ``fn`` is a chain of convolutions, linear layers, eval-mode
    BatchNorms and ReLUs (modules, or functional ReLUs between them) — a ResNet branch, a projection
    shortcut — else None. The chain is read from one forward pass with hooks: modules of exactly these
    types (no subclass with its own forward), each one's input the previous one's output or its ReLU
    (checked), ``fn``'s output the last one's or its ReLU. J v is the chain without biases, each
    BatchNorm's scale folded into the neighbouring convolution's weights and each ReLU a 0/1 mask of its
    positive outputs; Jᵀ u the transposed chain (transposed convolutions). About one branch forward each and no
    tracing (``benchmarks/amplify_cost.py``)."""
    out, calls = _record_leaf_calls(fn, x)
    if not calls or not isinstance(out, torch.Tensor):
        return None
    ops, shapes, cur = [], [], x  # ops: ["mask", m] | ["conv", module] | ["linear", module] | ["scale", bn]
    for mod, args, o in calls:
        if type(mod) not in _CHAIN_LEAVES or len(args) != 1 or not isinstance(o, torch.Tensor):
            return None
        if (type(mod) is nn.BatchNorm2d and (mod.training or mod.running_var is None)) or \
                (type(mod) is nn.Dropout and mod.training) or \
                (type(mod) is nn.Conv2d and (mod.padding_mode != "zeros" or isinstance(mod.padding, str))):
            return None
        inp = args[0]
        if inp is not cur:  # allowed: a functional ReLU between two modules
            if not _is_relu_of(inp, cur):
                return None
            ops.append(["mask", inp > 0])
            shapes.append(inp.shape)
        if type(mod) is nn.ReLU:
            ops.append(["mask", o > 0])
            shapes.append(o.shape)
        elif type(mod) in (nn.Conv2d, nn.Linear, nn.BatchNorm2d):
            ops.append([{nn.Conv2d: "conv", nn.Linear: "linear", nn.BatchNorm2d: "scale"}[type(mod)], mod])
            shapes.append(inp.shape)
        cur = o
    if out is not cur:
        if not _is_relu_of(out, cur):
            return None
        ops.append(["mask", out > 0])
        shapes.append(out.shape)
    lin = _fold(ops, shapes, x.dtype)

    @torch.no_grad()
    def jv(v):
        for kind, a, shape in lin:
            if kind == "mask":
                v = v * a
            elif kind == "conv":
                v = F.conv2d(v, a[0], None, *a[1:])
            elif kind == "linear":
                v = F.linear(v, a)
            else:
                v = v * a
        return v

    @torch.no_grad()
    def jtu(u):
        for kind, a, shape in reversed(lin):
            if kind == "mask":
                u = u * a
            elif kind == "conv":
                u = F.conv_transpose2d(u, a[0], None, a[1], a[2], _output_padding(shape, u.shape, *a), a[4], a[3])
            elif kind == "linear":
                u = u @ a
            else:
                u = u * a
        return u

    return out, jv, jtu


def _output_padding(in_shape, out_shape, w, stride, padding, dilation, groups) -> tuple:
    """The output padding that makes the transposed convolution return the convolution's input size
    (several input sizes give one output size when the stride is above 1)."""
    k = w.shape[-2:]
    return tuple(int(in_shape[-2 + d] - ((out_shape[-2 + d] - 1) * stride[d] - 2 * padding[d] + dilation[d] * (k[d] - 1) + 1))
                 for d in range(2))


def _is_relu_of(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a, torch.relu(b))


def _fold(ops, shapes, dtype) -> list:
    """The chain's linear part as (kind, tensor(s), input shape): masks as 0/1 tensors of ``dtype``, each
    BatchNorm's per-channel scale folded into the nearest convolution across masks (both are diagonal, so
    they commute) — into its output channels when the convolution comes before, its input channels when
    after — else kept as a multiplication."""
    scales = {}
    convs = [j for j, op in enumerate(ops) if op[0] == "conv"]
    w = {j: ops[j][1].weight.detach() for j in convs}
    for j, op in enumerate(ops):
        if op[0] != "scale":
            continue
        bn = op[1]
        sc = torch.rsqrt(bn.running_var + bn.eps) * (bn.weight if bn.weight is not None else 1)
        sc = sc.detach()
        before = next((k for k in range(j - 1, -1, -1) if ops[k][0] != "mask"), None)
        after = next((k for k in range(j + 1, len(ops)) if ops[k][0] != "mask"), None)
        if before is not None and ops[before][0] == "conv" and w[before].shape[0] == sc.numel():
            w[before] = w[before] * sc.view(-1, 1, 1, 1)
        elif after is not None and ops[after][0] == "conv" and w[after].shape[1] * ops[after][1].groups == sc.numel() \
                and ops[after][1].groups == 1:
            w[after] = w[after] * sc.view(1, -1, 1, 1)
        else:
            scales[j] = sc
    lin = []
    for j, (op, shape) in enumerate(zip(ops, shapes)):
        kind, a = op
        if kind == "mask":
            lin.append(("mask", a.to(dtype), shape))
        elif kind == "conv":
            lin.append(("conv", (w[j], a.stride, a.padding, a.dilation, a.groups), shape))
        elif kind == "linear":
            lin.append(("linear", a.weight.detach(), shape))
        elif j in scales:
            lin.append(("scale", scales[j].view(1, -1, *[1] * (len(shape) - 2)).to(dtype), shape))
    return lin


def _maps(fn, x):
    """(F(x), J v, Jᵀ u): in closed form for chains of convolutions, BatchNorms and ReLUs, else from a
    linearization and a pullback."""
    got = _chain_linear(fn, x)
    return got if got is not None else _linear(fn, x)


def _post_linear(post, pre):
    """(J v, Jᵀ u) of the post-operation at ``pre``: the identity and ReLU in closed form (a tracing
    linearization of an elementwise map costs more than the unit's forward pass), anything else linearized."""
    if post is identity:
        return (lambda v: v), (lambda w: w)
    if post in (torch.relu, torch.nn.functional.relu) or type(post) is torch.nn.ReLU:
        mask = (pre > 0).to(pre.dtype)  # torch's ReLU derivative: 0 at 0
        return (lambda v: v * mask), (lambda w: w * mask)
    _, jp, jpt = _linear(post, pre)
    return jp, jpt


def spectral_norms(fns: Sequence, xs: Sequence[torch.Tensor], iters: int = 10,
                   gen: torch.Generator | list | None = None) -> list[torch.Tensor]:
    """Per-image spectral norm of the Jacobian of each ``fns[j]`` at ``xs[j]`` (images independent, eval mode):
    one linearization (J v) and one pullback (Jᵀ u) per map, then ``iters`` power iterations."""
    gen = gen or torch.Generator().manual_seed(0)
    out = []
    with _math_attention():
        for fn, x in zip(fns, xs):
            _, jv, jtu = _maps(fn, x)
            out.append(_power(jv, jtu, x, iters, gen))
    return out


def unit_spectral_norms(u, x: torch.Tensor, iters: int = 10, gen: torch.Generator | list | None = None):
    """σ_max of the branch's Jacobian and of the whole unit's, per image, from one linearization and one
    pullback of the branch: the unit's map is post'∘(S' + F') (plain units and transitions: post'∘F'), and the
    shortcut and the post-operation are linearized on their own (cheap: identity, padding, a 1×1 projection,
    an activation). Returns (σ_branch, σ_unit, F(x))."""
    gen = gen or torch.Generator().manual_seed(0)
    with _math_attention():
        f, jf, jft = _maps(u.branch, x)
        sig_f = _power(jf, jft, x, iters, gen)
        if u.residual:
            if u.shortcut_kind == "identity":
                s, js, jst = x, (lambda v: v), (lambda w: w)
            else:
                s, js, jst = _maps(u.shortcut, x)
            pre = s + f
        else:
            pre, js, jst = f, None, None
        jp, jpt = _post_linear(u.post, pre)

        def jv(v):
            return jp(jf(v) if js is None else js(v) + jf(v))

        def jtu(w):
            a = jpt(w)
            return jft(a) if jst is None else jst(a) + jft(a)

        sig_y = _power(jv, jtu, x, iters, gen)
    return sig_f, sig_y, f


def power_iteration(fn, x: torch.Tensor, iters: int = 10, gen: torch.Generator | list | None = None) -> torch.Tensor:
    """Per-image spectral norm of the Jacobian of ``fn`` at ``x`` (a batch of independent images)."""
    return spectral_norms([fn], [x], iters, gen)[0]


def profile(subject: Subject, data: Dataset, spec: RunSpec, options: AmplifyOptions = AmplifyOptions()):
    """The measurements of the module docstring for every unit of one network: per-image values
    ``{(unit, metric, eps): array}`` in data order (rank 0), the view and timings."""
    view = anatomy(subject.model, data.input_shape)
    subject.model.to(spec.torch_device)
    store = PerImageStore(len(data))
    timing = dict(forward_s=0.0, power_iteration_s=0.0, images=0)

    rows = None

    def add(unit, metric, e, t):
        store.put((unit, metric, e), rows, t.detach().double())

    with frozen_eval(subject.model), torch.no_grad():
        for x, y, idx in batches(data, spec, subject.normalize, f"amplify {subject.label}"):
            rows = store.mark(idx)
            gen = [batch_generator(spec, "amplify", int(i)) for i in rows]  # one per image
            t0 = time.perf_counter()
            hs = view.unit_inputs(x)
            logits = view.head(hs[-1])
            timing["forward_s"] += time.perf_counter() - t0
            timing["images"] += len(y)
            check_finite(logits, f"the logits of {subject.label}", spec)
            _random_rows(view, x, hs, logits, options.eps, gen, add)
            t0 = time.perf_counter()
            with torch.enable_grad():
                _worst_rows(view, hs, options.power_iters, gen, add)
            timing["power_iteration_s"] += time.perf_counter() - t0
    keys = sorted(store.columns, key=str)
    pos = {k: j for j, k in enumerate(keys)}
    got = store.gather(lambda k: str(pos[k]))
    timing = dist.reduce_sum(timing)
    if got is None:
        return None, view, None
    timing["power_iterations"] = options.power_iters
    timing["power_iteration_per_forward"] = timing["power_iteration_s"] / max(timing["forward_s"], 1e-12)
    return {k: got[str(j)] for j, k in enumerate(keys)}, view, timing


def _random_rows(view: ResidualView, x, hs, logits, eps, gen, add) -> None:
    top2 = logits.topk(2, 1).values
    margin = top2[:, 0] - top2[:, 1]
    pred = logits.argmax(1)
    # one random direction per image (and per unit input), shared by every ε: differences between ε then
    # reflect the nonlinearity only, not a new draw
    u_img = _unit(x.shape, gen, x.device, x.dtype)
    u_in = [_unit(h.shape, gen, h.device, h.dtype) for h in hs[:-1]]
    f0 = [u.branch(hs[i]) for i, u in enumerate(view)]
    nf0 = [per_image_norm(f) for f in f0]
    for i, u in enumerate(view):
        ny = per_image_norm(hs[i + 1])
        if u.residual:
            add(u.name, "output_branch_ratio", None, ny / nf0[i].clamp_min(1e-12))
    for e in eps:
        d = u_img * e * per_image_norm(x).to(x.dtype).view(-1, *[1] * (x.dim() - 1))
        hp = view.unit_inputs(x + d)
        lp = view.head(hp[-1])
        nd = per_image_norm(d)
        for i, u in enumerate(view):
            add(u.name, "gain_from_image", e, per_image_norm(hp[i + 1] - hs[i + 1]) / nd)
        add("network", "flip_rate", e, (lp.argmax(1) != pred).double())
        tp = lp.gather(1, pred[:, None]).squeeze(1)
        other = lp.scatter(1, pred[:, None], float("-inf")).max(1).values
        add("network", "margin_change", e, ((tp - other) - margin).abs() / margin.clamp_min(1e-12))
        for i, u in enumerate(view):
            h = hs[i]
            nh = per_image_norm(h)
            dh = u_in[i] * e * nh.to(h.dtype).view(-1, *[1] * (h.dim() - 1))
            ndh = per_image_norm(dh)
            f1 = u.branch(h + dh)
            y0, y1 = hs[i + 1], view.run_unit(i, h + dh)
            dy, df = per_image_norm(y1 - y0), per_image_norm(f1 - f0[i])
            add(u.name, "random_gain_unit", e, dy / ndh)
            add(u.name, "random_gain_branch", e, df / ndh)
            add(u.name, "kappa", e, (df / nf0[i].clamp_min(1e-12)) / e)  # ‖δ‖/‖x‖ = ε exactly
            if u.residual:
                add(u.name, "random_gain_shortcut", e, per_image_norm(u.shortcut(h + dh) - u.shortcut(h)) / ndh)
                rel_y = dy / per_image_norm(y0).clamp_min(1e-12)
                add(u.name, "amplifier_ratio", e, (df / nf0[i].clamp_min(1e-12)) / rel_y.clamp_min(1e-30))
            out_p = view.run(y1, i + 1)  # to the logits, from the perturbed output of unit i
            add(u.name, "gain_to_logits", e, per_image_norm(out_p - logits) / ndh)


def _worst_rows(view: ResidualView, hs, iters: int, gen, add) -> None:
    for i, u in enumerate(view):
        x = hs[i].detach()
        sig_f, sig_y, f = unit_spectral_norms(u, x, iters, gen)
        add(u.name, "worst_gain_branch", None, sig_f)
        add(u.name, "worst_gain_unit", None, sig_y)
        add(u.name, "kappa_worst", None, sig_f * per_image_norm(x) / per_image_norm(f.detach()).clamp_min(1e-12))


def _rows(label: str, values: dict, spec: RunSpec) -> list[dict]:
    rows = []
    for (unit, metric, e), v in values.items():
        lo, hi = bootstrap_mean_ci(v, n_boot=spec.n_boot, seed=stable_seed(spec.seed, label, unit, metric, e))
        rows.append(dict(model=label, unit=unit, metric=metric, eps=e, value=float(v.mean()), ci_low=lo, ci_high=hi,
                         n_images=len(v)))
    return rows


def run(subjects: Sequence[Subject], data: Dataset, spec: RunSpec = RunSpec(batch_size=128),
        options: AmplifyOptions = AmplifyOptions()) -> StudyResult:
    """Amplification measurements of every subject; the verdict compares residual and plain twins."""
    common.check_labels(subjects)
    rows, per_image, timings, views = [], {}, {}, {}
    for s in subjects:
        values, view, timing = profile(s, data, spec, options)
        views[s.label] = view
        if values is None:
            continue
        rows += _rows(s.label, values, spec)
        per_image[s.label] = values
        timings[s.label] = timing
    common.assess(subjects, data, spec)  # every rank together, before the main rank's verdicts
    if not dist.is_main():
        return StudyResult("amplify", pd.DataFrame(columns=COLUMNS))
    order = {lab: {u.name: u.index for u in v} for lab, v in views.items()}
    table = pd.DataFrame(rows, columns=COLUMNS)
    table = table.assign(_u=[order[m].get(u, 10 ** 6) for m, u in zip(table["model"], table["unit"])]) \
        .sort_values(["model", "metric", "eps", "_u"], kind="stable", key=lambda c: c if c.name != "model" else
                     c.map({lab: i for i, lab in enumerate(order)})).drop(columns="_u").reset_index(drop=True)
    roles = common.roles(subjects, views, data, spec)
    verdicts = amplifier_verdicts(table, roles, per_image, min(options.eps), spec.n_boot, spec.seed)
    return StudyResult("amplify", table, summary=summarize(table, roles), verdicts=verdicts,
                       findings=findings(table, roles), provenance=common.provenance(subjects, data, spec),
                       settings=options.describe(), roles=roles,
                       units={lab: v.table() for lab, v in views.items()}, detail=AmplifyDetail(timings))


def summarize(table: pd.DataFrame, roles: dict[str, Role]) -> dict:
    """Per model: medians over units of every per-unit metric at the smallest ε (worst case: no ε)."""
    d = table[table["unit"] != "network"]
    e0 = d["eps"].dropna().min()
    out = {"eps_used": float(e0) if e0 == e0 else None, "models": {}}
    for m, g in d.groupby("model", sort=False):
        sel = g[(g["eps"] == e0) | g["eps"].isna()]
        out["models"][str(m)] = {metric: float(s["value"].median()) for metric, s in sel.groupby("metric")}
        out["models"][str(m)]["residual"] = bool(roles[str(m)].residual) if str(m) in roles else None
    net = table[table["unit"] == "network"]
    for m, g in net.groupby("model", sort=False):
        out["models"].setdefault(str(m), {}).update(
            {f"{r['metric']}@{r['eps']:g}": float(r["value"]) for _, r in g.iterrows()})
    return out


def findings(table: pd.DataFrame, roles: dict[str, Role]) -> list[str]:
    from .. import fmt
    s = summarize(table, roles)
    e0 = s["eps_used"]
    out = []
    for m, v in s["models"].items():
        if "kappa" in v:
            out.append(f"{m}: median over units κ = {v['kappa']:.3f} (random, ε = {e0:g}), worst case "
                       f"{v.get('kappa_worst', float('nan')):.3f}; random unit gain {v.get('random_gain_unit', float('nan')):.3f}, "
                       f"worst-case unit gain {v.get('worst_gain_unit', float('nan')):.3f}.")
        if "amplifier_ratio" in v:
            out.append(f"{m} (arithmetic, not evidence): median (‖ΔF‖/‖F‖)/(‖Δy‖/‖y‖) = {v['amplifier_ratio']:.3f}, "
                       f"and median ‖y‖/‖F‖ = {v['output_branch_ratio']:.3f} — the ratio is "
                       "(‖ΔF‖/‖Δy‖)·‖y‖/‖F‖ by definition.")
    d = table[(table["metric"] == "kappa") & (table["eps"] == e0)]
    for r, p, _ in pairs_by_seed({m: x for m, x in roles.items() if m in s["models"]}):
        a, b = d[d["model"] == r].set_index("unit"), d[d["model"] == p].set_index("unit")
        both = [u for u in a.index if u in b.index]
        higher = [u for u in both if a.loc[u, "ci_low"] > b.loc[u, "ci_high"]]
        lower = [u for u in both if a.loc[u, "ci_high"] < b.loc[u, "ci_low"]]
        out.append(f"κ unit by unit, {r} against {p} ({len(both)} matched units): higher in {len(higher)}, lower "
                   f"in {len(lower)}, not distinguishable (CIs overlap) in {len(both) - len(higher) - len(lower)}.")
    for key in ("flip_rate", "margin_change"):
        rows = table[(table["metric"] == key)]
        for _, r in rows[rows["eps"] == rows["eps"].max()].iterrows():
            out.append(f"{r['model']}: {key.replace('_', ' ')} under input noise ε = {r['eps']:g}: "
                       f"{fmt.ci(r['value'], r['ci_low'], r['ci_high'], 4)}.")
    return out

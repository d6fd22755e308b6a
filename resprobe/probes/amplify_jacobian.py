"""Jacobian spectral norms by power iteration: forward-mode and reverse-mode products, and for chains of linear
maps (convolutions, BatchNorm, ReLU masks) the exact transposed maps, with no Jacobian materialised."""
from __future__ import annotations

import contextlib
import warnings
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import linearize, vjp

from ..anatomy.parts import identity
from ..metrics.similarity import per_image_norm

__all__ = ["random_unit", "chain_linear", "linear_maps", "spectral_norms", "unit_spectral_norms", "power_iteration"]


def random_unit(shape, gen, device, dtype):
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
    v = random_unit(x.shape, gen, x.device, x.dtype)
    for _ in range(iters):
        v = _normalize(jtu(jv(v)))
    return per_image_norm(jv(v))


def linear_maps(fn, x):
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


def chain_linear(fn, x):
    """(F(x), J v, Jᵀ u) in closed form when ``fn`` is a chain of convolutions, linear layers, eval-mode
    BatchNorms and ReLUs (modules, or functional ReLUs between them) — a ResNet branch, a projection
    shortcut — else None. The chain is read from one forward pass with hooks: modules of exactly these
    types (no subclass with its own forward), each one's input the previous one's output or its ReLU
    (checked), ``fn``'s output the last one's or its ReLU. J v is the chain without biases, each
    BatchNorm's scale folded into the neighbouring convolution's weights and each ReLU a 0/1 mask of its
    positive outputs; Jᵀ u the transposed chain (transposed convolutions). About one branch forward each and no
    tracing (``benchmarks/amplify_cost.py``)."""
    out, calls = _record_leaf_calls(fn, x)
    got = _read_chain(x, out, calls)
    if got is None:
        return None
    lin = _fold(*got, x.dtype)
    return out, _chain_jv(lin), _chain_jtu(lin)


def _read_chain(x, out, calls) -> Optional[tuple[list, list]]:
    """The chain's operations and their input shapes from the recorded leaf calls, or None when it is not a
    chain of the supported linear maps and ReLUs."""
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
    return ops, shapes


def _chain_jv(lin: list):
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
    return jv


def _chain_jtu(lin: list):
    @torch.no_grad()
    def jtu(u):
        for kind, a, shape in reversed(lin):
            if kind == "mask":
                u = u * a
            elif kind == "conv":
                u = F.conv_transpose2d(u, a[0], None, a[1], a[2], _output_padding(shape, u.shape, a), a[4], a[3])
            elif kind == "linear":
                u = u @ a
            else:
                u = u * a
        return u
    return jtu


def _output_padding(in_shape, out_shape, conv: tuple) -> tuple:
    """The output padding that makes the transposed convolution return the convolution's input size
    (several input sizes give one output size when the stride is above 1); ``conv``: (weight, stride,
    padding, dilation, groups)."""
    w, stride, padding, dilation = conv[:4]
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
    got = chain_linear(fn, x)
    return got if got is not None else linear_maps(fn, x)


def _post_linear(post, pre):
    """(J v, Jᵀ u) of the post-operation at ``pre``: the identity and ReLU in closed form (a tracing
    linearization of an elementwise map costs more than the unit's forward pass), anything else linearized."""
    if post is identity:
        return (lambda v: v), (lambda w: w)
    if post in (torch.relu, torch.nn.functional.relu) or type(post) is torch.nn.ReLU:
        mask = (pre > 0).to(pre.dtype)  # torch's ReLU derivative: 0 at 0
        return (lambda v: v * mask), (lambda w: w * mask)
    _, jp, jpt = linear_maps(post, pre)
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

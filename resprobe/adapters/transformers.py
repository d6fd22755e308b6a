"""Decoder-only transformers of Hugging Face ``transformers``: the anatomy of a causal language model.

Each decoder layer is two residual units — ``attn`` (``x + Attn(norm₁ x)``) and ``mlp`` (``x + MLP(norm₂ x)``)
— with identity shortcuts; a layer with the parallel residual (GPT-NeoX with ``use_parallel_residual``, Phi:
``x + Attn(norm₁ x) + MLP(norm₂ x)``) is one unit ``attn+mlp`` whose branch is the sum, since both branches
read the same input. Gemma 2/3's sandwich norms belong to the branch (``x + norm(Attn(norm x))``), as do OLMo 2's norms after
the branch (``x + norm(Attn(x))``). The stem is
everything before the first layer (token and position embeddings, their scaling), the head everything after
the last (final norm, unembedding, logit soft-capping): both are the model's own code, run by the model's own
``forward`` with its layers stood in for (see below). Layouts not listed fail with one line naming the layer
class.

What a layer needs besides its input — attention masks (causal, padding, sliding-window), position ids,
rotary tables — is what the model's own ``forward`` passes it: the stem runs that forward once per batch with
every layer replaced by a recorder that keeps its arguments and returns its input unchanged, and stops before
the final norm. Every unit then runs with its layer's recorded arguments, from any start, for that batch. No
KV cache is used. Token batches are ``(N, T)`` integer ids; a negative id marks padding (the attention mask is
``ids >= 0``; the position is still computed by the model from the mask where it does so).
"""
from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Callable, Optional

import torch
import torch.nn as nn
from transformers import PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer

from ..anatomy.parts import UnitParts, identity, register_block
from ..anatomy.units import AnatomyError
from ..anatomy.blocks import register_model

__all__ = ["layers_of", "tokens_and_mask", "LAYOUTS"]

Tensor = torch.Tensor
_ARGS: dict[int, dict] = {}      # id(layer) -> the arguments the model passed it for the current batch
_BATCH: dict[int, tuple] = {}    # id(model) -> (ids, attention mask) of the current batch


class _Stop(Exception):
    """Raised at the final norm: the stem needs nothing after the last layer."""


def tokens_and_mask(x: Tensor) -> tuple[Tensor, Optional[Tensor]]:
    """Token ids with padding (negative ids) replaced by 0, and the attention mask (None without padding)."""
    x = x.long()
    pad = x < 0
    if not bool(pad.any()):
        return x, None
    return x.clamp_min(0), (~pad).long()


def layers_of(model: nn.Module) -> tuple[nn.Module, nn.ModuleList]:
    """The base model and its list of decoder layers (the only ModuleList of GradientCheckpointingLayers)."""
    base = getattr(model, "base_model", model)
    lists = [m for m in base.children() if isinstance(m, nn.ModuleList) and len(m)
             and all(isinstance(x, GradientCheckpointingLayer) for x in m)]
    if len(lists) != 1:
        raise AnatomyError(f"{type(model).__name__}: no single list of decoder layers found",
                           "resprobe reads decoder-only transformers whose base model holds one list of layers")
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if n is not None and n != len(lists[0]):
        raise AnatomyError(f"{type(model).__name__} runs {n} of its {len(lists[0])} layers",
                           "resprobe probes models that run every layer they hold")
    return base, lists[0]


def _final_norm(base: nn.Module, layers: nn.ModuleList) -> nn.Module:
    for name in ("norm", "ln_f", "final_layer_norm", "final_layernorm"):
        m = getattr(base, name, None)
        if isinstance(m, nn.Module):
            return m
    raise AnatomyError(f"{type(base).__name__}: no final norm found (norm, ln_f, final_layer_norm)",
                       "resprobe reads pre-norm decoder-only transformers")


@contextmanager
def _stand_ins(layers: nn.ModuleList, output: Optional[Callable[[int, Tensor], Tensor]] = None):
    """Every layer's ``forward`` replaced by a recorder of its arguments that returns its input (or
    ``output(i, input)``); restored on exit, always."""
    saved = []
    try:
        for i, layer in enumerate(layers):
            sig = inspect.signature(layer.forward)

            def stand_in(*args, _i=i, _layer=layer, _sig=sig, **kwargs):
                bound = _sig.bind(*args, **kwargs).arguments
                first = next(iter(bound))
                extra = {}
                for k, v in bound.items():
                    if _sig.parameters[k].kind is inspect.Parameter.VAR_KEYWORD:
                        extra.update(v)
                    elif k != first:
                        extra[k] = v
                if "cache" in extra or "use_cache" in extra:   # probes never use a KV cache
                    extra.update(cache=None, use_cache=False)
                _ARGS[id(_layer)] = extra
                h = bound[first]
                return output(_i, h) if output is not None else h

            saved.append((layer, layer.__dict__.get("forward")))
            layer.forward = stand_in
        yield
    finally:
        for layer, old in saved:
            if old is None:
                layer.__dict__.pop("forward", None)
            else:
                layer.forward = old


def _run(model: nn.Module, ids: Tensor, mask: Optional[Tensor]):
    return model(input_ids=ids, attention_mask=mask, use_cache=False)


def stem(model: nn.Module, x: Tensor) -> Tensor:
    """The input of the first layer for token batch ``x``; records every layer's arguments for this batch."""
    base, layers = layers_of(model)
    ids, mask = tokens_and_mask(x)
    _BATCH[id(model)] = (ids, mask)
    got = {}

    def keep(i, h):
        if i == 0:
            got["h"] = h
        return h

    def stop(mod, args):
        raise _Stop()

    handle = _final_norm(base, layers).register_forward_pre_hook(stop)
    try:
        with _stand_ins(layers, keep):
            _run(model, ids, mask)
    except _Stop:
        pass
    finally:
        handle.remove()
    return got["h"]


def head(model: nn.Module, h: Tensor) -> Tensor:
    """Logits from the last layer's output ``h``: the model's own forward with its layers stood in for and
    the last one returning ``h``."""
    _, layers = layers_of(model)
    ids, mask = _BATCH[id(model)]
    last = len(layers) - 1
    with _stand_ins(layers, lambda i, x: h if i == last else x):
        return _run(model, ids, mask).logits


def sample(model: nn.Module, shape) -> Tensor:
    """Token ids for shape inference: ``shape`` is ``(T,)``."""
    vocab = model.get_input_embeddings().num_embeddings
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab, (2, *shape), generator=g)


# --- the layouts of decoder layers -----------------------------------------------------------------------

def _call(module: nn.Module, h: Tensor, layer: nn.Module) -> Tensor:
    """The attention module on ``h`` with the arguments the model passed its layer (those it accepts)."""
    params = inspect.signature(module.forward).parameters
    anything = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    first = next(iter(params))
    kw = {k: v for k, v in _ARGS[id(layer)].items() if k != first and (anything or k in params)}
    out = module(h, **kw)
    return out[0] if isinstance(out, tuple) else out


def _has(layer: nn.Module, *names: str) -> bool:
    return all(isinstance(getattr(layer, n, None), nn.Module) for n in names)


def _llama(m):
    return (lambda h: _call(m.self_attn, m.input_layernorm(h), m), lambda h: m.mlp(m.post_attention_layernorm(h)))


def _gemma(m):
    return (lambda h: m.post_attention_layernorm(_call(m.self_attn, m.input_layernorm(h), m)),
            lambda h: m.post_feedforward_layernorm(m.mlp(m.pre_feedforward_layernorm(h))))


def _olmo2(m):
    return (lambda h: m.post_attention_layernorm(_call(m.self_attn, h, m)),
            lambda h: m.post_feedforward_layernorm(m.mlp(h)))


def _gpt2(m):
    return (lambda h: _call(m.attn, m.ln_1(h), m), lambda h: m.mlp(m.ln_2(h)))


def _neox(m):
    return (lambda h: m.post_attention_dropout(_call(m.attention, m.input_layernorm(h), m)),
            lambda h: m.post_mlp_dropout(m.mlp(m.post_attention_layernorm(h))))


def _phi(m):
    def both(h):
        n = m.input_layernorm(h)
        return m.resid_dropout(_call(m.self_attn, n, m)) + m.resid_dropout(m.mlp(n))
    both.paths = (("attn", lambda h: m.resid_dropout(_call(m.self_attn, m.input_layernorm(h), m))),
                  ("mlp", lambda h: m.resid_dropout(m.mlp(m.input_layernorm(h)))))
    return (both,)


# (name, test on the layer, the branches: two for sequential units, one for a parallel-residual layer, and
# the modules of each unit)
LAYOUTS: list[tuple[str, Callable[[nn.Module], bool], Callable, tuple]] = [
    ("resprobe twin (pre-LN; plain without shortcuts)", lambda m: type(m).__name__ == "TwinLMLayer"
     and isinstance(getattr(m, "residual", None), bool), _gpt2, (("ln_1", "attn"), ("ln_2", "mlp"))),
    ("gemma (sandwich norms)", lambda m: _has(m, "self_attn", "mlp", "input_layernorm", "post_attention_layernorm",
                                              "pre_feedforward_layernorm", "post_feedforward_layernorm"), _gemma,
     (("input_layernorm", "self_attn", "post_attention_layernorm"),
      ("pre_feedforward_layernorm", "mlp", "post_feedforward_layernorm"))),
    ("olmo2 (norms after the branch)", lambda m: _has(m, "self_attn", "mlp", "post_attention_layernorm",
                                                      "post_feedforward_layernorm")
     and not hasattr(m, "input_layernorm"), _olmo2,
     (("self_attn", "post_attention_layernorm"), ("mlp", "post_feedforward_layernorm"))),
    ("llama (pre-norm)", lambda m: _has(m, "self_attn", "mlp", "input_layernorm", "post_attention_layernorm"),
     _llama, (("input_layernorm", "self_attn"), ("post_attention_layernorm", "mlp"))),
    ("phi (parallel residual, one norm)", lambda m: _has(m, "self_attn", "mlp", "input_layernorm", "resid_dropout"),
     _phi, (("input_layernorm", "self_attn", "mlp"),)),
    ("gpt2", lambda m: _has(m, "attn", "mlp", "ln_1", "ln_2") and not hasattr(m, "crossattention"), _gpt2,
     (("ln_1", "attn"), ("ln_2", "mlp"))),
    ("gpt-neox", lambda m: _has(m, "attention", "mlp", "input_layernorm", "post_attention_layernorm")
     and hasattr(m, "use_parallel_residual"), _neox,
     (("input_layernorm", "attention"), ("post_attention_layernorm", "mlp"))),
]


def decoder_layer_parts(m: nn.Module) -> list[UnitParts]:
    """The units of one decoder layer (see the module docstring)."""
    for _, test, fn, owned in LAYOUTS:
        if not test(m):
            continue
        branches = fn(m)
        mods = [tuple(getattr(m, n) for n in names) for names in owned]
        if len(branches) == 1 or getattr(m, "use_parallel_residual", False):
            both = branches[0] if len(branches) == 1 else (lambda h, a=branches[0], b=branches[1]: a(h) + b(h))
            paths = getattr(both, "paths", None) or (("attn", branches[0]), ("mlp", branches[1]))
            return [UnitParts(branch=both, shortcut=identity, name="attn+mlp", modules=sum(mods, ()), paths=paths)]
        short = identity if getattr(m, "residual", True) is not False else None   # None: a plain twin's units
        return [UnitParts(branch=branches[0], shortcut=short, name="attn", modules=mods[0]),
                UnitParts(branch=branches[1], shortcut=short, name="mlp", modules=mods[1])]
    raise AnatomyError(f"the decoder layer {type(m).__name__} has a layout resprobe does not know "
                       f"({', '.join(n for n, _, _, _ in LAYOUTS)})",
                       "register it: resprobe.anatomy.register_block(LayerClass, parts_fn)")


register_block(GradientCheckpointingLayer, decoder_layer_parts)
def reference(model: nn.Module, x: Tensor) -> Tensor:
    """The model's own logits for token batch ``x``."""
    ids, mask = tokens_and_mask(x)
    return _run(model, ids, mask).logits


register_model(PreTrainedModel, stem, head, sample, reference)

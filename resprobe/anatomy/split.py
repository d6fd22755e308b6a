"""Cutting a model's traced graph into stem, chain of blocks (with the transitions between them) and head
(see :mod:`.decompose` for the method)."""
from __future__ import annotations

import inspect
from typing import Optional

import torch.fx as fx
import torch.nn as nn

from .decompose import ancestors, depends, get_attr, graph_module, subgraph, trace
from .parts import identity

__all__ = ["Chain", "SplitError", "split_model"]


class Chain:
    """What :func:`split_model` returns: stem and head GraphModules, and the chain between them as
    ``(kind, name, callable)`` with kind ``block`` (callable: the block module) or ``transition``."""

    def __init__(self, stem, head, items):
        self.stem, self.head, self.items = stem, head, items


def _common_prefix(names: list[str]) -> str:
    parts = [n.split(".") for n in names]
    out = []
    for comp in zip(*parts):
        if len(set(comp)) != 1:
            break
        out.append(comp[0])
    return ".".join(out)


def _widen(model: nn.Module, name: str, targets: list[str]) -> str:
    """The outermost module around ``name`` whose parameters all belong to the transition (so a non-residual
    block traced inline is named by the block, not by its inner Sequential)."""
    mods = dict(model.named_modules())
    covered = {id(p) for t in targets if t in mods for p in mods[t].parameters()}
    covered |= {id(get_attr(model, t)) for t in targets if t not in mods}
    while "." in name:
        parent = name.rsplit(".", 1)[0]
        params = list(mods[parent].parameters()) if parent in mods else []
        if not params or any(id(p) not in covered for p in params):
            break
        name = parent
    return name


class SplitError(ValueError):
    def __init__(self, message: str, hint: Optional[str] = None):
        super().__init__(message)
        self.hint = hint


def _check_block_call(n: fx.Node, module: nn.Module) -> None:
    """A block must be called on one tensor; other arguments only as constants equal to the defaults
    of its ``forward`` (then calling it on the tensor alone is the same computation)."""
    if not n.args or not isinstance(n.args[0], fx.Node):
        raise SplitError(f"block {n.target} ({type(module).__name__}) is not called on a tensor")
    extra = list(n.args[1:]) + list(n.kwargs.values())
    tensors = [k for k, v in list(enumerate(n.args[1:], 1)) + list(n.kwargs.items()) if isinstance(v, fx.Node)]
    if tensors:
        raise SplitError(f"block {n.target} ({type(module).__name__}) takes tensors computed by the model besides "
                         f"its input (argument {', '.join(map(str, tensors))}); resprobe runs a unit on its input "
                         "alone", f"register an adapter for {type(module).__name__} with "
                         "resprobe.anatomy.register_block whose parts compute those tensors themselves")
    if extra:
        try:
            bound = inspect.signature(module.forward).bind(None, *n.args[1:], **n.kwargs)
        except TypeError as e:
            raise SplitError(f"block {n.target}: cannot read its call ({e})") from e
        params = inspect.signature(module.forward).parameters
        differ = [k for k, v in list(bound.arguments.items())[1:]
                  if params[k].default is inspect.Parameter.empty or params[k].default != v]
        if differ:
            raise SplitError(f"block {n.target} ({type(module).__name__}) is called with {', '.join(differ)} other "
                             "than their defaults; resprobe runs a unit on its input alone")


def split_model(model: nn.Module, names: list[str], modules: list[nn.Module]) -> Chain:
    """Cut the model's graph (blocks as leaves) into stem, chain and head (see the module docstring).
    Raises :class:`SplitError` with the reason when the model is not stem -> chain -> head."""
    graph = trace(model, leaves={id(m) for m in modules})
    ph = [n for n in graph.nodes if n.op == "placeholder"]  # the image, then arguments fixed at their defaults
    g = _Graph(model, graph, ph[0], set(names))
    bnodes = [n for n in g.order if n.op == "call_module" and n.target in g.names]
    called = [n.target for n in bnodes]
    if sorted(called) != sorted(names) or len(set(called)) != len(called):
        raise SplitError(f"each residual block must be called exactly once in forward; calls: {called}")
    mods = dict(model.named_modules())
    for n in bnodes:
        _check_block_call(n, mods[n.target])
    items: list = []
    for k, (prev, nxt) in enumerate(zip(bnodes, bnodes[1:])):
        items.append(("block", prev.target, None))
        t = _transition(g, prev, nxt, k, items)
        if t is not None:
            items.append(t)
    items.append(("block", bnodes[-1].target, None))
    first = bnodes[0]
    stem = subgraph(model, graph, g.inp, first.args[0], g.in_dep, g.in_dep) if first.args[0] is not g.inp else None
    if stem is None and first.args[0] is not g.inp:
        raise SplitError(f"the input of the first block {first.target} is not computed from the image alone")
    return Chain(stem if stem is not None else identity, _head(g, bnodes[-1]), items)


class _Graph:
    """The traced model graph with what the split asks of it again and again."""

    def __init__(self, model: nn.Module, graph: fx.Graph, inp: fx.Node, names: set):
        self.model, self.graph, self.inp, self.names = model, graph, inp, names
        self.in_dep = depends(graph, inp)
        self.order = list(graph.nodes)
        self.pos = {n: k for k, n in enumerate(self.order)}
        # nodes that feed the result (checks such as torch._assert do not)
        self.live = ancestors(next(n for n in self.order if n.op == "output"))


def _transition(g: _Graph, prev: fx.Node, nxt: fx.Node, k: int, items: list) -> Optional[tuple]:
    """The code between two consecutive blocks as ``("transition", name, GraphModule)``; None when the
    next block reads the previous one's output directly."""
    arg = nxt.args[0]
    if arg is prev:
        if {u for u in prev.users if u in g.live} != {nxt}:
            raise SplitError(f"the output of block {prev.target} is used elsewhere than by {nxt.target}")
        return None
    prev_dep = depends(g.graph, prev)
    cone = (ancestors(arg, prev) & prev_dep) - {prev}
    segment = {n for n in g.order if g.pos[prev] < g.pos[n] < g.pos[nxt]}
    if not cone or not cone <= segment:
        raise SplitError(f"blocks {prev.target} -> {nxt.target}: the input of {nxt.target} does not come "
                         f"from the output of {prev.target}")
    for n in cone | {prev}:
        outside = [u for u in n.users if u not in cone and u is not nxt and u in g.live]
        if outside:
            raise SplitError(f"between blocks {prev.target} and {nxt.target}, {n.name} is also used by "
                             f"{outside[0].name} (a skip connection across blocks)")
    gm = subgraph(g.model, g.graph, prev, arg, g.in_dep, prev_dep)
    if gm is None:
        raise SplitError(f"between blocks {prev.target} and {nxt.target}, the code uses values computed "
                         "before the previous block")
    consts = {n for n in ancestors(arg, prev) if n.op == "get_attr"}
    targets = [n.target if n.op == "call_module" else n.target.rsplit(".", 1)[0]
               for n in cone | consts if n.op in ("call_module", "get_attr")]
    tname = _widen(g.model, _common_prefix(targets), targets) if targets else ""
    if not tname or tname in g.names or any(t[0] == "transition" and t[1] == tname for t in items):
        tname = f"transition{k}"
    return ("transition", tname, gm)


def _head(g: _Graph, last: fx.Node) -> fx.GraphModule:
    """Everything after the last block, as a GraphModule of the last block's output."""
    if not last.users:
        raise SplitError(f"the output of the last block {last.target} is unused")
    head_g, henv = fx.Graph(), {}
    henv[last] = head_g.placeholder("h")

    def lookup(a):
        if a in henv:
            return henv[a]
        if a not in g.in_dep:  # a parameter, buffer or constant: recomputed in the head
            henv[a] = head_g.node_copy(a, lookup)
            return henv[a]
        raise SplitError(f"the head uses {a.name!r}, computed before the last block")

    for n in g.order[g.pos[last] + 1:]:
        henv[n] = head_g.node_copy(n, lookup)
    return graph_module(g.model, head_g)

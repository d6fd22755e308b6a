"""Read a network's structure from its own ``forward`` with ``torch.fx``.

Two jobs, both on traced graphs (no re-implementation of the model's code):

- :func:`auto_units`: the residual units of a block whose class nobody registered. The block's
  ``forward`` is traced one level deep (its children are leaves). Walking back from the output, each
  unit ends in an addition of two tensors that both depend on the block's input; what follows the
  addition up to the next unit is the unit's ``post``; of the two operands, the one with fewer
  parameters (then fewer operations) is the shortcut (identity when it is the unit's input itself).
  A block whose graph has no such addition is not a residual block.
- :func:`split_model`: the model's graph with its blocks as leaves, cut into the *stem* (everything
  before the first block), the *chain* (blocks, and the code between two blocks as a non-residual
  *transition*, e.g. a downsampling layer between stages) and the *head* (everything after the last
  block).
"""
from __future__ import annotations

import inspect
import operator
import warnings
from typing import Callable, Optional

import torch
import torch.fx as fx
import torch.nn as nn

from .parts import UnitParts, identity

__all__ = ["auto_units", "trace", "depends", "ancestors", "subgraph", "get_attr", "graph_module"]

_ADDS_FN = {operator.add, operator.iadd, torch.add}
_ADDS_METHOD = {"add", "add_", "__add__", "__iadd__"}
_IDENTITY_LIKE = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_SHORTCUT_HINTS = ("shortcut", "downsample", "proj", "skip", "identity")


class _Tracer(fx.Tracer):
    """Leaves: the standard ``torch.nn`` modules, the ids in ``leaves``, and (``one_level``) every
    direct child of the traced root."""

    def __init__(self, leaves: set[int] = frozenset(), one_level: bool = False):
        super().__init__()
        self._leaves = leaves
        self._one_level = one_level

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if id(m) in self._leaves:
            return True
        if self._one_level and qualname and "." not in qualname:
            return True
        return super().is_leaf_module(m, qualname)


def trace(root: nn.Module, leaves: set[int] = frozenset(), one_level: bool = False) -> fx.Graph:
    """Trace ``root.forward`` with its first argument symbolic and every other argument fixed at its
    default (so that ``forward(x, mask=None)`` gives a graph of ``x`` alone)."""
    params = list(inspect.signature(root.forward).parameters.values())
    concrete = {p.name: p.default for p in params[1:]
                if p.default is not inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    tracer = _Tracer(set(leaves), one_level)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tracer.trace(root, concrete_args=concrete or None)


# --- graph helpers ------------------------------------------------------------------------------------

def depends(graph: fx.Graph, source: fx.Node) -> set[fx.Node]:
    """Nodes that depend on ``source`` (``source`` included)."""
    dep = {source}
    for n in graph.nodes:
        if any(a in dep for a in n.all_input_nodes):
            dep.add(n)
    return dep


def ancestors(node: fx.Node, stop: Optional[fx.Node] = None) -> set[fx.Node]:
    """``node`` and everything it is computed from, not looking past ``stop``."""
    seen, stack = set(), [node]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n is not stop:
            stack.extend(n.all_input_nodes)
    return seen


def _is_add(n: fx.Node, dep: set[fx.Node]) -> bool:
    if n.kwargs:
        return False
    if n.op == "call_function" and n.target in _ADDS_FN:
        args = n.args
    elif n.op == "call_method" and n.target in _ADDS_METHOD:
        args = n.args
    else:
        return False
    return len(args) == 2 and all(isinstance(a, fx.Node) and a in dep for a in args)


def _stream_input(n: fx.Node, dep: set[fx.Node]) -> Optional[fx.Node]:
    """The single input of ``n`` that depends on the traced input; None if there are several or none."""
    if n.op not in ("call_module", "call_function", "call_method"):
        return None
    ins = [a for a in n.all_input_nodes if a in dep]
    return ins[0] if len(set(ins)) == 1 else None


def _dominator(graph: fx.Graph, source: fx.Node, target: fx.Node, dep: set[fx.Node]) -> fx.Node:
    """The latest node (other than ``target``) on every path from ``source`` to ``target``."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    cands = sorted((ancestors(target, source) & dep) - {target}, key=order.get, reverse=True)

    def reaches_without(block: fx.Node) -> bool:
        seen, stack = set(), [source]
        while stack:
            n = stack.pop()
            if n is block or n in seen:
                continue
            if n is target:
                return True
            seen.add(n)
            stack.extend(u for u in n.users if u in dep)
        return False

    for d in cands:
        if d is source or not reaches_without(d):
            return d
    return source


def subgraph(root: nn.Module, graph: fx.Graph, start: fx.Node, end: fx.Node, dep: set[fx.Node],
              start_dep: set[fx.Node]) -> Optional[fx.GraphModule]:
    """A GraphModule computing ``end`` from ``start`` alone; None when ``end`` needs a value that depends
    on the traced input but not through ``start`` (the piece is not self-contained)."""
    need = ancestors(end, start)
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {start: g.placeholder("x")}
    for n in graph.nodes:
        if n not in need or n in env:
            continue
        if n.op in ("placeholder", "output"):
            return None  # another input of the traced graph
        if n in dep and n not in start_dep:
            return None
        env[n] = g.node_copy(n, lambda a: env[a])
    if end is start:
        return None
    g.output(env[end])
    gm = fx.GraphModule(root, g)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def _cone_modules(root: nn.Module, node: fx.Node, start: fx.Node, start_dep: set[fx.Node]) -> list[str]:
    """Targets of the call_module nodes computing ``node`` from ``start``."""
    return [n.target for n in ancestors(node, start) if n in start_dep and n is not start and n.op == "call_module"]


def _cost(root: nn.Module, node: fx.Node, start: fx.Node, start_dep: set[fx.Node]) -> tuple[int, int]:
    mods = dict(root.named_modules())
    targets = set(_cone_modules(root, node, start, start_dep))
    params = sum(p.numel() for t in targets for p in mods[t].parameters())
    cone = ancestors(node, start)
    params += sum(get_attr(root, n.target).numel() for n in cone
                  if n.op == "get_attr" and isinstance(get_attr(root, n.target), torch.Tensor))
    ops = sum(1 for n in cone if n in start_dep and n is not start and n.op != "get_attr")
    return params, ops


def get_attr(root: nn.Module, target: str):
    obj = root
    for part in target.split("."):
        obj = getattr(obj, part, None)
    return obj


def _is_identity_path(root: nn.Module, node: fx.Node, start: fx.Node) -> bool:
    mods = dict(root.named_modules())
    n = node
    while n is not start:
        if n.op != "call_module" or not isinstance(mods.get(n.target), _IDENTITY_LIKE) or len(n.all_input_nodes) != 1:
            return False
        n = n.all_input_nodes[0]
    return True


def _kind_of_shortcut(root: nn.Module, node: fx.Node, start: fx.Node, start_dep: set[fx.Node]) -> str:
    if node is start or _is_identity_path(root, node, start):
        return "identity"
    params, _ = _cost(root, node, start, start_dep)
    return "projection" if params > 0 else "zeropad"


def _main_child(root: nn.Module, targets: list[str]) -> str:
    """The unit's name within its block: the child module (first path component) with most parameters."""
    mods = dict(root.named_modules())
    best, size = "", -1
    for t in dict.fromkeys(targets):
        child = t.split(".")[0]
        n = sum(p.numel() for p in mods[child].parameters())
        if n > size:
            best, size = child, n
    return best


# --- blocks --------------------------------------------------------------------------------------------

def _chain_of_adds(graph: fx.Graph, p: fx.Node, e: fx.Node, dep: set) -> Optional[list[tuple]]:
    """Walking back from the output ``e`` to the input ``p``: each unit's (input, addition, end of its
    post-operation), in forward order; None when a piece of the stream is not a residual unit."""
    found = []
    while e is not p:
        n, post_end = e, e
        while not _is_add(n, dep):
            src = _stream_input(n, dep)
            if src is None or src is p:
                return None  # a non-residual piece: not a chain of residual units
            n = src
        add = n
        d = _dominator(graph, p, add, dep)
        m = d
        while m is not p and not _is_add(m, dep):
            m = _stream_input(m, dep)
            if m is None:
                return None
        start = p if m is p else d
        found.append((start, add, post_end))
        e = start
    return found[::-1]


def _unit_parts(block: nn.Module, graph: fx.Graph, nodes: tuple, dep: set) -> Optional[UnitParts]:
    """One unit's branch, shortcut and post-operation from its (input, addition, end) nodes."""
    start, add, post_end = nodes
    sdep = depends(graph, start)
    a, b = add.args
    # the shortcut: the unit's input itself, else the cheaper operand (a name hint breaks ties)
    ca, cb = _cost(block, a, start, sdep), _cost(block, b, start, sdep)
    hint_a = any(h in str(t) for t in _cone_modules(block, a, start, sdep) for h in _SHORTCUT_HINTS)
    hint_b = any(h in str(t) for t in _cone_modules(block, b, start, sdep) for h in _SHORTCUT_HINTS)
    if a is start or _is_identity_path(block, a, start):
        s_node, f_node = a, b
    elif b is start or _is_identity_path(block, b, start):
        s_node, f_node = b, a
    else:
        s_node, f_node = (a, b) if (ca, not hint_a) <= (cb, not hint_b) else (b, a)
    f = subgraph(block, graph, start, f_node, dep, sdep)
    s = identity if s_node is start else subgraph(block, graph, start, s_node, dep, sdep)
    if f is None or s is None:
        return None
    post: Callable = identity
    if post_end is not add:
        post = subgraph(block, graph, add, post_end, dep, depends(graph, add))
        if post is None:
            return None
    mods = dict(block.named_modules())
    targets = _cone_modules(block, f_node, start, sdep) + _cone_modules(block, s_node, start, sdep)
    owned = tuple(dict.fromkeys(mods[t.split(".")[0]] for t in targets))
    return UnitParts(branch=f, shortcut=s, post=post, shortcut_kind=_kind_of_shortcut(block, s_node, start, sdep),
                     name=_main_child(block, _cone_modules(block, f_node, start, sdep)), modules=owned)


def auto_units(block: nn.Module) -> Optional[list[UnitParts]]:
    """The residual units of ``block`` read from its traced ``forward``; None if it has none or its
    graph is not a chain of units (see the module docstring)."""
    try:
        graph = trace(block, one_level=True)
    except Exception:  # noqa: BLE001 - an untraceable module is simply not decomposed automatically
        return None
    ph = [n for n in graph.nodes if n.op == "placeholder"]  # the input, then arguments fixed at their defaults
    out = [n for n in graph.nodes if n.op == "output"]
    if not ph or len(out) != 1 or not isinstance(out[0].args[0], fx.Node):
        return None
    p = ph[0]
    dep = depends(graph, p)
    found = _chain_of_adds(graph, p, out[0].args[0], dep)
    if found is None:
        return None
    units = []
    for start, add, post_end in found:
        u = _unit_parts(block, graph, (start, add, post_end), dep)
        if u is None:
            return None
        units.append(u)
    if len(units) == 1:
        units[0].name = ""
    names = [u.name for u in units]
    for i, u in enumerate(units):
        if names.count(u.name) > 1:
            u.name = f"{u.name}{i}" if u.name else f"unit{i}"
    return units


# --- the model --------------------------------------------------------------------------------------


def graph_module(root: nn.Module, graph: fx.Graph) -> fx.GraphModule:
    gm = fx.GraphModule(root, graph)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm



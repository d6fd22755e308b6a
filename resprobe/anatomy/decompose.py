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

__all__ = ["auto_units", "split_model", "Chain", "trace"]

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

def _depends(graph: fx.Graph, source: fx.Node) -> set[fx.Node]:
    """Nodes that depend on ``source`` (``source`` included)."""
    dep = {source}
    for n in graph.nodes:
        if any(a in dep for a in n.all_input_nodes):
            dep.add(n)
    return dep


def _ancestors(node: fx.Node, stop: Optional[fx.Node] = None) -> set[fx.Node]:
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
    cands = sorted((_ancestors(target, source) & dep) - {target}, key=order.get, reverse=True)

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


def _subgraph(root: nn.Module, graph: fx.Graph, start: fx.Node, end: fx.Node, dep: set[fx.Node],
              start_dep: set[fx.Node]) -> Optional[fx.GraphModule]:
    """A GraphModule computing ``end`` from ``start`` alone; None when ``end`` needs a value that depends
    on the traced input but not through ``start`` (the piece is not self-contained)."""
    need = _ancestors(end, start)
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
    return [n.target for n in _ancestors(node, start) if n in start_dep and n is not start and n.op == "call_module"]


def _cost(root: nn.Module, node: fx.Node, start: fx.Node, start_dep: set[fx.Node]) -> tuple[int, int]:
    mods = dict(root.named_modules())
    targets = set(_cone_modules(root, node, start, start_dep))
    params = sum(p.numel() for t in targets for p in mods[t].parameters())
    cone = _ancestors(node, start)
    params += sum(_get_attr(root, n.target).numel() for n in cone
                  if n.op == "get_attr" and isinstance(_get_attr(root, n.target), torch.Tensor))
    ops = sum(1 for n in cone if n in start_dep and n is not start and n.op != "get_attr")
    return params, ops


def _get_attr(root: nn.Module, target: str):
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
    dep = _depends(graph, p)
    e = out[0].args[0]
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
    found.reverse()
    units = []
    for start, add, post_end in found:
        sdep = _depends(graph, start)
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
        f = _subgraph(block, graph, start, f_node, dep, sdep)
        s = identity if s_node is start else _subgraph(block, graph, start, s_node, dep, sdep)
        if f is None or s is None:
            return None
        post: Callable = identity
        if post_end is not add:
            post = _subgraph(block, graph, add, post_end, dep, _depends(graph, add))
            if post is None:
                return None
        mods = dict(block.named_modules())
        targets = _cone_modules(block, f_node, start, sdep) + _cone_modules(block, s_node, start, sdep)
        owned = tuple(dict.fromkeys(mods[t.split(".")[0]] for t in targets))
        units.append(UnitParts(branch=f, shortcut=s, post=post,
                               shortcut_kind=_kind_of_shortcut(block, s_node, start, sdep),
                               name=_main_child(block, _cone_modules(block, f_node, start, sdep)),
                               modules=owned))
    if len(units) == 1:
        units[0].name = ""
    names = [u.name for u in units]
    for i, u in enumerate(units):
        if names.count(u.name) > 1:
            u.name = f"{u.name}{i}" if u.name else f"unit{i}"
    return units


# --- the model --------------------------------------------------------------------------------------

class Chain:
    """What :func:`split_model` returns: stem and head GraphModules, and the chain between them as
    ``(kind, name, callable)`` with kind ``block`` (callable: the block module) or ``transition``."""

    def __init__(self, stem, head, items):
        self.stem, self.head, self.items = stem, head, items


def _graph_module(root: nn.Module, graph: fx.Graph) -> fx.GraphModule:
    gm = fx.GraphModule(root, graph)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


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
    covered |= {id(_get_attr(model, t)) for t in targets if t not in mods}
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
    inp = ph[0]
    in_dep = _depends(graph, inp)
    name_set = set(names)
    order = list(graph.nodes)
    pos = {n: k for k, n in enumerate(order)}
    bnodes = [n for n in order if n.op == "call_module" and n.target in name_set]
    called = [n.target for n in bnodes]
    if sorted(called) != sorted(names) or len(set(called)) != len(called):
        raise SplitError(f"each residual block must be called exactly once in forward; calls: {called}")
    mods = dict(model.named_modules())
    for n in bnodes:
        _check_block_call(n, mods[n.target])
    out_node = next(n for n in order if n.op == "output")
    live = _ancestors(out_node)  # nodes that feed the result (checks such as torch._assert do not)
    items: list = []
    for k, (prev, nxt) in enumerate(zip(bnodes, bnodes[1:])):
        items.append(("block", prev.target, None))
        arg = nxt.args[0]
        if arg is prev:
            if {u for u in prev.users if u in live} != {nxt}:
                raise SplitError(f"the output of block {prev.target} is used elsewhere than by {nxt.target}")
            continue
        prev_dep = _depends(graph, prev)
        cone = (_ancestors(arg, prev) & prev_dep) - {prev}
        segment = {n for n in order if pos[prev] < pos[n] < pos[nxt]}
        if not cone or not cone <= segment:
            raise SplitError(f"blocks {prev.target} -> {nxt.target}: the input of {nxt.target} does not come "
                             f"from the output of {prev.target}")
        for n in cone | {prev}:
            outside = [u for u in n.users if u not in cone and u is not nxt and u in live]
            if outside:
                raise SplitError(f"between blocks {prev.target} and {nxt.target}, {n.name} is also used by "
                                 f"{outside[0].name} (a skip connection across blocks)")
        gm = _subgraph(model, graph, prev, arg, in_dep, prev_dep)
        if gm is None:
            raise SplitError(f"between blocks {prev.target} and {nxt.target}, the code uses values computed "
                             "before the previous block")
        consts = {n for n in _ancestors(arg, prev) if n.op == "get_attr"}
        targets = [n.target if n.op == "call_module" else n.target.rsplit(".", 1)[0]
                   for n in cone | consts if n.op in ("call_module", "get_attr")]
        tname = _widen(model, _common_prefix(targets), targets) if targets else ""
        if not tname or tname in name_set or any(t[0] == "transition" and t[1] == tname for t in items):
            tname = f"transition{k}"
        items.append(("transition", tname, gm))
    items.append(("block", bnodes[-1].target, None))

    first, last = bnodes[0], bnodes[-1]
    stem = _subgraph(model, graph, inp, first.args[0], in_dep, in_dep) if first.args[0] is not inp else None
    if stem is None and first.args[0] is not inp:
        raise SplitError(f"the input of the first block {first.target} is not computed from the image alone")

    if not last.users:
        raise SplitError(f"the output of the last block {last.target} is unused")
    head_g, henv = fx.Graph(), {}
    henv[last] = head_g.placeholder("h")

    def lookup(a):
        if a in henv:
            return henv[a]
        if a not in in_dep:  # a parameter, buffer or constant: recomputed in the head
            henv[a] = head_g.node_copy(a, lookup)
            return henv[a]
        raise SplitError(f"the head uses {a.name!r}, computed before the last block")

    for n in order[pos[last] + 1:]:
        henv[n] = head_g.node_copy(n, lookup)
    return Chain(stem if stem is not None else identity, _graph_module(model, head_g), items)

"""The residual anatomy: any ResNet seen as stem -> blocks -> head.

``anatomy(model)`` finds the registered residual blocks (see :mod:`.adapters`), orders them as the
forward pass calls them, and splits the model's own forward into a *stem* (everything before the
first block) and a *head* (everything after the last) with ``torch.fx``: the stem and head are the
model's own code, not a re-implementation. A model that ``torch.fx`` cannot trace can supply them
with :func:`register_model`.

``view.run(h, start=i, edits=Edits(...))`` runs the network from the input of block ``i`` to the
logits with blocks deleted (branch dropped, shortcut and post-activation kept; a plain block becomes
the identity), given another block's branch (reordering), scaled or replaced.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Optional, Sequence

import torch
import torch.fx as fx
import torch.nn as nn

from .adapters import BlockParts, parts_for, registered_block_types

__all__ = ["AnatomyError", "Block", "Edits", "ResidualView", "anatomy", "register_model"]

Tensor = torch.Tensor


class AnatomyError(ValueError):
    """The model cannot be seen as stem -> residual blocks -> head, or an edit is invalid."""


@dataclass
class Block:
    """One residual block: its name (module path), position, parts and (once known) shapes."""

    name: str
    index: int
    stage: int
    index_in_stage: int
    module: nn.Module
    parts: BlockParts
    in_shape: Optional[tuple] = None
    out_shape: Optional[tuple] = None

    @property
    def shortcut_kind(self) -> str:
        return self.parts.shortcut_kind

    @property
    def residual(self) -> bool:
        return self.parts.shortcut is not None

    @property
    def downsample(self) -> bool:
        """True when the block changes the tensor's shape (or has a non-identity shortcut)."""
        if self.in_shape is not None and self.out_shape is not None:
            return tuple(self.in_shape) != tuple(self.out_shape)
        return self.shortcut_kind in ("projection", "zeropad")

    def branch(self, x: Tensor) -> Tensor:
        return self.parts.branch(x)

    def shortcut(self, x: Tensor) -> Tensor:
        if self.parts.shortcut is None:
            raise AnatomyError(f"block {self.name} is a plain block: it has no shortcut")
        return self.parts.shortcut(x)

    def post(self, t: Tensor) -> Tensor:
        return self.parts.post(t)

    def decomposed(self, x: Tensor) -> Tensor:
        """``post(S(x) + F(x))`` (``post(F(x))`` for a plain block), computed from the parts."""
        f = self.branch(x)
        return self.post(f if not self.residual else self.shortcut(x) + f)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())


@dataclass(frozen=True)
class Edits:
    """A modification of the network, by block index.

    - ``delete``: drop the residual branch (keep shortcut and post-activation); plain blocks become
      the identity (only shape-preserving ones);
    - ``branch_from``: ``{i: j}`` block ``i`` uses the residual branch of block ``j`` (reordering);
      for plain blocks, block ``i`` is replaced by block ``j`` whole;
    - ``scale``: ``{i: s}`` multiply block ``i``'s residual branch by ``s``;
    - ``replace``: ``{i: callable}`` replace block ``i`` entirely.
    """

    delete: frozenset = frozenset()
    branch_from: Mapping[int, int] = field(default_factory=dict)
    scale: Mapping[int, float] = field(default_factory=dict)
    replace: Mapping[int, Callable[[Tensor], Tensor]] = field(default_factory=dict)

    def touched(self) -> set[int]:
        moved = {i for i, j in self.branch_from.items() if i != j}
        return set(self.delete) | moved | set(self.scale) | set(self.replace)

    def first(self) -> Optional[int]:
        t = self.touched()
        return min(t) if t else None

    def is_empty(self) -> bool:
        return not self.touched()


NO_EDITS = Edits()

# model class -> (stem(model, x), head(model, h)) for models that torch.fx cannot split
_MODEL_ADAPTERS: dict[type, tuple[Callable, Callable]] = {}


def register_model(cls: type, stem: Callable[[nn.Module, Tensor], Tensor],
                   head: Callable[[nn.Module, Tensor], Tensor]) -> None:
    """Give the stem and head of a model class explicitly (for models ``torch.fx`` cannot trace)."""
    _MODEL_ADAPTERS[cls] = (stem, head)


def _find_blocks(model: nn.Module) -> list[tuple[str, nn.Module, BlockParts]]:
    found = []
    skip: list[str] = []
    for name, mod in model.named_modules():
        if any(name.startswith(p + ".") for p in skip):
            continue
        parts = parts_for(mod)
        if parts is not None and name:
            found.append((name, mod, parts))
            skip.append(name)
    return found


def _no_blocks_error(model: nn.Module) -> AnatomyError:
    types = sorted({type(m).__name__ for m in model.modules()})
    known = ", ".join(sorted(t.__module__.split(".")[0] + "." + t.__name__ for t in registered_block_types()))
    return AnatomyError(
        f"no residual block found in {type(model).__name__}. Module types in the model: {', '.join(types)}. "
        f"Known block types: {known}. If your model has residual blocks of its own class, register them with "
        "resprobe.anatomy.register_block(YourBlock, parts_fn) (see resprobe/anatomy/adapters.py)."
    )


class _BlockTracer(fx.Tracer):
    def __init__(self, leaves: set[int]):
        super().__init__()
        self._leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return id(m) in self._leaves or super().is_leaf_module(m, qualname)


def _split_fx(model: nn.Module, names: list[str], modules: list[nn.Module]):
    """Split the model's traced graph into stem and head GraphModules; return them and the block order."""
    tracer = _BlockTracer({id(m) for m in modules})
    try:
        graph = tracer.trace(model)
    except Exception as e:  # noqa: BLE001 - any tracing failure gets the same advice
        raise AnatomyError(
            f"torch.fx could not trace {type(model).__name__} ({type(e).__name__}: {e}); give its stem and head "
            "with resprobe.anatomy.register_model(ModelClass, stem=fn(model, x), head=fn(model, h))"
        ) from e
    name_set = set(names)
    order = list(graph.nodes)
    bnodes = [n for n in order if n.op == "call_module" and n.target in name_set]
    called = [n.target for n in bnodes]
    if sorted(called) != sorted(names) or len(set(called)) != len(called):
        raise AnatomyError(f"each residual block must be called exactly once in forward; calls: {called}")
    for prev, nxt in zip(bnodes, bnodes[1:]):
        if tuple(nxt.args) != (prev,) or nxt.kwargs or set(prev.users) != {nxt}:
            raise AnatomyError(
                f"blocks {prev.target} -> {nxt.target} are not chained directly (the output of one must be the "
                "only input of the next, and used nowhere else); use register_model for such a model")
    first, last = bnodes[0], bnodes[-1]
    if len(first.args) != 1 or first.kwargs:
        raise AnatomyError(f"block {first.target} must take a single tensor argument")
    if len(last.users) == 0:
        raise AnatomyError(f"the output of the last block {last.target} is unused")

    stem_g, env = fx.Graph(), {}
    for n in order:
        if n is first:
            break
        env[n] = stem_g.node_copy(n, lambda a: env[a])
    stem_g.output(env[first.args[0]])

    head_g, henv = fx.Graph(), {}
    henv[last] = head_g.placeholder("h")
    pos = {n: k for k, n in enumerate(order)}

    def lookup(a):
        if a in henv:
            return henv[a]
        if a.op == "get_attr":  # a parameter or buffer fetched before the blocks
            henv[a] = head_g.node_copy(a, lookup)
            return henv[a]
        raise AnatomyError(
            f"the head uses {a.name!r}, computed before the last block; the model is not stem -> blocks -> head "
            "(use register_model)")

    for n in order[pos[last] + 1:]:
        henv[n] = head_g.node_copy(n, lookup)
    return _graph_module(model, stem_g), _graph_module(model, head_g), called


def _graph_module(root: nn.Module, graph: fx.Graph) -> fx.GraphModule:
    gm = fx.GraphModule(root, graph)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


class ResidualView:
    """A model seen as ``stem -> blocks -> head``. The model itself is never modified."""

    def __init__(self, model: nn.Module):
        self.model = model
        found = _find_blocks(model)
        if not found:
            raise _no_blocks_error(model)
        names = [n for n, _, _ in found]
        by_name = {n: (m, p) for n, m, p in found}
        adapter = next((v for c, v in _MODEL_ADAPTERS.items() if isinstance(model, c)), None)
        if adapter is not None:
            stem_fn, head_fn = adapter
            self._stem = lambda x: stem_fn(model, x)
            self._head = lambda h: head_fn(model, h)
            order = names  # registration order; the user's adapter vouches for it
        else:
            stem_gm, head_gm, order = _split_fx(model, names, [m for _, m, _ in found])
            self._stem, self._head = stem_gm, head_gm
        parents = [n.rsplit(".", 1)[0] if "." in n else "" for n in order]
        self.blocks: list[Block] = []
        stage, in_stage = 0, 0
        for i, (n, parent) in enumerate(zip(order, parents)):
            if i > 0 and parent != parents[i - 1]:
                stage, in_stage = stage + 1, 0
            m, p = by_name[n]
            self.blocks.append(Block(n, i, stage, in_stage, m, p))
            in_stage += 1
        self._index = {b.name: b.index for b in self.blocks}
        self._shape_key = None

    # --- lookup ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.blocks)

    def __iter__(self):
        return iter(self.blocks)

    def __getitem__(self, key) -> Block:
        return self.blocks[self.index(key)]

    @property
    def names(self) -> list[str]:
        return [b.name for b in self.blocks]

    @property
    def n_stages(self) -> int:
        return self.blocks[-1].stage + 1

    def index(self, key) -> int:
        """Block index from an index or a name; a bad name lists the valid ones."""
        if isinstance(key, int):
            if not -len(self.blocks) <= key < len(self.blocks):
                raise AnatomyError(f"block index {key} out of range 0..{len(self.blocks) - 1}")
            return key % len(self.blocks)
        if key not in self._index:
            raise AnatomyError(f"unknown block {key!r}; valid block names: {', '.join(self.names)}")
        return self._index[key]

    def indices(self, keys: Iterable) -> list[int]:
        return [self.index(k) for k in keys]

    # --- execution ------------------------------------------------------------------------------
    def stem(self, x: Tensor) -> Tensor:
        return self._stem(x)

    def head(self, h: Tensor) -> Tensor:
        return self._head(h)

    def run_block(self, i: int, x: Tensor, edits: Edits = NO_EDITS, decompose: bool = False) -> Tensor:
        b = self.blocks[i]
        if i in edits.replace:
            return edits.replace[i](x)
        deleted = i in edits.delete
        src = edits.branch_from.get(i, i)
        scale = edits.scale.get(i)
        if not deleted and src == i and scale is None:
            return b.decomposed(x) if decompose else b.module(x)
        if not b.residual:
            if deleted:
                if not self.shape_preserving(i):
                    raise AnatomyError(f"plain block {b.name} changes shape {b.in_shape} -> {b.out_shape}: "
                                       "it cannot be deleted (replaced by the identity)")
                return x
            y = self.blocks[src].module(x)
            return y if scale is None else y * scale
        if deleted:
            return b.post(b.shortcut(x))
        f = self.blocks[src].branch(x)
        if scale is not None:
            f = f * scale
        return b.post(b.shortcut(x) + f)

    def run(self, h: Tensor, start: int = 0, stop: Optional[int] = None, edits: Edits = NO_EDITS,
            head: bool = True, decompose: bool = False,
            observe: Optional[Callable[[int, Tensor, Tensor], None]] = None) -> Tensor:
        """Run from the input ``h`` of block ``start`` through block ``stop - 1`` (then the head).

        ``start=0`` with an image batch: pass ``view.stem(x)`` as ``h``, or use :meth:`forward`.
        ``observe(i, x_in, x_out)`` is called after each block.
        """
        stop = len(self.blocks) if stop is None else stop
        for i in range(start, stop):
            out = self.run_block(i, h, edits, decompose)
            if observe is not None:
                observe(i, h, out)
            h = out
        return self.head(h) if head and stop == len(self.blocks) else h

    def forward(self, x: Tensor, edits: Edits = NO_EDITS, decompose: bool = False) -> Tensor:
        """Image -> logits through stem, blocks (with ``edits``) and head."""
        return self.run(self.stem(x), 0, edits=edits, decompose=decompose)

    __call__ = forward

    def block_inputs(self, x: Tensor) -> list[Tensor]:
        """Inputs of every block, and the input of the head as the last element (n + 1 tensors)."""
        hs = [self.stem(x)]
        for i in range(len(self.blocks)):
            hs.append(self.run_block(i, hs[-1]))
        return hs

    # --- shapes ---------------------------------------------------------------------------------
    def infer_shapes(self, input_shape: Sequence[int]) -> list[tuple[tuple, tuple]]:
        """Per-block (input shape, output shape) without the batch dimension, for ``input_shape``."""
        key = tuple(input_shape)
        if self._shape_key != key:
            from .hooks import preserved_state
            p = next(self.model.parameters(), None)
            dev = p.device if p is not None else "cpu"
            dtype = p.dtype if p is not None else torch.float32
            with preserved_state(self.model), torch.no_grad():
                self.model.eval()
                x = torch.zeros((2, *key), device=dev, dtype=dtype)

                def obs(i, a, b):
                    self.blocks[i].in_shape, self.blocks[i].out_shape = tuple(a.shape[1:]), tuple(b.shape[1:])

                self.run(self.stem(x), observe=obs, head=False)
            self._shape_key = key
        return [(b.in_shape, b.out_shape) for b in self.blocks]

    def shape_preserving(self, i: int) -> bool:
        b = self.blocks[i]
        if b.in_shape is None:
            raise AnatomyError("block shapes are unknown: call view.infer_shapes(input_shape) first")
        return tuple(b.in_shape) == tuple(b.out_shape)

    def deletable(self, i: int) -> bool:
        """Residual blocks always; plain blocks only when they preserve shape."""
        return self.blocks[i].residual or self.shape_preserving(i)

    def check_decomposition(self, x: Tensor) -> float:
        """Max |model(x) - stem/blocks(F, S, post)/head(x)| in eval mode, without grad."""
        from .hooks import preserved_state
        with preserved_state(self.model), torch.no_grad():
            self.model.eval()
            return (self.model(x) - self.forward(x, decompose=True)).abs().max().item()

    def table(self) -> list[dict]:
        """One dict per block: name, stage, index in stage, shapes, shortcut kind, parameters."""
        return [dict(name=b.name, stage=b.stage, index_in_stage=b.index_in_stage,
                     in_shape=b.in_shape, out_shape=b.out_shape, shortcut=b.shortcut_kind,
                     downsample=b.downsample, params=b.n_params()) for b in self.blocks]


def anatomy(model: nn.Module, input_shape: Optional[Sequence[int]] = None) -> ResidualView:
    """See ``model`` as stem -> residual blocks -> head (optionally inferring block shapes)."""
    view = ResidualView(model)
    if input_shape is not None:
        view.infer_shapes(input_shape)
    return view

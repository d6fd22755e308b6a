"""The residual anatomy: a network seen as stem -> residual units -> head.

``anatomy(model)`` finds the model's blocks (registered, from an adapter module, or decomposed
automatically from their own ``forward``; see :mod:`.parts`), orders them as the forward pass calls
them, and cuts the model's own forward into a *stem*, the *chain* (units, and non-residual
transitions between blocks) and a *head* with ``torch.fx`` (see :mod:`.decompose`): the stem and
the head are the model's own code. A model ``torch.fx`` cannot trace supplies them with
:func:`register_model`.

``view.run(h, start=i, edits=Edits(...))`` runs the network from the input of unit ``i`` to the
logits with units deleted (branch dropped, shortcut and post kept; a plain unit becomes the
identity), given another unit's branch (reordering), scaled, replaced, run in parallel or repeated.
``view.walk(h)`` yields every unit's input, shortcut, branch and output (the cache verb);
``view.run_with_cache(x)`` is the thin wrapper that keeps them.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, Optional, Sequence

import torch
import torch.nn as nn

from .split import SplitError, split_model
from .parts import UnitParts
from .units import NO_EDITS, PARALLEL_MODES, AnatomyError, BlockInfo, Edits, Step, Tensor, Unit, parallel_entry
from .blocks import MODEL_ADAPTERS, find_blocks, no_blocks_error, register_model  # noqa: F401

__all__ = ["AnatomyError", "Unit", "BlockInfo", "Edits", "Step", "ResidualView", "anatomy", "register_model",
           "PARALLEL_MODES"]


class _Transition(nn.Module):
    """The code between two blocks, run as a non-residual unit."""

    def __init__(self, gm: nn.Module):
        super().__init__()
        self.gm = gm

    def forward(self, x):
        return self.gm(x)


class ResidualView:
    """A model seen as ``stem -> units -> head``. The model itself is never modified."""

    def __init__(self, model: nn.Module):
        self.model = model
        found = find_blocks(model)
        if not found:
            raise no_blocks_error(model)
        by_name = {n: (m, u, a) for n, m, u, a in found}
        self._auto = {n for n, _, _, a in found if a}
        adapter = next((v for c, v in MODEL_ADAPTERS.items() if isinstance(model, c)), None)
        self._sample, self._reference = adapter[2:] if adapter is not None else (None, None)
        self._block_forward = adapter is None  # a registered model's blocks may need more than their input
        if adapter is not None:
            stem_fn, head_fn = adapter[:2]
            self._stem = lambda x: stem_fn(model, x)
            self._head = lambda h: head_fn(model, h)
            items = [("block", n, None) for n, _, _, _ in found]
        else:
            try:
                chain = split_model(model, [n for n, _, _, _ in found], [m for _, m, _, _ in found])
            except SplitError as e:
                raise AnatomyError(f"{type(model).__name__} is not stem -> blocks -> head: {e}",
                                   e.hint or "give its stem and head with resprobe.anatomy.register_model("
                                   "ModelClass, stem=fn(model, x), head=fn(model, h))") from e
            except Exception as e:  # noqa: BLE001 - any tracing failure gets the same advice
                raise AnatomyError(f"torch.fx could not trace {type(model).__name__} ({type(e).__name__}: {e})",
                                   "give its stem and head with resprobe.anatomy.register_model(ModelClass, "
                                   "stem=fn(model, x), head=fn(model, h))") from e
            self._stem, self._head, items = chain.stem, chain.head, chain.items
        self.units: list[Unit] = []
        self.blocks: list[BlockInfo] = []
        self._build(items, by_name)
        self._index = {u.name: u.index for u in self.units}
        self._block_index = {b.name: b.index for b in self.blocks}
        self._shape_key = None

    def _build(self, items, by_name) -> None:
        parents = [n.rsplit(".", 1)[0] if "." in n else "" for kind, n, _ in items]
        stage, in_stage, prev_parent, after_transition = 0, 0, None, False
        pending: list = []
        for (kind, name, gm), parent in zip(items, parents):
            if kind == "transition":
                pending.append((name, gm))
                after_transition = True
                continue
            if prev_parent is not None and (parent != prev_parent or after_transition):
                stage, in_stage = stage + 1, 0
            for tname, tgm in pending:  # a transition belongs to the stage it leads into
                self._add_block(tname, _Transition(tgm), [UnitParts(branch=tgm, kind="transition", modules=(tgm,))],
                                stage, -1, "transition")
            pending = []
            mod, units, _ = by_name[name]
            self._add_block(name, mod, units, stage, in_stage, "block")
            in_stage += 1
            prev_parent, after_transition = parent, False

    def _add_block(self, name, module, units, stage, in_stage, kind) -> None:
        b = BlockInfo(name, len(self.blocks), stage, in_stage, [], module, kind)
        for p in units:
            uname = f"{name}.{p.name}" if p.name else name
            u = Unit(uname, len(self.units), name, b.index, p.name, stage, in_stage, p, module)
            b.units.append(u.index)
            self.units.append(u)
        self.blocks.append(b)

    # --- lookup ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.units)

    def __iter__(self) -> Iterator[Unit]:
        return iter(self.units)

    def __getitem__(self, key) -> Unit:
        return self.units[self.index(key)]

    @property
    def names(self) -> list[str]:
        return [u.name for u in self.units]

    @property
    def n_stages(self) -> int:
        return self.units[-1].stage + 1

    def index(self, key) -> int:
        """Unit index from an index or a unit name (a one-unit block's name is its unit's name)."""
        if isinstance(key, (int,)) and not isinstance(key, bool):
            if not -len(self.units) <= key < len(self.units):
                raise AnatomyError(f"unit index {key} out of range 0..{len(self.units) - 1}")
            return key % len(self.units)
        if key in self._index:
            return self._index[key]
        if key in self._block_index:
            b = self.blocks[self._block_index[key]]
            if len(b.units) == 1:
                return b.units[0]
            raise AnatomyError(f"{key!r} is a block of {len(b.units)} units "
                               f"({', '.join(self.units[i].name for i in b.units)})", "name one of its units")
        raise AnatomyError(f"unknown unit or block {key!r}; valid names: {', '.join(self.names)}")

    def indices(self, keys: Iterable) -> list[int]:
        """Unit indices of names or indices; a block's name stands for all its units."""
        out: list[int] = []
        for k in keys:
            if isinstance(k, str) and k not in self._index and k in self._block_index:
                out += self.blocks[self._block_index[k]].units
            else:
                out.append(self.index(k))
        return out

    def block_of(self, i: int) -> BlockInfo:
        return self.blocks[self.units[i].block_index]

    # --- execution ------------------------------------------------------------------------------
    def stem(self, x: Tensor) -> Tensor:
        return self._stem(x)

    def head(self, h: Tensor) -> Tensor:
        return self._head(h)

    def _unit_once(self, i: int, x: Tensor, edits: Edits, decompose: bool) -> Tensor:
        u = self.units[i]
        deleted = i in edits.delete
        src = edits.branch_from.get(i, i)
        scale = edits.scale.get(i)
        if edits.drop.get(i) and not deleted:
            try:
                branch = self.units[src].parts.paths_branch(edits.drop[i])
            except ValueError as e:
                raise AnatomyError(str(e)) from None
            return u.parts.output(x, branch=branch, scale=scale)
        if not deleted and src == i and scale is None:
            if decompose or not self._block_forward or len(self.blocks[u.block_index].units) > 1:
                return u.decomposed(x)
            return u.module(x)
        if u.kind == "transition":
            raise AnatomyError(f"{u.name} is a non-residual transition unit: it cannot be deleted, moved or scaled")
        if deleted and not self.deletable(i):
            raise AnatomyError(f"plain unit {u.name} changes shape {u.in_shape} -> {u.out_shape}: "
                               "it cannot be deleted (replaced by the identity)")
        if not u.residual and not deleted and src != i:
            whole = len(self.block_of(src).units) == 1 and self._block_forward
            y = self.units[src].module(x) if whole else self.units[src].decomposed(x)
            return y if scale is None else y * scale
        return u.parts.output(x, branch=None if src == i else self.units[src].branch, scale=scale, deleted=deleted)

    def run_unit(self, i: int, x: Tensor, edits: Edits = NO_EDITS, decompose: bool = False) -> Tensor:
        """Unit ``i`` (with its edits) on ``x``."""
        if i in edits.replace:
            return edits.replace[i](x)
        for _ in range(int(edits.repeat.get(i, 1))):
            x = self._unit_once(i, x, edits, decompose)
        return x

    def _parallel(self, x: Tensor, group: tuple, edits: Edits) -> Tensor:
        first, last, mode, by = parallel_entry(group)
        if mode not in PARALLEL_MODES:
            raise AnatomyError(f"parallel mode must be one of {PARALLEL_MODES}, got {mode!r}")
        if by == "block":
            return self._parallel_blocks(x, first, last, mode, edits)
        units = self.units[first:last + 1]
        bad = [u.name for u in units if u.shortcut_kind != "identity"]
        if bad:
            raise AnatomyError(f"units {', '.join(bad)} have no identity shortcut: they cannot run in parallel")
        fs = [self.units[edits.branch_from.get(u.index, u.index)].branch(x) * edits.scale.get(u.index, 1.0)
              for u in units if u.index not in edits.delete]
        total = torch.stack(fs).sum(0) if fs else torch.zeros_like(x)
        if mode == "mean" and fs:
            total = total / len(fs)
        return units[-1].post(x + total)

    def _parallel_blocks(self, x: Tensor, first: int, last: int, mode: str, edits: Edits) -> Tensor:
        """Blocks ``first..last`` (unit indices on block boundaries) each run on ``x`` (their units in sequence,
        with the other edits); ``x + Σ (block(x) − x)``, or the mean of the blocks' outputs."""
        blocks = [b for b in self.blocks if first <= b.units[0] and b.units[-1] <= last]
        if not blocks or blocks[0].units[0] != first or blocks[-1].units[-1] != last or \
                sum(len(b.units) for b in blocks) != last - first + 1:
            raise AnatomyError(f"units {first}..{last} do not span whole blocks: they cannot run as parallel blocks")
        bad = [b.name for b in blocks if not all(self.shape_preserving(i) for i in b.units)]
        if bad:
            raise AnatomyError(f"blocks {', '.join(bad)} change the shape: they cannot run in parallel")
        total = torch.zeros_like(x)
        for b in blocks:
            h = x
            for i in b.units:
                h = self.run_unit(i, h, edits)
            total = total + (h - x)
        return x + (total / len(blocks) if mode == "mean" else total)

    def step(self, i: int, h: Tensor, edits: Edits = NO_EDITS) -> tuple[Tensor, int]:
        """Unit ``i`` on its input ``h`` with ``edits``, or the parallel range that starts at ``i``:
        ``(output, index of the last unit run)``."""
        for g in edits.parallel:
            a, b = g[0], g[1]
            if a == i:
                return self._parallel(h, g, edits), b
            if a < i <= b:
                raise AnatomyError(f"unit {i} lies inside the parallel range {a}..{b}: start at {a}")
        return self.run_unit(i, h, edits), i

    def run(self, h: Tensor, start: int = 0, stop: Optional[int] = None, edits: Edits = NO_EDITS,
            decompose: bool = False, observe: Optional[Callable[[int, Tensor, Tensor], None]] = None) -> Tensor:
        """Run from the input ``h`` of unit ``start`` through unit ``stop - 1``, then the head when the run
        reaches the last unit (``stop`` None or the number of units); an earlier ``stop`` returns that unit's
        input.

        ``start=0`` with an image batch: pass ``view.stem(x)`` as ``h``, or use :meth:`forward`.
        ``observe(i, x_in, x_out)`` is called after each unit (after a parallel range, with its last
        unit's index)."""
        n = len(self.units)
        stop = n if stop is None else stop
        groups = {g[0]: g for g in edits.parallel}
        for a, b, *_ in edits.parallel:
            if not (0 <= a <= b < n):
                raise AnatomyError(f"parallel range {a}..{b} out of range 0..{n - 1}")
            if a < start <= b:
                raise AnatomyError(f"cannot start at unit {start}, inside the parallel range {a}..{b}")
        i = start
        while i < stop:
            if i in groups:
                out, last = self._parallel(h, groups[i], edits), groups[i][1]
            else:
                blk = self.blocks[self.units[i].block_index]
                multi = len(blk.units) > 1
                if (multi and self._block_forward and not decompose and observe is None and i == blk.units[0]
                        and blk.units[-1] < stop
                        and not (edits.touched() & set(blk.units))):
                    out, last = blk.module(h), blk.units[-1]  # the block's own forward, all its units at once
                else:
                    out, last = self.run_unit(i, h, edits, decompose), i
            if observe is not None:
                observe(last, h, out)
            h = out
            i = last + 1
        return self.head(h) if stop == n else h

    def forward(self, x: Tensor, edits: Edits = NO_EDITS, decompose: bool = False) -> Tensor:
        """Image -> logits through stem, units (with ``edits``) and head."""
        return self.run(self.stem(x), 0, edits=edits, decompose=decompose)

    __call__ = forward

    def unit_inputs(self, x: Tensor) -> list[Tensor]:
        """Inputs of every unit, and the input of the head as the last element (n + 1 tensors)."""
        hs = [self.stem(x)]
        for i in range(len(self.units)):
            hs.append(self.run_unit(i, hs[-1]))
        return hs

    def walk(self, h: Tensor, start: int = 0, stop: Optional[int] = None) -> Iterator[Step]:
        """The cache verb: for each unit from ``start``, its input, shortcut S(x), branch F(x) and output
        y = post(S(x) + F(x)), computed once from the parts (y of unit i is x of unit i + 1)."""
        stop = len(self.units) if stop is None else stop
        for i in range(start, stop):
            u = self.units[i]
            f = u.branch(h)
            s = u.shortcut(h) if u.residual else None
            y = u.post(f if s is None else s + f)
            yield Step(i, u, h, s, f, y)
            h = y
            # nothing of this unit but its output stays referenced here while the next one runs (the caller
            # decides what it keeps): the forward's working set, not two more activations per step
            s = f = y = None

    def run_with_cache(self, x: Tensor) -> tuple[Tensor, list[Step]]:
        """Logits and every unit's :class:`Step` for an image batch (keeps all activations: for small
        batches; probes stream with :meth:`walk`)."""
        steps = list(self.walk(self.stem(x)))
        return self.head(steps[-1].y), steps

    # --- shapes ---------------------------------------------------------------------------------
    def infer_shapes(self, input_shape: Sequence[int]) -> list[tuple[tuple, tuple]]:
        """Per-unit (input shape, output shape) without the batch dimension, for ``input_shape``; also
        checks that every automatically decomposed block reproduces its own output."""
        key = tuple(input_shape)
        if self._shape_key != key:
            from .hooks import preserved_state
            p = next(self.model.parameters(), None)
            dev = p.device if p is not None else "cpu"
            dtype = p.dtype if p is not None else torch.float32
            g = torch.Generator().manual_seed(0)
            with preserved_state(self.model), torch.no_grad():
                self.model.eval()
                x = (self._sample(self.model, key).to(dev) if self._sample is not None
                     else torch.randn((2, *key), generator=g).to(device=dev, dtype=dtype))
                try:
                    h = self.stem(x)
                except Exception as e:  # noqa: BLE001 - a wrong input shape is the user's to fix
                    raise AnatomyError(f"the model does not accept inputs of shape {key} ({type(e).__name__}: "
                                       f"{str(e).splitlines()[0] if str(e) else ''})",
                                       "check the data's image size or pass --input-size C,H,W") from e
                self._check_reference(x, h)
                for b in self.blocks:
                    x_in = h
                    for i in b.units:
                        out = self.units[i].decomposed(h)
                        self.units[i].in_shape, self.units[i].out_shape = tuple(h.shape[1:]), tuple(out.shape[1:])
                        h = out
                    if b.name in self._auto:
                        ref = b.module(x_in)
                        err = float((ref - h).abs().max()) / max(float(ref.abs().max()), 1e-12)
                        if not err <= 1e-4:
                            raise AnatomyError(
                                f"the automatic decomposition of block {b.name} ({type(b.module).__name__}) does not "
                                f"reproduce its output (relative max |Δ| = {err:.2e})",
                                f"register an adapter: resprobe.anatomy.register_block({type(b.module).__name__}, "
                                "parts_fn)")
            self._shape_key = key
        return [(u.in_shape, u.out_shape) for u in self.units]

    def _check_reference(self, x: Tensor, h: Tensor) -> None:
        """A registered model's decomposed run must reproduce the model's own output."""
        if self._reference is None:
            return
        ref = self._reference(self.model, x)
        got = self.run(h, 0, decompose=True)
        err = float((ref - got).abs().max()) / max(float(ref.abs().max()), 1e-12)
        if not err <= 1e-4:
            kinds = sorted({type(b.module).__name__ for b in self.blocks})
            raise AnatomyError(f"the decomposition of {type(self.model).__name__} ({', '.join(kinds)}) does not "
                               f"reproduce its output (relative max |Δ| = {err:.2e})",
                               f"register the layer's parts: resprobe.anatomy.register_block({kinds[0]}, parts_fn)")

    def shape_preserving(self, i: int) -> bool:
        u = self.units[i]
        if u.in_shape is None:
            raise AnatomyError("unit shapes are unknown: call view.infer_shapes(input_shape) first")
        return tuple(u.in_shape) == tuple(u.out_shape)

    def deletable(self, i: int) -> bool:
        """Residual units always; plain units when they keep the shape; transitions never."""
        u = self.units[i]
        if u.kind == "transition":
            return False
        return u.residual or self.shape_preserving(i)

    def check_decomposition(self, x: Tensor) -> float:
        """Max |model(x) - stem/units(F, S, post)/head(x)| in eval mode, without grad."""
        from .hooks import preserved_state
        with preserved_state(self.model), torch.no_grad():
            self.model.eval()
            return (self.model(x) - self.forward(x, decompose=True)).abs().max().item()

    def table(self) -> list[dict]:
        """One dict per unit: name, block, part, kind, stage, index in stage, shapes, shortcut, params."""
        return [dict(name=u.name, block=u.block, part=u.part, kind=u.kind, stage=u.stage,
                     index_in_stage=u.index_in_stage, in_shape=u.in_shape, out_shape=u.out_shape,
                     shortcut=u.shortcut_kind, downsample=u.downsample, params=u.n_params()) for u in self.units]


def anatomy(model: nn.Module, input_shape: Optional[Sequence[int]] = None) -> ResidualView:
    """See ``model`` as stem -> residual units -> head (optionally inferring unit shapes)."""
    view = ResidualView(model)
    if input_shape is not None:
        view.infer_shapes(input_shape)
    return view

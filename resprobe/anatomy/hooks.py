"""Hook context managers that always clean up after themselves.

- :func:`preserved_state` restores every module's train/eval flag and ``requires_grad`` on exit,
  exception or not.
- :class:`Trace` captures (cloned) inputs/outputs of named submodules with forward hooks and, on
  request, their output gradients with *tensor* hooks (never full backward hooks, which break with
  in-place operations such as torchvision's ``out += identity``). Every hook it added is removed in
  ``finally``; hooks it did not add are left alone.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Optional

import torch
import torch.nn as nn

__all__ = ["preserved_state", "frozen_eval", "Trace", "hook_count", "user_hooks"]


@contextmanager
def preserved_state(model: nn.Module):
    """Restore each module's ``training`` flag and each parameter's ``requires_grad`` on exit."""
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        yield model
    finally:
        for m, t in modes:
            m.training = t
        for p, g in grads:
            p.requires_grad_(g)


@contextmanager
def frozen_eval(model: nn.Module):
    """Eval mode with parameters not requiring grad (gradients flow to inputs only) for the duration;
    every module's mode and every parameter's flag come back on exit, exception or not."""
    with preserved_state(model):
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        yield model


def hook_count(model: nn.Module) -> int:
    """Number of module hooks of any kind registered anywhere in ``model``."""
    n = 0
    for m in model.modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                     "_state_dict_hooks", "_load_state_dict_pre_hooks"):
            n += len(getattr(m, attr, {}) or {})
    return n


_RUN_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def user_hooks(model: nn.Module) -> list[str]:
    """Where ``model`` runs code of its user's besides its own forward: the names of modules with forward or
    backward hooks, or with a ``forward`` replaced on the instance, and the global module hooks of torch.
    Probes run a network's parts one by one (stem, branches, shortcuts, head), so a hook on the model or on a
    unit would be skipped or run in the wrong place: they refuse such a model instead of probing another one."""
    import torch.nn.modules.module as mm
    out = [f"{k[1:]} (global)" for k in ("_global_forward_hooks", "_global_forward_pre_hooks",
                                          "_global_backward_hooks", "_global_backward_pre_hooks")
           if getattr(mm, k, None)]
    for name, m in model.named_modules():
        kinds = [a[1:].replace("_hooks", "") for a in _RUN_HOOKS if getattr(m, a, None)]
        if "forward" in vars(m):
            kinds.append("forward replaced")
        if kinds:
            out.append(f"{name or '<model>'} ({', '.join(kinds)})")
    return out


def _first_tensor(x):
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)) and x and isinstance(x[0], torch.Tensor):
        return x[0]
    return None


class Trace:
    """Capture what named submodules see and produce.

    >>> with Trace(model, ["layer1.0.bn1", "layer2.0"], output=True) as tr:
    ...     model(x)
    >>> tr["layer2.0"].output          # a clone, safe from later in-place ops

    ``input=True`` keeps the first positional input; ``grad=True`` keeps d(loss)/d(output) after
    ``backward()`` (tensor hooks). ``detach=False`` keeps the autograd graph on captured tensors.
    ``stop=True`` raises :class:`StopForward` after the last requested module ran (caught by the
    context manager), so a probe need not pay for the rest of the network.
    """

    class Record:
        __slots__ = ("input", "output", "grad")

        def __init__(self):
            self.input = self.output = self.grad = None

    class StopForward(Exception):
        pass

    def __init__(self, model: nn.Module, names: Iterable[str], input: bool = False, output: bool = True,
                 grad: bool = False, detach: bool = True, clone: bool = True, stop: bool = False):
        self.model = model
        self.names = list(names)
        mods = dict(model.named_modules())
        missing = [n for n in self.names if n not in mods]
        if missing:
            raise KeyError(f"no submodule named {missing} in {type(model).__name__}")
        self._mods = [(n, mods[n]) for n in self.names]
        self.want_input, self.want_output, self.want_grad = input, output, grad
        self.detach, self.clone, self.stop = detach, clone, stop
        self.records: dict[str, Trace.Record] = {n: Trace.Record() for n in self.names}
        self._handles: list = []
        self._seen: set[str] = set()

    def _keep(self, t: Optional[torch.Tensor]):
        if t is None:
            return None
        if self.detach:
            t = t.detach()
        return t.clone() if self.clone else t

    def _hook(self, name):
        def fn(module, args, out):
            rec = self.records[name]
            if self.want_input:
                rec.input = self._keep(_first_tensor(args))
            o = _first_tensor(out)
            if self.want_output:
                rec.output = self._keep(o)
            if self.want_grad and o is not None and o.requires_grad:
                def store(g, rec=rec):
                    rec.grad = g.detach().clone()
                o.register_hook(store)
            self._seen.add(name)
            if self.stop and len(self._seen) == len(self.names):
                raise Trace.StopForward()
        return fn

    def __getitem__(self, name: str) -> "Trace.Record":
        return self.records[name]

    def __enter__(self) -> "Trace":
        try:
            for n, m in self._mods:
                self._handles.append(m.register_forward_hook(self._hook(n)))
        except BaseException:
            self.close()
            raise
        return self

    def close(self):
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __exit__(self, typ, val, tb):
        self.close()
        return typ is Trace.StopForward

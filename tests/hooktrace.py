"""A test oracle: forward (and tensor-gradient) hooks that capture what named submodules see, independent of
the anatomy's decomposition. No probe uses it (the probes run the anatomy's parts); tests compare against it.

:class:`Trace` captures (cloned) inputs/outputs of named submodules with forward hooks and, on request, their
output gradients with *tensor* hooks (never full backward hooks, which break with in-place operations such as
torchvision's ``out += identity``). Every hook it added is removed in ``finally``; hooks it did not add are
left alone.
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch
import torch.nn as nn


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

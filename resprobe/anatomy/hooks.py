"""Hook context managers that always clean up after themselves.

- :func:`preserved_state` restores every module's train/eval flag and ``requires_grad`` on exit,
  exception or not.
- :func:`frozen_eval` adds eval mode and frozen parameters for the duration of a probe.
- :func:`hook_count` and :func:`user_hooks` find the hooks a user left on a model (probes refuse such
  models: they run parts one by one and cannot honour them).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch.nn as nn

__all__ = ["preserved_state", "frozen_eval", "hook_count", "user_hooks"]


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


def _inert(hook) -> bool:
    """transformers' own output-capturing hooks (installed once ``output_hidden_states`` is asked for): they
    record nothing unless the model's forward opens a collector, which a probe running the parts never does."""
    return getattr(hook, "__name__", "") == "output_capturing_hook" and \
        getattr(hook, "__module__", "").startswith("transformers.")


def _placed(m: nn.Module) -> bool:
    """accelerate's device-placement hooks (a model loaded with ``device_map``): they move inputs to the module's
    device and load offloaded weights, computing nothing; every module with weights carries one, so running the
    parts one by one honours them."""
    hook = getattr(m, "_hf_hook", None)
    inner = getattr(hook, "hooks", None) or (hook,)
    return hook is not None and all(type(h).__name__ == "AlignDevicesHook" and
                                    type(h).__module__.startswith("accelerate.") for h in inner)


def _hooks(m: nn.Module, attr: str) -> bool:
    return any(not _inert(h) for h in (getattr(m, attr, None) or {}).values())


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
        kinds = [a[1:].replace("_hooks", "") for a in _RUN_HOOKS if _hooks(m, a)]
        if "forward" in vars(m) and not _placed(m):
            kinds.append("forward replaced")
        if kinds:
            out.append(f"{name or '<model>'} ({', '.join(kinds)})")
    return out

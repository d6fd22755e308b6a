"""Model zoo and spec strings.

Spec strings (the same on the CLI and in the API):

- ``cifar_resnet56``, ``cifar_plain20``, ``cifar_preresnet110``, ``cifar_preplain20``; suffix ``_b`` for
  option-B (projection) shortcuts: ``cifar_resnet20_b``;
- ``mlp(depth=24,width=200,residual=true,batchnorm=true)``;
- ``torchvision:resnet50`` (any torchvision classification model name, random init);
- ``package.module:factory`` (a user's factory returning an ``nn.Module``).

Any spec may end with ``(key=value,...)`` keyword arguments passed to its factory.
"""
from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

import torch.nn as nn

from .cifar import CifarResNet, cifar_resnet
from .mlp import MLP, mlp

__all__ = ["build_model", "parse_spec", "CifarResNet", "cifar_resnet", "MLP", "mlp", "SpecError"]


class SpecError(ValueError):
    """A model spec string that cannot be resolved."""


_CIFAR = re.compile(r"^cifar_(resnet|plain|preresnet|preplain)(\d+)(_[ab])?$", re.I)


def _value(text: str) -> Any:
    t = text.strip()
    low = t.lower()
    if low in ("true", "yes"):
        return True
    if low in ("false", "no"):
        return False
    if low == "none":
        return None
    for cast in (int, float):
        try:
            return cast(t)
        except ValueError:
            pass
    return t.strip("'\"")


def parse_spec(spec: str) -> tuple[str, dict]:
    """Split ``name(k=v,...)`` into the name and a dict of keyword arguments."""
    spec = spec.strip()
    kwargs: dict[str, Any] = {}
    m = re.match(r"^(.*?)\((.*)\)$", spec)
    if m:
        spec, args = m.group(1).strip(), m.group(2).strip()
        for part in filter(None, (p.strip() for p in args.split(","))):
            if "=" not in part:
                raise SpecError(f"model spec arguments must be key=value, got {part!r}")
            k, v = part.split("=", 1)
            kwargs[k.strip()] = _value(v)
    return spec, kwargs


def _call(factory, kwargs: dict, num_classes: int | None, in_channels: int | None) -> nn.Module:
    params = inspect.signature(factory).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if num_classes is not None and "num_classes" not in kwargs and ("num_classes" in params or accepts_any):
        kwargs["num_classes"] = num_classes
    if in_channels is not None and "in_channels" not in kwargs and "in_channels" in params:
        kwargs["in_channels"] = in_channels
    return factory(**kwargs)


def build_model(spec: str, num_classes: int | None = None, in_channels: int | None = None) -> nn.Module:
    """Build a model from a spec string (see the module docstring)."""
    try:
        return _build(spec, num_classes, in_channels)
    except SpecError:
        raise
    except (ValueError, TypeError) as e:
        raise SpecError(f"cannot build model {spec!r}: {e}") from e


def _build(spec: str, num_classes: int | None, in_channels: int | None) -> nn.Module:
    name, kwargs = parse_spec(spec)
    m = _CIFAR.match(name)
    if m:
        kind, depth, sc = m.group(1).lower(), int(m.group(2)), (m.group(3) or "_a")[1:].upper()
        kwargs.setdefault("shortcut", sc)
        kwargs.setdefault("preact", kind.startswith("pre"))
        kwargs.setdefault("plain", kind.endswith("plain"))
        return cifar_resnet(depth, **_with_defaults(kwargs, num_classes, in_channels))
    if name == "mlp":
        return mlp(**kwargs)
    if name.startswith("torchvision:"):
        try:
            import torchvision
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise SpecError("torchvision is not installed: pip install 'resprobe[torchvision]'") from e
        tv_name = name.split(":", 1)[1]
        available = torchvision.models.list_models(module=torchvision.models)
        if tv_name not in available:
            raise SpecError(f"unknown torchvision model {tv_name!r}; known: {', '.join(sorted(available))}")
        kwargs.setdefault("weights", None)
        if num_classes is not None:
            kwargs.setdefault("num_classes", num_classes)
        return torchvision.models.get_model(tv_name, **kwargs)
    if ":" in name:
        mod_name, fn_name = name.split(":", 1)
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as e:
            raise SpecError(f"cannot import module {mod_name!r} of model spec {spec!r}: {e}") from e
        factory = getattr(mod, fn_name, None)
        if factory is None or not callable(factory):
            raise SpecError(f"module {mod_name!r} has no callable {fn_name!r} (model spec {spec!r})")
        model = _call(factory, kwargs, num_classes, in_channels)
        if not isinstance(model, nn.Module):
            raise SpecError(f"factory {name!r} returned {type(model).__name__}, not an nn.Module")
        return model
    raise SpecError(
        f"unknown model spec {spec!r}; use cifar_resnet<6n+2> / cifar_plain<d> / cifar_preresnet<d> "
        "(optionally _b), mlp(...), torchvision:<name>, or package.module:factory"
    )


def _with_defaults(kwargs: dict, num_classes: int | None, in_channels: int | None) -> dict:
    kw = dict(kwargs)
    if num_classes is not None:
        kw.setdefault("num_classes", num_classes)
    if in_channels is not None:
        kw.setdefault("in_channels", in_channels)
    return kw

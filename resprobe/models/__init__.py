"""Model zoo and spec strings.

Spec strings (the same on the CLI and in the API):

- ``cifar_resnet56``, ``cifar_plain20``, ``cifar_preresnet110``, ``cifar_preplain20``; suffix ``_b`` for
  option-B (projection) shortcuts: ``cifar_resnet20_b``;
- ``mlp(depth=24,width=200,residual=true,batchnorm=true)``;
- ``torchvision:resnet50``, ``timm:vit_tiny_patch16_224(img_size=32, patch_size=4)`` (random init; weights
  come from ``--weights``);
- ``hf-config:FAMILY(...)``, ``hf:PATH``, ``hf:DIR/FILE.gguf``, ``smollm2-135m``: causal language models
  (the ``lm`` extra; see :mod:`.lm`);
- ``package.module:factory`` (a user's factory returning an ``nn.Module``): resprobe imports the module
  and calls the factory, which runs its code, like running a script. That needs consent: ``trust_code=True``
  (CLI ``--trust-code``, Hugging Face's ``trust_remote_code`` convention), except for factories inside
  resprobe itself. Standard-library and builtin callables are refused, and of the known third-party
  libraries (torch, torchvision, timm, numpy, pickle's relatives and the like) only ``nn.Module`` classes may
  be named, with consent (``torchvision.models.vision_transformer:VisionTransformer(...)``): their
  functions, such as ``torch.load`` or ``numpy.load``, are never reachable through a spec.

Any spec may end with ``(key=value, ...)`` keyword arguments passed to its factory (Python literals).
"""
from __future__ import annotations

import ast
import difflib
import importlib
import inspect
import re
import sys
import types
from typing import Any

import torch.nn as nn

from ..errors import UserError

from .cifar import CifarResNet, cifar_resnet
from .lm import build_lm, is_lm_spec
from .mlp import MLP, mlp

__all__ = ["build_model", "parse_spec", "CifarResNet", "cifar_resnet", "MLP", "mlp", "SpecError"]


class SpecError(UserError, ValueError):
    """A model spec string that cannot be resolved."""


_CIFAR = re.compile(r"^cifar_(resnet|plain|preresnet|preplain)(\d+)(_[ab])?$", re.I)
_WORDS = {"true": True, "yes": True, "false": False, "no": False, "none": None}


def _literal(node: ast.AST, text: str) -> Any:
    """A keyword value: any Python literal (numbers, strings, tuples, lists, dicts), or a bare word
    (``true``/``false``/``none`` in any case, else the word as a string)."""
    if isinstance(node, ast.Name):
        return _WORDS.get(node.id.lower(), node.id)
    try:
        return ast.literal_eval(node)
    except ValueError as e:
        raise SpecError(f"model spec argument {ast.get_source_segment(text, node)!r} is not a literal value",
                        "use numbers, quoted strings, true/false/none, tuples or lists") from e


def parse_spec(spec: str) -> tuple[str, dict]:
    """Split ``name(k=v, ...)`` into the name and a dict of keyword arguments (values: Python literals
    such as ``8``, ``0.5``, ``'B'``, ``(2, 2, 6, 2)``, or bare words ``true``/``false``/``none``)."""
    spec = spec.strip()
    if "(" not in spec:
        if ")" in spec:
            raise SpecError(f"model spec {spec!r} has a ')' without '('")
        return spec, {}
    name, _, rest = spec.partition("(")
    name = name.strip()
    if not rest.rstrip().endswith(")") or not name:
        raise SpecError(f"cannot read model spec {spec!r}", "write NAME or NAME(key=value, ...)")
    text = "f(" + rest
    try:
        call = ast.parse(text, mode="eval").body
    except SyntaxError as e:
        raise SpecError(f"cannot read the arguments of model spec {spec!r} ({e.msg})",
                        "write NAME(key=value, ...) with literal values") from e
    if not isinstance(call, ast.Call) or call.args:
        raise SpecError(f"model spec arguments must be key=value, got {spec!r}")
    kwargs = {}
    for kw in call.keywords:
        if kw.arg is None:
            raise SpecError(f"model spec {spec!r}: '**' is not allowed")
        kwargs[kw.arg] = _literal(kw.value, text)
    return name, kwargs


def _accepts(factory, key: str) -> bool:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return key in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def build_model(spec: str, num_classes: int | None = None, in_channels: int | None = None,
                trust_code: bool = False) -> nn.Module:
    """Build a model from a spec string (see the module docstring). Specs of the form
    ``package.module:factory`` import that module and call the factory: like running a script, this
    runs its code, so it needs ``trust_code=True`` (unless the module is part of resprobe)."""
    if not isinstance(spec, str):
        raise SpecError(f"a model spec must be a string, got {type(spec).__name__}")
    name, kwargs = parse_spec(spec)
    m = _CIFAR.match(name)
    if m:
        kind, depth, sc = m.group(1).lower(), int(m.group(2)), (m.group(3) or "_a")[1:].upper()
        kwargs.setdefault("shortcut", sc)
        kwargs.setdefault("preact", kind.startswith("pre"))
        kwargs.setdefault("plain", kind.endswith("plain"))
        if kwargs.get("depth", depth) != depth:
            raise SpecError(f"model spec {spec!r}: its name says depth {depth}, its arguments depth={kwargs['depth']}",
                            f"write cifar_{kind}{kwargs['depth']} (or drop depth=)")
        kwargs["depth"] = depth
        return _call(cifar_resnet, _with_defaults(kwargs, num_classes, in_channels), spec)
    if name == "mlp":
        return _call(mlp, kwargs, spec)
    if name.startswith("torchvision:"):
        return _torchvision(name.split(":", 1)[1], kwargs, num_classes, spec)
    if name.startswith("timm:"):
        return _timm(name.split(":", 1)[1], kwargs, num_classes, in_channels, spec)
    if is_lm_spec(name):
        return build_lm(name, kwargs)
    if ":" in name:
        return _user_factory(name, kwargs, (num_classes, in_channels), spec, trust_code)
    raise SpecError(f"unknown model spec {spec!r}",
                    "use cifar_resnet<6n+2> / cifar_plain<d> / cifar_preresnet<d> (optionally _b), mlp(...), "
                    "torchvision:<name>, timm:<name>, hf-config:<family>(...), hf:<folder>, smollm2-135m or "
                    "package.module:factory")


def _call(factory, kwargs: dict, spec: str) -> nn.Module:
    """Call a factory; an exception it raises is the spec's fault (bad arguments), reported in one line."""
    try:
        model = factory(**kwargs)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - the factory's own complaint, shown to the user
        raise SpecError(f"cannot build model {spec!r}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                        "check the spec's name and keyword arguments") from e
    if not isinstance(model, nn.Module):
        raise SpecError(f"model spec {spec!r} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _torchvision(tv_name: str, kwargs: dict, num_classes, spec: str) -> nn.Module:
    try:
        import torchvision
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise SpecError("torchvision is not installed", "pip install 'resprobe[torchvision]'") from e
    available = torchvision.models.list_models(module=torchvision.models)
    if tv_name not in available:
        close = difflib.get_close_matches(tv_name, available, n=3)
        raise SpecError(f"unknown torchvision model {tv_name!r}",
                        f"did you mean {', '.join(close)}?" if close else "see torchvision.models.list_models()")
    if kwargs.get("weights") is not None or kwargs.get("pretrained"):
        raise SpecError("torchvision:...(weights=...) would download weights", "pass --weights FILE instead")
    kwargs.pop("pretrained", None)
    kwargs["weights"] = None
    if num_classes is not None:
        kwargs.setdefault("num_classes", num_classes)
    return _call(lambda **kw: torchvision.models.get_model(tv_name, **kw), kwargs, spec)


def _timm(timm_name: str, kwargs: dict, num_classes, in_channels, spec: str) -> nn.Module:
    try:
        import timm
    except ImportError as e:
        raise SpecError("timm is not installed", "pip install 'resprobe[timm]'") from e
    base = timm_name.split(".")[0]
    if not timm.is_model(base):
        close = difflib.get_close_matches(base, timm.list_models(), n=3)
        raise SpecError(f"unknown timm model {timm_name!r}",
                        f"did you mean {', '.join(close)}?" if close else "see timm.list_models()")
    if kwargs.pop("pretrained", False):
        raise SpecError("timm:...(pretrained=true) would download weights", "pass --weights FILE instead")
    if num_classes is not None:
        kwargs.setdefault("num_classes", num_classes)
    if in_channels is not None:
        kwargs.setdefault("in_chans", in_channels)
    return _call(lambda **kw: timm.create_model(timm_name, pretrained=False, **kw), kwargs, spec)


# third-party libraries whose callables a spec never reaches: they hold loaders that run pickled code
# (torch.load, numpy.load, pandas.read_pickle, joblib.load, ...) or download; their models have own prefixes
_LIBRARIES = frozenset("""torch torchvision timm numpy pandas scipy joblib dill cloudpickle sklearn skops h5py yaml
    ruamel safetensors transformers accelerate huggingface_hub datasets tokenizers gguf tensorflow keras jax flax
    onnx onnxruntime PIL matplotlib seaborn networkx tqdm fsspec pyarrow msgpack jsonpickle numba IPython pytest
    _pytest pip setuptools pkg_resources hypothesis llm requests urllib3""".split())


def _foreign(top: str) -> str | None:
    """Why a module's code may not be reached through a spec (None: it may, with consent)."""
    if top in sys.stdlib_module_names or top in sys.builtin_module_names or top == "builtins":
        return "the standard-library module"
    if top in _LIBRARIES:
        return "the third-party library"
    return None


def _user_factory(name: str, kwargs: dict, shape: tuple, spec: str, trust_code: bool) -> nn.Module:
    num_classes, in_channels = shape
    mod_name, fn_name = (x.strip() for x in name.split(":", 1))
    if not mod_name or not fn_name or not all(part.isidentifier() for part in mod_name.split(".") + [fn_name]):
        raise SpecError(f"cannot read model spec {spec!r}", "write package.module:factory (or a built-in name)")
    top = mod_name.split(".")[0]
    why = _foreign(top)
    if why == "the standard-library module":
        raise SpecError(f"model spec {spec!r} names {why} {mod_name!r}",
                        "a spec package.module:factory must name your own model factory (built-in models: "
                        "cifar_*, mlp(...), torchvision:NAME, timm:NAME)")
    # any module outside resprobe needs consent; of a known library only nn.Module classes are called, even then
    if top != "resprobe" and not trust_code:
        raise SpecError(f"model spec {spec!r} would import the module {mod_name!r} and run its code",
                        "pass --trust-code if you trust that module (API: trust_code=True)")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise SpecError(f"cannot import module {mod_name!r} of model spec {spec!r}: {e}",
                        "check the module path (the module must be importable: on PYTHONPATH or installed)") from e
    factory = getattr(mod, fn_name, None)
    if factory is None or not callable(factory):
        raise SpecError(f"module {mod_name!r} has no callable {fn_name!r} (model spec {spec!r})")
    if isinstance(factory, (types.BuiltinFunctionType, types.BuiltinMethodType)):
        raise SpecError(f"{name!r} is a builtin function, not a model factory")
    if isinstance(factory, type) and not issubclass(factory, nn.Module):
        raise SpecError(f"{name!r} is a class that is not a torch.nn.Module")
    origin = _foreign(str(getattr(factory, "__module__", None) or "builtins").split(".")[0])
    if (origin or why) and not isinstance(factory, type):
        where = getattr(factory, "__module__", None) or mod_name
        raise SpecError(f"{name!r} is a function of {origin or why} {where!r}, not a model class",
                        "a spec may name a library's nn.Module classes or your own factory (both with --trust-code); "
                        "built-in models: cifar_*, mlp(...), torchvision:NAME, timm:NAME")
    if num_classes is not None and "num_classes" not in kwargs and _accepts(factory, "num_classes"):
        kwargs["num_classes"] = num_classes
    if in_channels is not None and "in_channels" not in kwargs and _accepts(factory, "in_channels"):
        kwargs["in_channels"] = in_channels
    return _call(factory, kwargs, spec)


def _with_defaults(kwargs: dict, num_classes: int | None, in_channels: int | None) -> dict:
    kw = dict(kwargs)
    if num_classes is not None:
        kw.setdefault("num_classes", num_classes)
    if in_channels is not None:
        kw.setdefault("in_channels", in_channels)
    return kw

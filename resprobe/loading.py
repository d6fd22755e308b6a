"""Networks and data as the probes receive them: :func:`load_subjects` (spec + weights -> labelled,
normalized :class:`~resprobe.study.Subject`), :func:`load_model`, :func:`load_data`.

One rule for each choice, used by the CLI, the report, the experiments and the notebook:

- **labels**: ``--label`` if given; else the weights' folder name when the file is ``model.pt`` (what
  ``resprobe train`` writes), else the weights' file stem, else the spec. Several weights for one model
  are seeds of one group (labels ``LABEL/sN``). Two networks never share a label.
- **normalization**: ``--normalize`` if given; else the one ``resprobe train`` recorded in
  ``config.json`` beside the weights; else ``imagenet`` (what the He et al. checkpoints need).
- **seed**: the one recorded in ``config.json`` beside the weights, else the position in the list.
- **weights**: a model without ``--weights`` is an error unless ``random_init`` is asked for.
"""
from __future__ import annotations

from dataclasses import dataclass

import json
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn as nn

from .errors import NonFiniteError, UsageError
from .io.checkpoint import CheckpointError, check_file, load_weights
from .io.fetch import file_digest
from .io import published
from .io.data import Dataset, load_dataset
from .models.lm import carries_weights
from .models import build_model
from .study import Subject

__all__ = ["Access", "load_model", "load_data", "load_subjects", "normalization_for", "recorded", "default_input_shape",
           "DEFAULT_NORMALIZATION"]

DEFAULT_NORMALIZATION = "imagenet"


def recorded(weights: Optional[str]) -> dict:
    """The ``config.json`` that ``resprobe train`` wrote beside ``weights`` (empty if none)."""
    if not weights:
        return {}
    cfg = Path(weights).parent / "config.json"
    if cfg.is_file():
        try:
            out = json.loads(cfg.read_text())
            return out if isinstance(out, dict) else {}
        except (ValueError, OSError):
            return {}
    return {}


RECIPE_KEYS = ("lr", "momentum", "weight_decay", "batch_size", "schedule", "optimizer", "warmup_epochs", "epochs",
               "normalize", "augment")


def recipe_key(weights: Optional[str], spec: Optional[str] = None) -> Optional[str]:
    """A short key of the training recipe recorded beside ``weights`` (None when none is recorded). The model
    and the seed are not part of it: a ResNet and its plain twin trained alike share the key. When ``spec`` is
    given and the record says the weights were trained as another model (a plain twin's weights loaded into a
    ResNet), the recipe of this network is unknown: None."""
    cfg = recorded(weights)
    if not cfg or "lr" not in cfg:
        return None
    if spec is not None and cfg.get("model") not in (None, spec):
        return None
    import hashlib
    data = (cfg.get("train_data") or {}).get("content_sha256") or (cfg.get("train_data") or {}).get("spec")
    defaults = {"optimizer": "sgd", "warmup_epochs": 0}
    items = {k: cfg.get(k, defaults.get(k)) for k in RECIPE_KEYS}
    return hashlib.sha256(json.dumps(dict(items, data=data), sort_keys=True).encode()).hexdigest()[:12]


def normalization_for(weights: Optional[str], explicit: Optional[str] = None) -> str:
    return explicit or recorded(weights).get("normalize") or DEFAULT_NORMALIZATION


def _nonfinite_parameter(model: nn.Module) -> Optional[str]:
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


@dataclass(frozen=True)
class Access:
    """What a load may do beyond the safe default: unpickle checkpoints fully (``trust``: can run a file's
    code), import and run a ``package.module:factory`` spec's module (``trust_code``, see :mod:`resprobe.models`),
    build networks without weights (``random_init``, initialised from ``seed``), and accept NaN or infinite
    weights (``allow_nonfinite``); a language model from weights may be placed across devices by accelerate
    (``device_map``: ``auto`` or a JSON file ``{module: device}``, ``offload_folder`` for ``disk``)."""

    trust: bool = False
    trust_code: bool = False
    random_init: bool = False
    allow_nonfinite: bool = False
    seed: int = 0
    device_map: Optional[str] = None
    offload_folder: Optional[str] = None


def load_model(spec: str, weights: Optional[str] = None, access: Access = Access(), num_classes: Optional[int] = None,
               in_channels: Optional[int] = None, classes: Optional[Sequence[str]] = None) -> tuple[nn.Module, dict]:
    """Build ``spec``, load ``weights`` (if given) strictly, check that every weight is finite, put it in
    eval mode; return it and its provenance (see :class:`Access` for what the load may do)."""
    trust, trust_code, allow_nonfinite = access.trust, access.trust_code, access.allow_nonfinite
    entry = None
    if published.is_name(weights):
        weights, entry = _published(spec, weights)
    built, named = _named_lm(spec)
    built = _placed(built, access)
    model = build_model(built, num_classes=num_classes, in_channels=in_channels, trust_code=trust_code)
    prov = {"model": spec, "weights": None, "weights_sha256": None, **named}
    if entry is not None:
        prov.update(weights_name=entry.name, weights_source=entry.url or entry.source)
    if weights:
        try:
            prov.update(load_weights(model, weights, trust=trust))
        except CheckpointError as e:
            _class_count_mismatch(e, model, num_classes, classes, weights)
            raise
        bad = _nonfinite_parameter(model)
        if bad and not allow_nonfinite:
            raise NonFiniteError(f"{weights}: the weight {bad} holds NaN or infinite values",
                                 "the checkpoint is corrupt or its training diverged; --allow-nonfinite probes it "
                                 "anyway and marks the results")
    model.eval()
    return model, prov


def _placed(spec: str, access: Access) -> str:
    """The ``hf:`` spec with the device map of ``access`` (refused for anything else)."""
    if not access.device_map and not access.offload_folder:
        return spec
    if not spec.startswith("hf:") or "(" in spec:
        raise UsageError(f"--device-map applies to language models loaded from weights (hf:FOLDER, smollm2-135m), "
                         f"not {spec}", "drop --device-map")
    if not access.device_map:
        raise UsageError("--offload-folder needs --device-map", "pass --device-map MAP.json with disk entries")
    if "'" in access.device_map + (access.offload_folder or ""):
        raise UsageError("--device-map and --offload-folder paths cannot hold a quote character")
    extra = f", offload_folder='{access.offload_folder}'" if access.offload_folder else ""
    return f"{spec}(device_map='{access.device_map}'{extra})"


def _named_lm(spec: str) -> tuple[str, dict]:
    """A language model known by name (``smollm2-135m``) as the ``hf:`` folder of its cached copy, with the
    provenance of its weights; other specs unchanged."""
    from .models.lm import SMOLLM2, carries_weights
    if spec.strip() == SMOLLM2:
        from .io.lm_weights import smollm2_folder, smollm2_gguf
        folder = smollm2_folder()
        w = folder / "model.safetensors"
        return f"hf:{folder}", dict(weights=str(w), weights_sha256=json.loads((folder / "resprobe.json").read_text())
                                    ["sha256"], weights_name=SMOLLM2, weights_source=str(smollm2_gguf()))
    if carries_weights(spec.strip()):
        from .models import parse_spec
        where = Path(parse_spec(spec)[0].split(":", 1)[1]).expanduser()
        files = [where] if where.suffix == ".gguf" else sorted(where.glob("*.safetensors")) if where.is_dir() else []
        return spec, dict(weights=str(files[0]), weights_sha256=file_digest(files[0])) if files else {}
    return spec, {}


def _published(spec: str, name: str) -> tuple[str, "published.Published"]:
    """The local file of a named checkpoint; its model must be the spec's."""
    from .models import parse_spec
    path, entry = published.resolve(name)
    from .models.lm import is_lm_spec
    same = ("".join(spec.split()) == "".join(entry.model.split())) if is_lm_spec(spec) else \
        parse_spec(spec)[0] == entry.model   # a language model's keywords are its architecture (residual=False)
    if not same:
        raise UsageError(f"{name} is a {entry.model} checkpoint, but --model says {spec}",
                         f"pass --model {entry.model}")
    return str(path), entry


def _class_count_mismatch(e: CheckpointError, model, num_classes, classes, weights) -> None:
    """A data set with another number of classes than the network's outputs is that, not a bad checkpoint."""
    if num_classes is None or not getattr(e, "shapes", None) or getattr(e, "missing", None) or getattr(e, "unexpected", None):
        return
    own = model.state_dict()
    outs = {ck[0] for k, ck, mine in e.shapes if mine and mine[0] == num_classes and ck and ck[0] != num_classes}
    if outs and all(mine and mine[0] == num_classes for _, _, mine in e.shapes):
        k = sorted(outs)[0]
        names = f" ({', '.join(map(str, classes))})" if classes is not None and len(classes) <= 20 else ""
        raise UsageError(f"the network in {weights} has {k} outputs but the data set has {num_classes} classes"
                         f"{names}", "check --data and --split (a truncated or partial data set has fewer "
                         "classes), or the model spec's num_classes") from e
    del own


def load_data(spec: str, split: str = "test", root=None, download: bool = False, limit: Optional[int] = None,
              subset_seed: int = 0) -> Dataset:
    return load_dataset(spec, split=split, root=root, download=download).subset(limit, subset_seed)


def label_for(spec: str, weights: Optional[str]) -> str:
    if not weights:
        return spec
    p = Path(weights)
    return p.parent.name if p.stem in ("model", "last", "best") and p.parent.name else p.stem


def load_subjects(specs: Sequence[str], weights: Sequence[Optional[Sequence[str] | str]], data: Dataset,
                  labels: Optional[Sequence[Optional[str]]] = None, normalize: Optional[str] = None,
                  access: Access = Access()) -> list[Subject]:
    """One :class:`Subject` per (spec, weights); ``weights[i]`` may list several checkpoints (seeds of one
    group). See the module docstring for labels, normalization, seeds and missing weights. A network without
    weights (``access.random_init``) is initialised from ``access.seed`` (and its position), so a rerun gives
    the same network."""
    random_init = access.random_init
    if len(weights) != len(specs):
        raise UsageError(f"give one --weights per --model ({len(specs)} models, {len(weights)} weights)",
                         "use --random-init for randomly initialised networks")
    labels = list(labels or [None] * len(specs))
    if len(labels) != len(specs):
        raise UsageError(f"give one --label per --model ({len(specs)} models, {len(labels)} labels)")
    if random_init and weights and all(w not in (None, "", "none") and (isinstance(w, str) or all(
            (x or "").lower() not in ("", "none") for x in w)) for w in weights):
        raise UsageError("--random-init was given but every --model has --weights, so it would be ignored",
                         "drop --random-init to probe the checkpoints, or drop --weights to probe random networks")
    out: list[Subject] = []
    for spec, w, label in zip(specs, weights, labels):
        ws = [w] if isinstance(w, (str, type(None))) else list(w)
        ws = [None if (x or "").lower() in ("", "none") else x for x in ws] or [None]
        if any(x is None for x in ws) and not random_init and not carries_weights(spec):
            raise UsageError(f"no --weights for {spec}: resprobe would probe a randomly initialised network",
                             "pass --weights FILE, or --random-init to probe one on purpose")
        names = {}
        for pos, x in enumerate(ws):
            if published.is_name(x):
                ws[pos], names[pos] = _published(spec, x)
            if ws[pos] is not None:
                check_file(Path(ws[pos]))
        group = label or (spec if len(ws) > 1 else None)
        for pos, x in enumerate(ws):
            rec = recorded(x)
            seed = rec.get("seed", pos) if x else pos
            entry = names.get(pos)
            if len(ws) > 1:
                lab = f"{group}/s{seed}"
            else:
                lab = label or (entry.name.replace(":", "_") if entry and not entry.local else label_for(spec, x))
            from .metrics.stats import stable_seed
            init_seed = stable_seed(seed, "init", spec, len(out), *([access.seed] if access.seed else []))
            with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
                torch.manual_seed(init_seed)
                model, prov = load_model(spec, x, access, num_classes=data.num_classes,
                                         in_channels=data.input_shape[0], classes=data.classes)
            if x is None:
                prov = dict(prov, init_seed=init_seed)
            if entry is not None:
                prov = dict(prov, weights_name=entry.name, weights_source=entry.url or entry.source)
            _check_outputs(model, data, lab)
            norm = normalize or (entry.normalize if entry is not None and not recorded(x) else None)
            out.append(Subject(lab, model, normalization_for(x, norm), prov, group=group or lab,
                               seed=int(seed) if seed is not None else None, recipe=recipe_key(x, spec)))
    labs = [s.label for s in out]
    dup = sorted({x for x in labs if labs.count(x) > 1})
    if dup:
        raise UsageError(f"two networks would share the label {', '.join(map(repr, dup))}",
                         "give each --model its own --label")
    return out


def _check_outputs(model: nn.Module, data: Dataset, label: str) -> None:
    """The network's number of outputs must be the data set's number of classes: labels index the outputs,
    so a data set with fewer (or other) classes would be scored against the wrong outputs."""
    try:
        with torch.no_grad():
            p = next(model.parameters(), None)
            x = torch.zeros((1, *data.input_shape), device=p.device if p is not None else "cpu",
                            dtype=p.dtype if p is not None and p.is_floating_point() else torch.float32)
            out = model(x)
    except Exception:  # noqa: BLE001 - a model that cannot take the data's shape fails later with its own error
        return
    if isinstance(out, torch.Tensor) and out.ndim == 2 and out.shape[1] != data.num_classes:
        names = f" ({', '.join(map(str, data.classes))})" if len(data.classes) <= 20 else ""
        raise UsageError(f"the network {label} has {out.shape[1]} outputs but the data set has {data.num_classes} "
                         f"classes{names}", "check --data and --split, or the model spec's num_classes")


def default_input_shape(model: nn.Module) -> tuple:
    """The model's own input size where it records one (timm, torchvision ViT), else 3×224×224 for
    torchvision models and 32×32 for other convolutional nets."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    pe = getattr(model, "patch_embed", None)
    size = getattr(pe, "img_size", None)
    if size is not None:
        chans = getattr(getattr(pe, "proj", None), "in_channels", 3)
        return (chans, *tuple(size))
    if "input_size" in cfg:
        return tuple(cfg["input_size"])
    if hasattr(model, "image_size") and isinstance(model.image_size, int):
        return (3, model.image_size, model.image_size)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            side = 224 if type(model).__module__.startswith("torchvision") else 32
            return (m.in_channels, side, side)
        if isinstance(m, nn.Linear):
            return (m.in_features,)
    raise UsageError("cannot guess the model's input shape", "pass --input-size C,H,W")

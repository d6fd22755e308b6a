"""The Python API the CLI calls: load a model (spec + weights) and data with provenance."""
from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from .io.checkpoint import load_weights
from .io.data import Dataset, load_dataset
from .models import build_model

__all__ = ["load_model", "load_data", "default_input_shape", "versions", "trained_normalization"]


def load_model(spec: str, weights: Optional[str] = None, trust: bool = False, num_classes: Optional[int] = None,
               in_channels: Optional[int] = None) -> tuple[nn.Module, dict]:
    """Build ``spec``, load ``weights`` (if given) strictly, put it in eval mode; return it and its provenance."""
    model = build_model(spec, num_classes=num_classes, in_channels=in_channels)
    prov = {"model": spec, "weights": None, "weights_sha256": None}
    if weights:
        prov.update(load_weights(model, weights, trust=trust))
    model.eval()
    return model, prov


def load_data(spec: str, split: str = "test", root=None, download: bool = False, limit: Optional[int] = None,
              subset_seed: int = 0) -> Dataset:
    return load_dataset(spec, split=split, root=root, download=download, limit=limit, subset_seed=subset_seed)


def trained_normalization(weights: Optional[str]) -> Optional[str]:
    """The normalization recorded by ``resprobe train`` beside a checkpoint (config.json), if any."""
    if not weights:
        return None
    cfg = Path(weights).parent / "config.json"
    if cfg.is_file():
        try:
            return json.loads(cfg.read_text()).get("normalize")
        except (ValueError, OSError):
            return None
    return None


def default_input_shape(model: nn.Module) -> tuple:
    """A plausible input shape: 3x224x224 for torchvision models, 32x32 for other conv nets."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            side = 224 if type(model).__module__.startswith("torchvision") else 32
            return (m.in_channels, side, side)
        if isinstance(m, nn.Linear):
            return (m.in_features,)
    raise ValueError("cannot guess the input shape; pass --input-size")


def versions() -> dict:
    import numpy
    import pandas
    from . import __version__
    out = dict(resprobe=__version__, python=sys.version.split()[0], torch=torch.__version__, numpy=numpy.__version__,
               pandas=pandas.__version__, platform=platform.platform())
    try:
        import torchvision
        out["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    return out

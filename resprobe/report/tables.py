"""Results on disk: long-format CSV and a JSON file with provenance."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

__all__ = ["provenance", "write_table", "write_json"]


def provenance(models: list[dict], data: dict, seed: Optional[int], device: str, wall_time_s: float,
               normalize: str, **extra) -> dict:
    """The provenance block every probe writes: models (spec, weights, sha256), data, seed, versions, time."""
    from ..api import versions
    return dict(models=models, data=data, normalize=normalize, seed=seed, device=str(device),
                wall_time_s=round(float(wall_time_s), 3), versions=versions(), **extra)


def _clean(o):
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating, float)):
        f = float(o)
        return None if math.isnan(f) or math.isinf(f) else f
    if isinstance(o, np.ndarray):
        return _clean(o.tolist())
    if isinstance(o, Path):
        return os.fspath(o)
    return o


def write_json(obj: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_clean(obj), indent=2))
    os.replace(tmp, path)
    return path


def write_table(df: pd.DataFrame, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path

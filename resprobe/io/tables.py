"""Results on disk: long-format CSV and strict JSON (no NaN or infinity: null where a value is
undefined). Every write goes to a temporary file first and is renamed into place."""
from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_path, write_text

__all__ = ["write_table", "write_json", "clean", "read_json"]


def clean(o):
    """A JSON-able copy: numpy scalars and arrays to Python, NaN/inf to None, paths to strings."""
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return clean(dataclasses.asdict(o))
    if isinstance(o, enum.Enum):
        return clean(o.value)
    if isinstance(o, dict):
        return {str(k): clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple, set)):
        return [clean(v) for v in o]
    if isinstance(o, (np.bool_, bool)):
        return bool(o)
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, (np.floating, float)):
        f = float(o)
        return None if math.isnan(f) or math.isinf(f) else f
    if isinstance(o, np.ndarray):
        return clean(o.tolist())
    if isinstance(o, Path):
        return os.fspath(o)
    if o is pd.NA:
        return None
    return o


def _atomic_write(path: Path, text: str) -> Path:
    return write_text(path, text)


def write_json(obj, path) -> Path:
    return _atomic_write(Path(path), json.dumps(clean(obj), indent=2, allow_nan=False, default=str))


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())


def write_table(df: pd.DataFrame, path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return path

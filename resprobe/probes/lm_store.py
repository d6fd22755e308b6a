"""The resumable store of language-model lesions: finished configurations survive a crash.

Files in the output folder: ``lesion.text.npz`` (per network, run and configuration: the per-window sums
``(windows, 4)``) and ``lesion.text.json`` (the full settings behind each run key). A rerun with the same
settings reuses every finished configuration; a run of other settings for the same network starts over and
keeps both (each run's sums under its own key). Every write is atomic (temporary file, rename).
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from ..errors import OutputError
from ..io.atomic import write_bytes
from ..io.tables import write_json

__all__ = ["TextStore"]

_SEP = "\x1f"


class TextStore:
    def __init__(self, out):
        self.out = Path(out)
        self.npz = self.out / "lesion.text.npz"
        self.meta = self.out / "lesion.text.json"

    def _load(self) -> tuple[dict, dict]:
        if not self.npz.is_file():
            return {}, {}
        try:
            with np.load(self.npz, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            runs = json.loads(self.meta.read_text()) if self.meta.is_file() else {}
        except (OSError, ValueError) as e:
            raise OutputError(f"{self.npz} is not a resprobe lesion store ({type(e).__name__})",
                              "choose another --out, or delete the file to start over") from e
        return arrays, runs

    def done(self, label: str, run: str, settings: dict) -> dict:
        """``{configuration key: window sums}`` of the finished configurations of this network and run."""
        arrays, runs = self._load()
        prefix = f"{label}{_SEP}{run}{_SEP}"
        return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}

    def add(self, label: str, run: str, settings: dict, sums: dict) -> None:
        arrays, runs = self._load()
        arrays.update({f"{label}{_SEP}{run}{_SEP}{k}": np.asarray(v, np.float64) for k, v in sums.items()})
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        runs[run] = settings
        write_json(runs, self.meta)
        write_bytes(self.npz, buf.getvalue())

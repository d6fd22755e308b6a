"""The resumable lesion store: finished configurations survive a crash, and never mix with other runs.

Files in the output folder:

- ``lesion.csv``: every finished row, each with its ``run`` key ``<network settings>:<mode>:<mode settings>``
  (hashes of the full settings: weights, data, normalization, seed, bootstrap, mode, k, samples, ...);
- ``lesion.runs.json``: the full settings behind each key (so a refusal can name what differs);
- ``lesion.bits.npz``: one bit per image and configuration (wrong or not), for paired statistics.

A rerun resumes rows whose key matches. Rows of the same network with other network settings, or of the
same mode with other mode settings, are refused with the differences named — even when the settings file
is gone, since the key travels in the rows themselves. Every write is atomic (temporary file, rename).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from ..errors import OutputError
from ..io.atomic import write_bytes
from ..io.tables import read_json, write_json, write_table

__all__ = ["LesionStore"]


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} then, {vb!r} now")
    return out


class LesionStore:
    def __init__(self, out):
        self.out = Path(out)
        self.csv = self.out / "lesion.csv"
        self.runs_file = self.out / "lesion.runs.json"
        self.bits_file = self.out / "lesion.bits.npz"

    # --- reading ------------------------------------------------------------------------------------
    def rows(self) -> pd.DataFrame:
        from .lesion import COLUMNS, typed
        if not self.csv.is_file():
            return typed(pd.DataFrame(columns=COLUMNS))
        try:
            df = pd.read_csv(self.csv, keep_default_na=False, na_values=[""], dtype=str)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise OutputError(f"{self.csv} is not a lesion table ({type(e).__name__})",
                              "choose another --out, or delete the file to start over") from e
        missing = [c for c in ("model", "mode", "deleted", "run") if c not in df.columns]
        if missing:
            raise OutputError(f"{self.csv} is not a lesion table of this resprobe version (no {', '.join(missing)} "
                              "column)", "choose another --out, or delete the file to start over")
        return typed(df)

    def runs(self) -> dict:
        if not self.runs_file.is_file():
            return {}
        try:
            return read_json(self.runs_file)
        except ValueError:
            return {}

    def bits(self) -> dict[str, np.ndarray]:
        if not self.bits_file.is_file():
            return {}
        with np.load(self.bits_file) as z:
            return {k: z[k] for k in z.files}

    # --- the protocol the probe uses ----------------------------------------------------------------
    def done(self, model: str, run: str, settings: dict) -> dict[str, tuple[dict, Optional[np.ndarray]]]:
        """Finished rows of ``model`` made with exactly these settings, by configuration key; refuses rows
        of the same network (or the same mode) made with other settings."""
        net, mode, _ = run.split(":", 2)
        rows = self.rows()
        mine = rows[rows["model"] == model]
        runs = self.runs()
        for other in sorted(set(mine["run"]) - {run}):
            o_net, o_mode, _ = (other.split(":", 2) + ["", ""])[:3]
            if o_net != net or o_mode == mode:
                known = runs.get(other)
                what = "; ".join(_diff(known, settings)) if known else "its settings file lesion.runs.json is missing"
                raise OutputError(f"{self.csv} holds rows for {model!r} from a run with other settings ({what})",
                                  "use another --out, or delete the folder's lesion files to start over")
        bits = self.bits()
        out = {}
        for r in mine.to_dict("records"):
            o_net, o_mode, _ = r["run"].split(":", 2)
            if r["run"] == run or (o_net == net and r["mode"] == "baseline"):
                key = f"{r['mode']}|{r['deleted']}|{r['order']}"
                out[key] = (r, bits.get(f"{model}|{key}"))
        runs[run] = settings
        write_json(runs, self.runs_file)
        return out

    def add(self, rows: list[dict], bits: dict[str, np.ndarray]) -> None:
        """Append finished rows (and their per-image bits) atomically."""
        from .lesion import COLUMNS, typed
        if not rows:
            return
        old = self.rows()
        new = typed(pd.DataFrame(rows, columns=COLUMNS))
        write_table(pd.concat([old, new], ignore_index=True) if len(old) else new, self.csv)
        model = rows[0]["model"]
        allbits = self.bits()
        allbits.update({f"{model}|{k}": v for k, v in bits.items()})
        buf = io.BytesIO()
        np.savez_compressed(buf, **allbits)
        write_bytes(self.bits_file, buf.getvalue())

"""How numbers are written in findings, tables and reports: one place, so every page agrees.

``ci(-0.002, -0.031, 0.029)`` -> ``−0.002 [−0.031, 0.029]`` (a true minus sign, the CI in brackets)."""
from __future__ import annotations

import math
from typing import Optional

__all__ = ["num", "ci", "pct", "pct_ci"]

MINUS = "\u2212"


def num(v: Optional[float], nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    s = f"{v:.{nd}f}"
    return s.replace("-", MINUS)


def ci(v: Optional[float], lo: Optional[float], hi: Optional[float], nd: int = 3) -> str:
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return num(v, nd)
    return f"{num(v, nd)} [{num(lo, nd)}, {num(hi, nd)}]"


def pct(v: Optional[float], nd: int = 2) -> str:
    return "n/a" if v is None or not math.isfinite(v) else num(100 * v, nd) + "%"


def pct_ci(v: Optional[float], lo: Optional[float], hi: Optional[float], nd: int = 2) -> str:
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return pct(v, nd)
    return f"{pct(v, nd)} [{pct(lo, nd)}, {pct(hi, nd)}]"

"""The one validation layer for option values, shared by the CLI (its argparse types wrap these) and the
Python API (the options objects call them in ``__post_init__``): type, finiteness, range, and the limits
on what a value may ask of the machine. Each failure is a :class:`~resprobe.errors.UsageError` naming the
option and what it accepts, so nothing reaches a probe that it cannot handle."""
from __future__ import annotations

import math
import numbers
from typing import Optional

from .errors import UsageError

__all__ = ["number", "integer", "seed", "n_boot", "MAX_SEED", "MAX_BOOT", "MAX_RANGE"]

MAX_SEED = 2 ** 63 - 1     # torch.manual_seed and numpy's SeedSequence both take any integer in 0..2**63-1
MAX_BOOT = 100_000         # bootstrap resamples: 100x the default; each costs (resamples x columns) floats
MAX_RANGE = 100_000        # values in one --k / --n range (a network with more units is not probed here)


def _interval(lo, hi, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi}"
    return "finite"


def number(name: str, v, lo: Optional[float] = None, hi: Optional[float] = None, lo_open: bool = False,
           hi_open: bool = False) -> float:
    """``v`` as a finite float within the bounds (``lo_open``/``hi_open``: the bound itself is excluded)."""
    if isinstance(v, bool) or not isinstance(v, (numbers.Real, str)):
        raise UsageError(f"{name} must be a number, got {v!r}")
    try:
        x = float(v)
    except (TypeError, ValueError, OverflowError):
        raise UsageError(f"{name} must be a number, got {v!r}") from None
    want = _interval(lo, hi, lo_open, hi_open)
    if not math.isfinite(x):
        raise UsageError(f"{name} must be a finite number ({want}), got {v!r}")
    if (lo is not None and (x < lo or (lo_open and x == lo))) or (hi is not None and (x > hi or (hi_open and x == hi))):
        raise UsageError(f"{name} must lie in {want}, got {x:g}")
    return x


def integer(name: str, v, lo: Optional[int] = None, hi: Optional[int] = None) -> int:
    """``v`` as an int within ``lo..hi`` (inclusive)."""
    if isinstance(v, bool):
        raise UsageError(f"{name} must be an integer, got {v!r}")
    if isinstance(v, str):
        try:
            v = int(v.strip())
        except ValueError:
            raise UsageError(f"{name} must be an integer, got {v!r}") from None
    elif isinstance(v, numbers.Integral):
        v = int(v)
    elif isinstance(v, numbers.Real) and math.isfinite(v) and float(v).is_integer():
        v = int(v)
    else:
        raise UsageError(f"{name} must be an integer, got {v!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        span = f"{lo}..{hi}" if lo is not None and hi is not None else (f">= {lo}" if lo is not None else f"<= {hi}")
        shown = str(v) if len(str(v)) <= 30 else f"{str(v)[:12]}...({len(str(v))} digits)"
        raise UsageError(f"{name} must lie in {span}, got {shown}")
    return v


def seed(v, name: str = "--seed") -> int:
    return integer(name, v, 0, MAX_SEED)


def n_boot(v, name: str = "--n-boot") -> int:
    n = integer(name, v, 1)
    if n < 100:
        raise UsageError(f"the bootstrap needs at least 100 resamples, got {name} {n}")
    if n > MAX_BOOT:
        raise UsageError(f"{name} {n} is more bootstrap resamples than resprobe allows ({MAX_BOOT:,})",
                         "1,000-10,000 resamples give stable 95% intervals")
    return n

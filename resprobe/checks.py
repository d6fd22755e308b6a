"""The one validation layer for option values, shared by the CLI (its argparse types wrap these) and the
Python API (the options objects call them in ``__post_init__``): type, finiteness, range, and the limits
on what a value may ask of the machine. Each failure is a :class:`~resprobe.errors.UsageError` naming the
option and what it accepts, so nothing reaches a probe that it cannot handle."""
from __future__ import annotations

import math
import numbers
from typing import Optional

from .errors import UsageError

__all__ = ["number", "integer", "seed", "n_boot", "fields", "available_memory", "require_memory", "MAX_SEED", "MAX_BOOT", "MAX_RANGE"]

MAX_SEED = 2 ** 63 - 1     # torch.manual_seed and numpy's SeedSequence both take any integer in 0..2**63-1
MAX_BOOT = 100_000         # bootstrap resamples: 100x the default; each costs (resamples x columns) floats
MAX_RANGE = 100_000        # values in one --k / --n range (a network with more units is not probed here)


def available_memory() -> Optional[int]:
    """Bytes of memory the system can still give (``MemAvailable``), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def require_memory(nbytes: float, what: str, fix: str, share: float = 0.9, error: type = UsageError) -> None:
    """Refuse, before the work starts, settings whose arrays cannot fit in ``share`` of the memory the system
    can still give (``what`` names them in the message; ``error``: the kind raised)."""
    have = available_memory()
    if have is not None and nbytes > share * have:
        raise error(f"{what} need about {nbytes / 2**30:,.1f} GiB of memory; {have / 2**30:,.1f} GiB are available",
                    fix)


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


def fields(obj, **ranges) -> None:
    """Check every field of an options dataclass against its declared type (the annotation, read as text):
    ``int`` an integer (default range 1..2**31-1, or from 0 where the default is 0), ``float`` a finite number,
    ``bool`` a bool, ``str`` a string, ``tuple`` a list or tuple whose items are of the default's item type
    (``Optional[...]`` also allows None). ``ranges``: ``name=(lo, hi)`` overrides an integer's range. Lists are
    stored as tuples (the options stay hashable)."""
    import dataclasses
    for f in dataclasses.fields(obj):
        v, ann = getattr(obj, f.name), str(f.type).replace("typing.", "")
        flag = "--" + f.name.replace("_", "-")
        if v is None and ann.startswith("Optional"):
            continue
        base = ann.removeprefix("Optional[").removesuffix("]")
        default = f.default if f.default is not dataclasses.MISSING else None
        if base == "bool":
            if not isinstance(v, bool):
                raise UsageError(f"{flag} must be true or false, got {v!r}")
        elif base == "int":
            lo, hi = ranges.get(f.name, (0 if default == 0 else 1, 2 ** 31 - 1))
            integer(flag, v, lo, hi)
        elif base == "float":
            number(flag, v)
        elif base == "str":
            if not isinstance(v, str):
                raise UsageError(f"{flag} must be a string, got {v!r}")
        elif base in ("tuple", "Sequence", "list"):
            if isinstance(v, (str, bytes)) or not isinstance(v, (tuple, list)):
                raise UsageError(f"{flag} must be a list of values, got {v!r}")
            if f.name in ranges and not v:
                raise UsageError(f"{flag} must name at least one value")
            items = [x for x in (default or ()) if x is not None]
            kind = type(items[0]) if items else None
            for x in v:
                if kind is int or f.name in ranges:
                    integer(flag, x, *ranges.get(f.name, (0, 2 ** 31 - 1)))
                elif kind is float:
                    number(flag, x)
                elif kind is str and not isinstance(x, str):
                    raise UsageError(f"{flag} must be a list of names, got {v!r}")
            if isinstance(v, list):
                object.__setattr__(obj, f.name, tuple(v))

"""Progress for people, logs for files.

On a terminal, a tqdm bar with a name and a unit; when stderr is a file or a pipe, one line every
10% (``lesion single resnet20: 40% (12/30 batches, 8 s)``); nothing with ``set_quiet(True)`` (the
CLI's ``--quiet``) or ``enabled=False``. Only the main process of a distributed run reports.
"""
from __future__ import annotations

import sys
import time

__all__ = ["progress", "set_quiet", "note"]

_QUIET = False


def set_quiet(quiet: bool) -> None:
    global _QUIET
    _QUIET = bool(quiet)


def _main_process() -> bool:
    from .distributed import is_main
    return is_main()


def note(message: str) -> None:
    """A one-line message on stderr for the user (not with --quiet)."""
    if not _QUIET and _main_process():
        print(message, file=sys.stderr, flush=True)


class _Null:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class _Lines(_Null):
    """A line every ``step`` of the total, for logs."""

    def __init__(self, total: int, desc: str, unit: str, step: float = 0.1):
        self.total, self.desc, self.unit, self.step = max(int(total), 1), desc, unit, step
        self.n, self.next, self.t0, self.closed = 0, step, time.time(), False

    def update(self, n: int = 1) -> None:
        self.n += n
        frac = self.n / self.total
        if frac + 1e-12 >= self.next:
            print(f"{self.desc}: {min(frac, 1):.0%} ({self.n}/{self.total} {self.unit}, {time.time() - self.t0:.0f} s)",
                  file=sys.stderr, flush=True)
            while self.next <= frac + 1e-12:
                self.next += self.step

    def close(self) -> None:
        self.closed = True


def progress(total: int, desc: str, unit: str = "batches", enabled: bool = True):
    """A progress reporter with ``update(n)`` and ``close()`` (also a context manager)."""
    if not enabled or _QUIET or total <= 0 or not _main_process():
        return _Null()
    if sys.stderr.isatty():
        from tqdm.auto import tqdm
        return tqdm(total=total, desc=desc, unit=unit.rstrip("s") if unit.endswith("s") else unit, leave=False,
                    dynamic_ncols=True)
    return _Lines(total, desc, unit)

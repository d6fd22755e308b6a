"""Output folders: checked before any long work starts, and held by one run at a time.

``claim(out)`` creates the folder if needed, checks that it is a writable folder, and takes a lock
(``.resprobe.lock`` inside it, via ``filelock``) for the duration: a second concurrent run into the
same folder is refused with a clear message instead of interleaving its rows with the first's.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from .errors import OutputError

__all__ = ["check_writable", "claim", "LOCK_NAME"]

LOCK_NAME = ".resprobe.lock"


def check_writable(out) -> Path:
    """Create ``out`` (and parents) if needed; raise :class:`OutputError` unless it is a writable folder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file, not a folder", "choose a folder for the results")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as e:
        raise OutputError(f"cannot write to --out {out} ({e.strerror or e})",
                          "choose a folder you can write to") from e
    return out


@contextlib.contextmanager
def claim(out):
    """Hold ``out`` for one run (see the module docstring)."""
    from filelock import FileLock, Timeout
    out = check_writable(out)
    lock = FileLock(os.fspath(out / LOCK_NAME))
    try:
        lock.acquire(timeout=0)
    except Timeout as e:
        raise OutputError(f"another resprobe run is writing to {out}",
                          "wait for it to finish, or choose another --out") from e
    try:
        yield out
    finally:
        lock.release()

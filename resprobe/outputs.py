"""Output folders: checked before any long work starts, and held by one run at a time.

``claim(out)`` creates the folder if needed, checks that it is a writable folder, and takes a lock
(``.resprobe.lock`` inside it, via ``filelock``) for the duration: a second concurrent run into the
same folder is refused with a clear message instead of interleaving its rows with the first's.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from .errors import OutputError

__all__ = ["check_writable", "claim", "check_same_settings", "LOCK_NAME"]

LOCK_NAME = ".resprobe.lock"


def check_writable(out) -> Path:
    """Create ``out`` (and parents) if needed; raise :class:`OutputError` unless it is a writable folder."""
    if not str(out).strip():
        raise OutputError("--out is empty", "name a folder for the results")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file, not a folder", "choose a folder for the results")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as e:
        from .io.atomic import FIXES
        fix = FIXES.get(e.errno, (None, "choose a folder you can write to"))[1]
        raise OutputError(f"cannot write to --out {out} ({e.strerror or e})", fix) from e
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


def check_same_settings(out, stem: str, settings: dict) -> None:
    """Refuse to replace the results ``<stem>.csv``/``.json`` already in ``out`` by results of other settings
    (the settings of a command are recorded in its JSON as ``provenance.command``): a rerun with the same
    settings gives the same files, one with other settings would silently lose the first run's."""
    out = Path(out)
    meta, table = out / f"{stem}.json", out / f"{stem}.csv"
    if not (meta.exists() or table.exists()):
        return
    try:
        old = json.loads(meta.read_text()).get("provenance", {}).get("command")
    except (OSError, ValueError, AttributeError):
        old = None
    if old is None:
        raise OutputError(f"{out} already holds {stem} results of unknown settings",
                          f"choose another --out, or delete {stem}.* there to replace them")
    diff = [k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
    if diff:
        said = "; ".join(f"{k}: {old.get(k)!r} then, {settings.get(k)!r} now" for k in diff[:4])
        raise OutputError(f"{out} already holds {stem} results of other settings ({said})",
                          f"choose another --out, or delete {stem}.* there to replace them")

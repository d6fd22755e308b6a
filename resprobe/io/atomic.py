"""Atomic file writes: every result file is written under a temporary name in its folder and renamed over the
old one, so a full disk, a kill or a crash leaves either the old file or the new one, never half of one. A
write that fails for a reason the user can fix (a full disk, a name too long, no permission, a read-only
file system) is one :class:`~resprobe.errors.OutputError` line; the temporary file is removed."""
from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Iterator, Optional

from ..errors import OutputError, UserError

__all__ = ["atomic_path", "write_text", "write_bytes", "os_error", "machine_error", "FIXES"]

FIXES = {
    errno.ENOSPC: ("the disk is full", "free space there or choose another --out"),
    errno.EDQUOT: ("the disk quota is exceeded", "free space there or choose another --out"),
    errno.ENAMETOOLONG: ("the file name is too long", "choose a shorter --out (each folder name under 255 bytes)"),
    errno.EACCES: ("permission denied", "choose a folder you can write to"),
    errno.EPERM: ("permission denied", "choose a folder you can write to"),
    errno.EROFS: ("the file system is read-only", "choose a writable folder"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "choose another --out"),
    errno.EISDIR: ("a folder is in the way", "choose another --out"),
}


def os_error(e: OSError, path) -> OutputError | None:
    """The one-line error for an :class:`OSError` the user can fix (None for others)."""
    what = FIXES.get(e.errno)
    if what is None:
        return None
    return OutputError(f"cannot write {path}: {what[0]}", what[1])


@contextlib.contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; when the block ends without an error it replaces ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise (os_error(e, path) or e) from e
    tmp = path.with_name(f".{path.name[:200]}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        err = os_error(e, path)
        if err is None:
            raise
        raise err from e
    except BaseException:
        _remove(tmp)
        raise


def _remove(p: Path) -> None:
    try:
        p.unlink()
    except OSError:
        pass


def write_text(path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes(path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def machine_error(e: BaseException) -> Optional[UserError]:
    """A full disk, a name too long, no permission or no memory, as the one line the user can act on (None:
    not the machine's limits)."""
    if isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and ("can't allocate memory" in str(e)
                                                                       or "out of memory" in str(e).lower())):
        return UserError("out of memory", "use fewer images (--limit), a smaller --batch-size or fewer bootstrap "
                         "resamples (--n-boot)")
    return os_error(e, e.filename or "a file") if isinstance(e, OSError) else None

"""Downloads that leave either nothing or a checked file: the bytes go to a temporary file beside the
destination (:func:`~resprobe.io.atomic.atomic_path`), which is renamed only after its checksum is checked;
a cut, an unreachable host or a wrong checksum deletes it and is one :class:`~resprobe.errors.UserError`
line naming the URL and the folder."""
from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from pathlib import Path
from typing import NamedTuple, Optional

from ..errors import UserError
from .atomic import atomic_path

__all__ = ["file_digest", "download", "Failure"]


def file_digest(path, algo: str = "sha256") -> str:
    """The hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


class Failure(NamedTuple):
    """How a failed download is reported: ``what`` names it, ``fix`` is the hint when the network is out of
    reach, ``kind`` the UserError kind raised."""

    what: str = ""
    fix: str = "connect to the network"
    kind: type = UserError


def download(url: str, dest: Path, expected: Optional[str], algo: str = "sha256", failure: Failure = Failure()
             ) -> None:
    """Fetch ``url`` into ``dest``; ``expected``: the digest (or its leading hex digits) the file must have
    (None: unchecked); ``failure``: how a failure is reported."""
    what, offline_fix, error = failure
    name = f"{what} from {url}" if what else url
    with atomic_path(dest) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            raise error(f"cannot download {name} ({reason}) into {dest.parent}", offline_fix) from e
        if expected is not None:
            got = file_digest(tmp, algo)
            if not got.startswith(expected.lower()):
                raise error(f"the download of {name} failed its checksum ({algo} {expected[:16]}... expected, got "
                            f"{got[:16]}...); it was deleted", "run again; if it fails again, the source changed")

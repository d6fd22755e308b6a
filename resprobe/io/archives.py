"""The files of an image folder or archive, read within limits that are checked before anything is read.

Every member name is checked: an absolute name, a ``..`` component, a link or a device in an archive is
refused (never turned into a class name or followed). Sizes are checked from the headers first (a tar is
scanned once in streaming mode, which holds no data) and again while reading, so a small compressed file
that expands to gigabytes is refused without holding them. The limits, each raised by an environment
variable named in its error:

- ``RESPROBE_MAX_MEMBER_BYTES`` (default 64 MiB): one file;
- ``RESPROBE_MAX_MEMBERS`` (default 2,000,000): files and folders of one archive or folder;
- ``RESPROBE_MAX_ARCHIVE_BYTES`` (default 4 GiB): all files together, uncompressed;
- ``RESPROBE_MAX_IMAGE_PIXELS`` (default 25,000,000): one image (checked from its header, before decoding).
"""
from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np

from ..errors import UserError

__all__ = ["DataError", "limit", "read_members", "decode_image", "IMAGE_EXTS", "LIMITS"]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff")
LIMITS = {"RESPROBE_MAX_MEMBER_BYTES": 64 * 2 ** 20, "RESPROBE_MAX_MEMBERS": 2_000_000,
          "RESPROBE_MAX_ARCHIVE_BYTES": 4 * 2 ** 30, "RESPROBE_MAX_IMAGE_PIXELS": 25_000_000}
INCOMPLETE = "the file is incomplete or damaged: download or copy it again"
FORMATS = "a folder, .tar, .tar.gz/.tgz, .tar.bz2, .tar.xz or .zip"


class DataError(UserError, ValueError):
    """Data that is missing, corrupt, beyond a limit or not in the expected layout."""


def limit(name: str) -> int:
    """The limit ``name`` (one of :data:`LIMITS`), from its environment variable if set."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return LIMITS[name]
    try:
        v = int(float(raw))
    except (ValueError, OverflowError):
        raise DataError(f"{name}={raw!r} is not a number", "unset it or give a positive integer") from None
    if v < 1:
        raise DataError(f"{name}={raw!r} must be positive", "unset it or give a positive integer")
    return v


def _over(path, what: str, got: int, name: str) -> DataError:
    unit = "" if "PIXELS" in name or name.endswith("MEMBERS") else " bytes"
    return DataError(f"{path}: {what} ({got:,}{unit}) exceeds the limit of {limit(name):,}{unit}",
                     f"set {name} to raise it if the data is what you meant")


class _Budget:
    """Counts members and bytes against the limits."""

    def __init__(self, path):
        self.path, self.members, self.bytes = path, 0, 0
        self.max_member = limit("RESPROBE_MAX_MEMBER_BYTES")
        self.max_members = limit("RESPROBE_MAX_MEMBERS")
        self.max_total = limit("RESPROBE_MAX_ARCHIVE_BYTES")

    def add(self, name: str, size: int = 0) -> None:
        self.members += 1
        if self.members > self.max_members:
            raise _over(self.path, "the number of files and folders", self.members, "RESPROBE_MAX_MEMBERS")
        if size > self.max_member:
            raise _over(self.path, f"member {name}", size, "RESPROBE_MAX_MEMBER_BYTES")
        self.bytes += size
        if self.bytes > self.max_total:
            raise _over(self.path, "the files together", self.bytes, "RESPROBE_MAX_ARCHIVE_BYTES")


def _parts(path, name: str) -> tuple:
    """A member name as path parts; absolute names and ``..`` are refused."""
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise DataError(f"{path}: member {name!r} has an absolute name",
                        "an archive of a data set holds [split/]<class>/<image> paths relative to its top")
    if ".." in p.parts:
        raise DataError(f"{path}: member {name!r} points outside the archive ('..')",
                        "an archive of a data set holds [split/]<class>/<image> paths relative to its top")
    return tuple(x for x in p.parts if x not in (".", ""))


def _is_image(parts: tuple) -> bool:
    return bool(parts) and parts[-1].lower().endswith(IMAGE_EXTS)


def _decompressed(path: Path):
    """A stream of the archive's decompressed bytes (compression told by the first bytes)."""
    import bz2
    import lzma
    with open(path, "rb") as f:
        head = f.read(6)
    opener = {b"\x1f\x8b": gzip.open, b"BZh": bz2.open, b"\xfd7zXZ": lzma.open}
    op = next((o for magic, o in opener.items() if head.startswith(magic)), None)
    return open(path, "rb") if op is None else op(path, "rb")


_STREAM_ERRORS = (EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError)


def _scan_tar(path: Path) -> None:
    """Check every header of a tar against the rules and limits, streaming (no member data is kept)."""
    import lzma
    budget = _Budget(path)
    try:
        with _decompressed(path) as raw, tarfile.open(fileobj=raw, mode="r|") as tf:
            for m in tf:
                parts = _parts(path, m.name)
                if m.issym() or m.islnk():
                    raise DataError(f"{path}: member {m.name!r} is a link", "archives of images hold files and "
                                    "folders only: pack the files themselves")
                if not (m.isfile() or m.isdir()):
                    raise DataError(f"{path}: member {m.name!r} is not a file or folder (a device or pipe)",
                                    "archives of images hold files and folders only")
                budget.add(m.name, m.size if (m.isfile() and _is_image(parts)) else 0)
    except DataError:
        raise
    except (tarfile.TarError, lzma.LZMAError) + _STREAM_ERRORS:
        return  # not a tar, or cut: the verifying read below says which, in its own words


def archive_bytes(path: Path) -> bytes:
    """The archive's decompressed bytes, read to their end marker (a cut anywhere fails: gzip's length and
    CRC, bzip2's and xz's end-of-stream marker and checksums), at most ``RESPROBE_MAX_ARCHIVE_BYTES`` plus
    room for headers."""
    import lzma
    cap = limit("RESPROBE_MAX_ARCHIVE_BYTES") + 64 * 2 ** 20
    buf = bytearray()
    try:
        with _decompressed(path) as g:
            while True:
                chunk = g.read(1 << 22)
                if not chunk:
                    break
                buf += chunk
                if len(buf) > cap:
                    raise _over(path, "the uncompressed archive", len(buf), "RESPROBE_MAX_ARCHIVE_BYTES")
    except DataError:
        raise
    except (lzma.LZMAError,) + _STREAM_ERRORS as e:
        raise DataError(f"{path}: truncated or corrupt archive ({type(e).__name__}: {e})", INCOMPLETE) from e
    return bytes(buf)


def _read_zip(path: Path) -> tuple[list, set]:
    """Image files and directories from a zip archive, every member's CRC verified (a cut zip has no
    central directory and is refused)."""
    import zipfile
    files, dirs, budget = [], set(), _Budget(path)
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                parts = _parts(path, info.filename)
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise DataError(f"{path}: member {info.filename!r} is a link",
                                    "archives of images hold files and folders only")
                if not parts:
                    continue
                if info.is_dir():
                    budget.add(info.filename)
                    dirs.add(parts)
                    continue
                image = _is_image(parts)
                budget.add(info.filename, info.file_size if image else 0)
                dirs.update(parts[:k] for k in range(1, len(parts)))
                data = None
                if image:
                    with z.open(info) as f:
                        data = f.read(budget.max_member + 1)
                    if len(data) > budget.max_member:
                        raise _over(path, f"member {info.filename}", len(data), "RESPROBE_MAX_MEMBER_BYTES")
                files.append((parts, data))
    except RuntimeError as e:   # zipfile's "is encrypted, password required"
        raise DataError(f"{path}: a member is encrypted ({e})", "unpack it with its password, or pack it "
                        "without one") from e
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as e:
        raise DataError(f"{path}: truncated or corrupt zip archive ({type(e).__name__}: {e})", INCOMPLETE) from e
    return files, dirs


def _read_tar(path: Path) -> tuple[list, set]:
    """Image files as (path parts, bytes) and directories as path parts, from a verified tar: every
    member's data is complete and the archive ends with its end-of-archive blocks."""
    _scan_tar(path)
    raw = archive_bytes(path)
    if not raw:
        raise DataError(f"{path}: the archive is empty", "expected [split/]<class>/<image> files")
    if len(raw) >= 512:
        try:
            tarfile.TarInfo.frombuf(raw[:512], "utf-8", "surrogateescape")
        except (tarfile.EmptyHeaderError, tarfile.EOFHeaderError):
            pass  # an archive without members (its end blocks only): "no image files" below
        except tarfile.HeaderError as e:
            raise DataError(f"{path}: not a tar archive (its first block is no tar header: {e})",
                            f"imagefolder: reads {FORMATS}") from e
    if len(raw) < 1024 or len(raw) % 512:
        raise DataError(f"{path}: truncated tar archive ({len(raw)} bytes, not whole 512-byte blocks)"
                        + ("" if len(raw) >= 512 else f", or not a tar archive ({FORMATS} are read)"), INCOMPLETE)
    files, dirs, end, budget = [], set(), 0, _Budget(path)
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tf:
            for m in tf:
                end = max(end, m.offset_data + ((m.size + 511) // 512) * 512)
                if m.offset_data + m.size > len(raw):
                    raise DataError(f"{path}: member {m.name} is cut short (truncated archive)", INCOMPLETE)
                parts = _parts(path, m.name)
                if m.issym() or m.islnk() or not (m.isfile() or m.isdir()):
                    raise DataError(f"{path}: member {m.name!r} is a link, device or pipe",
                                    "archives of images hold files and folders only")
                budget.add(m.name, m.size if m.isfile() and _is_image(parts) else 0)
                if m.isdir():
                    dirs.add(parts)
                elif parts:
                    files.append((parts, tf.extractfile(m).read() if _is_image(parts) else None))
    except tarfile.TarError as e:
        raise DataError(f"{path}: corrupt tar archive ({type(e).__name__}: {e})", INCOMPLETE) from e
    tail = raw[end:]
    if len(tail) < 1024 or tail[:1024].count(0) != 1024:
        raise DataError(f"{path}: truncated tar archive (no end-of-archive marker after the last member, "
                        f"{len(tail)} bytes left)", INCOMPLETE)
    return files, dirs


def _read_folder(path: Path) -> tuple[list, set]:
    files, dirs, budget = [], set(), _Budget(path)
    for p in sorted(path.rglob("*")):
        parts = p.relative_to(path).parts
        if p.is_dir():
            budget.add(str(p))
            dirs.add(parts)
        elif p.is_file():
            image = p.suffix.lower() in IMAGE_EXTS
            budget.add(str(p), p.stat().st_size if image else 0)
            files.append((parts, p.read_bytes() if image else None))
    return files, dirs


def read_members(path: Path) -> tuple[list, set]:
    """All files as (path parts, bytes or None for non-images) and all directories, from a folder or an
    archive; a path that is neither a folder nor a regular file is refused before it is read."""
    try:
        st = path.stat()
    except OSError as e:
        raise DataError(f"cannot read {path} ({e.strerror or e})", "check the path after imagefolder:") from e
    if stat.S_ISDIR(st.st_mode):
        return _read_folder(path)
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"{path} is not a folder or a regular file (a device, pipe or socket)",
                        f"imagefolder: reads {FORMATS}")
    with open(path, "rb") as f:
        head = f.read(4)
    if head in (b"PK\x03\x04", b"PK\x05\x06"):
        return _read_zip(path)
    return _read_tar(path)


_SIXTEEN = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def decode_image(data: bytes, name: str, path) -> np.ndarray:
    """An image file's bytes as an H×W×3 uint8 array. 16-bit grey images are scaled to 8 bits (v·255/65535,
    rounded: an 8-bit image saved as 16 bits decodes to itself); floating-point images are refused; the
    pixel count is checked from the header before anything is decoded."""
    from PIL import Image, UnidentifiedImageError
    if not data:
        raise DataError(f"{path}: image {name} is an empty file", "the file is incomplete: copy it again or remove it")
    cap = limit("RESPROBE_MAX_IMAGE_PIXELS")
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # our own limit, checked below from the header, replaces PIL's
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > cap:
                raise _over(path, f"image {name} of {w}×{h} pixels", w * h, "RESPROBE_MAX_IMAGE_PIXELS")
            if im.mode in _SIXTEEN:
                a = np.asarray(im).astype(np.int64)
                if a.min() < 0 or a.max() > 65535:
                    raise DataError(f"{path}: image {name} holds 32-bit integer pixels outside 0..65535",
                                    "convert it to 8 or 16 bits per channel")
                g = ((a * 255 + 32767) // 65535).astype(np.uint8)
                return np.repeat(g[:, :, None], 3, axis=2)
            if im.mode == "F":
                raise DataError(f"{path}: image {name} holds floating-point pixels (mode F)",
                                "convert it to 8 or 16 bits per channel")
            return np.asarray(im.convert("RGB"))
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            MemoryError) as e:
        raise DataError(f"{path}: cannot decode image {name} ({type(e).__name__}: "
                        f"{str(e).replace(' <_io.BytesIO object', '').split(' at 0x')[0]})",
                        "the file is corrupt or not an image") from e
    finally:
        Image.MAX_IMAGE_PIXELS = old

"""The data sets resprobe fetches by name: CIFAR-10 (python pickles read by a numpy-only unpickler, md5-checked,
from the official URL or RESPROBE_CIFAR10_URL) and Fashion-MNIST (IDX files)."""
from __future__ import annotations

import gzip
import math
import os
import pickle
import shutil
import struct
import tarfile
import zlib
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .fetch import Failure, download, file_digest
from .archives import IMAGE_EXTS, DataError, decode_image, read_members  # noqa: F401

from .data import Dataset, cache_dir

__all__ = ["load_cifar10", "load_fashion_mnist", "CIFAR10_CLASSES", "FASHION_CLASSES"]

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_DEBIAN = Path("/usr/share/datasets/fashion-mnist")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR batches hold numpy arrays and lists only; refuse anything else."""

    def find_class(self, module, name):
        if module.split(".")[0] == "numpy" and name in ("_reconstruct", "ndarray", "dtype", "scalar",
                                                          "_frombuffer"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing {module}.{name} in a CIFAR batch file")


def _read_cifar_batch(p: Path) -> tuple[np.ndarray, list]:
    try:
        with open(p, "rb") as f:
            d = _NumpyOnlyUnpickler(f, encoding="bytes").load()
        data, labels = np.asarray(d[b"data"], dtype=np.uint8), list(d[b"labels"])
        return data.reshape(-1, 3, 32, 32), labels
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as e:
        raise DataError(f"{p}: not a valid CIFAR-10 python batch ({type(e).__name__}: {e})") from e


def _md5(p: Path) -> str:
    return file_digest(p, "md5")


def _download(url: str, dest: Path, md5: Optional[str], alternative: str = "") -> None:
    download(url, dest, md5, "md5", Failure("", f"connect to the network{alternative}", DataError))


def _cifar10_source() -> tuple[str, str]:
    """The archive's URL and md5: CIFAR-10's own, or a mirror's (``RESPROBE_CIFAR10_URL`` and
    ``RESPROBE_CIFAR10_MD5``, e.g. a local copy served in tests)."""
    return (os.environ.get("RESPROBE_CIFAR10_URL") or CIFAR10_URL,
            os.environ.get("RESPROBE_CIFAR10_MD5") or CIFAR10_MD5)


def _fetch_cifar10(base: Path) -> Path:
    """Download (md5-checked) and unpack CIFAR-10 under ``base``; the folder appears only when complete."""
    url, md5 = _cifar10_source()
    arch = base / "cifar-10-python.tar.gz"
    if arch.is_file() and _md5(arch) != md5:
        arch.unlink()   # a damaged or foreign copy: fetched again
    if not arch.is_file():
        _download(url, arch, md5, f", or pass --data-root DIR holding cifar-10-batches-py (the folder {base} "
                  "is where --download puts it)")
    work = base / f".unpack{os.getpid()}"
    try:
        with tarfile.open(arch, "r:gz") as tf:
            tf.extractall(work, filter="data")
        if not (work / "cifar-10-batches-py" / "test_batch").is_file():
            raise DataError(f"{arch} holds no cifar-10-batches-py/test_batch", "delete it and download again")
        shutil.rmtree(base / "cifar-10-batches-py", ignore_errors=True)   # a partial folder of an older run
        os.replace(work / "cifar-10-batches-py", base / "cifar-10-batches-py")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataError(f"{arch}: cannot unpack ({type(e).__name__}: {e})", "delete it and download again") from e
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return base / "cifar-10-batches-py"


def load_cifar10(split: str = "test", root=None, download: bool = False) -> Dataset:
    roots = [Path(root)] if root else [cache_dir() / "data"]
    folder = None
    for r in roots:
        for cand in (r / "cifar-10-batches-py", r):
            if (cand / "test_batch").is_file():
                folder = cand
                break
        if folder:
            break
    if folder is None:
        if not download:
            raise DataError(
                f"CIFAR-10 (python format, cifar-10-batches-py) not found under {', '.join(map(str, roots))}. "
                "Pass --data-root DIR that holds cifar-10-batches-py, or --download to fetch it (163 MB, "
                "md5-verified), or use imagefolder:PATH for an image folder/archive.")
        folder = _fetch_cifar10(roots[0])
    if split == "train":
        files = [folder / f"data_batch_{i}" for i in range(1, 6)]
    elif split == "test":
        files = [folder / "test_batch"]
    else:
        raise DataError(f"CIFAR-10 has splits train and test, not {split!r}")
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise DataError(f"{folder}: missing CIFAR-10 files {missing}")
    parts = [_read_cifar_batch(f) for f in files]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    labels = torch.tensor([lab for p in parts for lab in p[1]], dtype=torch.long)
    classes = CIFAR10_CLASSES
    meta = folder / "batches.meta"
    if meta.is_file():
        try:
            with open(meta, "rb") as f:
                m = _NumpyOnlyUnpickler(f, encoding="bytes").load()
            classes = [c.decode() if isinstance(c, bytes) else str(c) for c in m[b"label_names"]]
        except Exception:  # noqa: BLE001 - names are cosmetic
            pass
    return Dataset(images, labels, classes, "cifar10", split, dict(path=os.fspath(folder)))


def _read_idx(p: Path) -> np.ndarray:
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rb") as f:
            raw = f.read()
        zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype != 0x08:
            raise ValueError(f"bad IDX magic {raw[:4].hex()}")
        dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
        data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        if data.size != math.prod(dims):
            raise ValueError(f"{data.size} bytes of data for dimensions {dims}")
        return data.reshape(dims)
    except (OSError, EOFError, struct.error, ValueError, zlib.error) as e:
        raise DataError(f"{p}: not a valid IDX file ({e})") from e


def load_fashion_mnist(split: str = "test", root=None, download: bool = False) -> Dataset:
    if split not in ("train", "test"):
        raise DataError(f"Fashion-MNIST has splits train and test, not {split!r}")
    stem = "train" if split == "train" else "t10k"
    names = [f"{stem}-images-idx3-ubyte", f"{stem}-labels-idx1-ubyte"]
    roots = ([Path(root)] if root else []) + [FASHION_DEBIAN, cache_dir() / "data" / "fashion-mnist"]

    def find(r: Path, n: str) -> Optional[Path]:
        for cand in (r / n, r / (n + ".gz")):
            if cand.is_file():
                return cand
        return None

    for r in roots:
        found = [find(r, n) for n in names]
        if all(found):
            break
    else:
        if not download:
            raise DataError(f"Fashion-MNIST {split} IDX files not found under {', '.join(map(str, roots))}; pass "
                            "--data-root DIR, install Debian's dataset-fashion-mnist, or pass --download")
        r = roots[-1]
        for n in names:
            _download(FASHION_URL + n + ".gz", r / (n + ".gz"), None)
        found = [find(r, n) for n in names]
    images = _read_idx(found[0])
    labels = _read_idx(found[1])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{found[0].parent}: IDX files disagree ({images.shape} images, {labels.shape} labels)")
    return Dataset(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)),
                   FASHION_CLASSES, "fashion-mnist", split, dict(path=os.fspath(found[0].parent)))

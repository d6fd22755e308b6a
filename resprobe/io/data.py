"""Data sets as in-memory uint8 tensors, with the specs used on the CLI.

Specs (``--data``):

- ``cifar10``: the official python-format CIFAR-10 (``cifar-10-batches-py``) under ``--data-root`` or the
  user cache (``$RESPROBE_CACHE`` or ``~/.cache/resprobe``); downloaded, checksum verified, only with
  ``download=True``;
- ``imagefolder:PATH``: a folder or a ``.tar`` (plain, gzip, bzip2 or xz) or ``.zip`` archive of
  ``[split/]<class>/<image>`` files; class index = sorted class names (of all splits together, so a split
  that lacks a class keeps the others' indices); archives are read in one sequential pass; decoded images are cached by
  the archive's content hash;
- ``fashion-mnist``: IDX files under ``--data-root``, ``/usr/share/datasets/fashion-mnist`` or the cache;
- ``synthetic`` (or ``synthetic(n=2000,classes=4,size=32)``): an offline, seeded procedural set.

Images are kept as ``uint8`` N×C×H×W; batches are scaled to [0, 1] and normalized on the fly, so
memory for activations follows the batch size.
"""
from __future__ import annotations

import hashlib
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from .atomic import atomic_path
from .fetch import file_digest
from ..checks import require_memory
from .archives import IMAGE_EXTS, DataError, decode_image, read_members  # noqa: F401

__all__ = ["DataError", "IMAGE_EXTS", "Dataset", "NORMALIZATIONS", "load_dataset", "cache_dir", "subset_indices"]

NORMALIZATIONS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "none": None,
}
SPLIT_NAMES = ("train", "test", "val", "valid", "validation")
CACHE_VERSION = 3  # 2: class indices from every split's classes; 3: 16-bit images scaled, names checked


def cache_dir() -> Path:
    """``$RESPROBE_CACHE`` (when set and not empty), else ``~/.cache/resprobe``."""
    return Path(os.environ.get("RESPROBE_CACHE", "").strip() or Path.home() / ".cache" / "resprobe")


def subset_indices(n: int, limit: Optional[int], seed: int = 0) -> torch.Tensor:
    """The deterministic subset used by ``--limit``: the first ``limit`` of a seeded permutation, sorted.

    The same for every probe, run and batch size (it depends only on n, limit and seed).
    """
    if limit is None or limit >= n:
        return torch.arange(n)
    if limit <= 0:
        raise DataError(f"--limit must be positive, got {limit}")
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:limit].sort().values


@dataclass
class Dataset:
    images: torch.Tensor          # uint8, N x C x H x W
    labels: torch.Tensor          # int64, N
    classes: list
    spec: str
    split: str
    source: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(f"images must be uint8 N x C x H x W, got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise DataError("images and labels differ in length")
        if len(self.labels) == 0:
            raise DataError(f"{self.spec} [{self.split}] holds no images")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple:
        return tuple(self.images.shape[1:])

    def subset(self, limit: Optional[int], seed: int = 0) -> "Dataset":
        """Deterministic subset of ``limit`` images (see :func:`subset_indices`)."""
        if limit is None or limit >= len(self):
            return self
        idx = subset_indices(len(self), limit, seed)
        src = dict(self.source, limit=limit, subset_seed=seed, full_size=len(self))
        return Dataset(self.images[idx], self.labels[idx], self.classes, self.spec, self.split, src)

    def to(self, device) -> "Dataset":
        """The same data with images and labels held on ``device`` (e.g. a GPU: no copy per batch)."""
        return Dataset(self.images.to(device), self.labels.to(device), self.classes, self.spec, self.split,
                       self.source)

    def describe(self) -> dict:
        return dict(spec=self.spec, split=self.split, n_images=len(self), num_classes=self.num_classes,
                    input_shape=list(self.input_shape), **self.source)

    def batches(self, batch_size: int = 256, normalize: str = "none", device="cpu", augment: bool = False,
                only=None, order: Optional[torch.Tensor | torch.Generator] = None
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y, idx)``: float images scaled to [0, 1] and normalized, labels, indices (the last
        batch holds the remainder). ``only``: the batch numbers to yield (the others are skipped unread);
        ``order``: a permutation of the images to read them in, or a ``torch.Generator`` to draw a random one
        from (which then also draws the random crops and flips of ``augment``); default: data order."""
        if batch_size <= 0:
            raise DataError(f"batch size must be positive, got {batch_size}")
        generator = order if isinstance(order, torch.Generator) else None
        if order is None or generator is not None:
            order = torch.randperm(len(self), generator=generator) if generator is not None else torch.arange(len(self))
        mean, std = _norm_tensors(normalize, self.images.shape[1])
        for b, s in enumerate(range(0, len(self), batch_size)):
            if only is not None and b not in only:
                continue
            idx = order[s:s + batch_size]
            on = idx.to(self.images.device)
            x = self.images[on].float().div_(255.0)
            if augment:
                x = _augment(x, generator)
            if mean is not None:
                x = (x - mean.to(x.device)) / std.to(x.device)
            yield x.to(device, non_blocking=True), self.labels[on].to(device), idx


def _norm_tensors(name: str, channels: int):
    if name not in NORMALIZATIONS:
        raise DataError(f"unknown normalization {name!r}; choose one of {', '.join(NORMALIZATIONS)}")
    stats = NORMALIZATIONS[name]
    if stats is None:
        return None, None
    mean, std = (torch.tensor(v) for v in stats)
    if channels != 3:  # grey images: the average channel statistics
        mean, std = mean.mean().repeat(channels), std.mean().repeat(channels)
    return mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)


def _augment(x: torch.Tensor, g: Optional[torch.Generator], pad: int = 4) -> torch.Tensor:
    """Random crop with ``pad``-pixel zero padding and random horizontal flip (He et al.).

    The random numbers are drawn on the CPU from ``g``, so the crops are the same on every device."""
    n, c, h, w = x.shape
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    flip = torch.rand(n, generator=g) < 0.5
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h))  # n x h
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w))  # n x w
    cols = torch.where(flip.view(n, 1), cols.flip(1), cols)
    dev = x.device
    out = xp[torch.arange(n, device=dev).view(n, 1, 1, 1), torch.arange(c, device=dev).view(1, c, 1, 1),
             rows.to(dev).view(n, 1, h, 1), cols.to(dev).view(n, 1, 1, w)]
    return out


# --- specs ------------------------------------------------------------------------------------------

def load_dataset(spec: str, split: str = "test", root=None, download: bool = False, cache: bool = True) -> Dataset:
    """Load the data set named by ``spec`` (see the module docstring); ``.subset(n, seed)`` takes a seeded
    random subset of it."""
    from ..models import SpecError, parse_spec  # spec kwargs syntax shared with models
    try:
        name, kwargs = parse_spec(spec) if spec.startswith("synthetic") else (spec, {})
    except SpecError as e:
        raise DataError(str(e.one_line()).replace("model spec", "data spec")) from e
    if name.startswith("imagefolder:"):
        if not name.split(":", 1)[1].strip():
            raise DataError("--data imagefolder: names no folder or archive", "write imagefolder:PATH")
        ds = load_imagefolder(name.split(":", 1)[1], split, cache=cache)
    elif name == "cifar10":
        from .named import load_cifar10
        ds = load_cifar10(split, root, download)
    elif name in ("fashion-mnist", "fashion_mnist", "fashionmnist"):
        from .named import load_fashion_mnist
        ds = load_fashion_mnist(split, root, download)
    elif name == "synthetic":
        if split not in ("train", "test"):
            raise DataError(f"synthetic data has the splits train and test, not {split!r}", "use --split test or train")
        ds = make_synthetic(split=split, **_synthetic_kwargs(spec, kwargs))
        ds.spec = spec
    elif Path(spec).exists():
        raise DataError(f"--data {spec!r} is a path without its kind", f"write imagefolder:{spec}")
    else:
        raise DataError(f"unknown data spec {spec!r}; use cifar10, imagefolder:PATH, fashion-mnist or synthetic")
    return ds


def _synthetic_kwargs(spec: str, kwargs: dict) -> dict:
    """Check the settings of a ``synthetic(...)`` spec: known names, values in range."""
    kinds = {"n": int, "classes": int, "size": int, "seed": int, "noise": float}
    unknown = sorted(set(kwargs) - set(kinds))
    if unknown:
        raise DataError(f"{spec}: unknown setting {', '.join(unknown)}", f"synthetic takes {', '.join(kinds)}")
    for k, v in kwargs.items():
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and \
            (kinds[k] is float or float(v).is_integer())
        lo = {"n": 1, "classes": 2, "size": 4, "seed": 0, "noise": 0}[k]
        hi = {"n": 10 ** 7, "classes": 6, "size": 4096, "seed": 2 ** 53, "noise": 100}[k]
        if not ok or not lo <= v <= hi:
            raise DataError(f"{spec}: {k} must be {'an integer' if kinds[k] is int else 'a number'} in {lo}..{hi}, "
                            f"got {v!r}")
        kwargs = dict(kwargs, **{k: kinds[k](v)})
    n, size = kwargs.get("n", 2000), kwargs.get("size", 32)
    require_memory(40.0 * n * size * size, f"{spec}: the {n:,} images of {size}×{size} pixels being drawn",  # float32
                   "lower n or size", error=DataError)
    return kwargs


# --- image folders and archives ---------------------------------------------------------------------

def _content_key(path: Path) -> str:
    if path.is_file():
        return file_digest(path)
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        st = p.stat()
        kind = "d" if p.is_dir() else "f"
        h.update(f"{kind}\0{p.relative_to(path)}\0{st.st_size if kind == 'f' else 0}\0"
                 f"{st.st_mtime_ns if kind == 'f' else 0}\n".encode())
    return h.hexdigest()


def _layout(path: Path, files, dirs, split: str) -> tuple[list[tuple[tuple, bytes]], str, list[str]]:
    """Pick the split's images and their classes. The documented rules (a single folder wrapping
    everything is skipped first):

    - ``<class>/<image>``: one data set (split ``all``), whatever ``split`` says;
    - ``<split>/<class>/<image>`` with split folders train, test, val, valid or validation: the named split;
    - anything else is an error: images outside class folders, split folders mixed with other folders,
      class folders without images. Non-image files are ignored."""
    images = [(p, (b, "/".join(p))) for p, b in files if b is not None]  # (parts, (bytes, name in the source))
    if not images:
        raise DataError(f"{path}: no image files found", "expected [split/]<class>/<image> files")
    # a single wrapping folder (an archive of "cifar10/test/cat/0.png") is skipped
    while len({p[0] for p, _ in images}) == 1 and images[0][0][0] not in SPLIT_NAMES and \
            all(len(p) >= 3 for p, _ in images):
        top = images[0][0][0]
        images = [(p[1:], b) for p, b in images]
        dirs = {d[1:] for d in dirs if len(d) > 1 and d[0] == top}
    tops = {p[0] for p in dirs if len(p) >= 1} | {p[0] for p, _ in images if len(p) >= 2}
    stray = [p for p, _ in images if len(p) == 1]
    if stray:
        raise DataError(f"{path}: {len(stray)} images lie outside class folders (e.g. {'/'.join(stray[0])})",
                        "put every image in a <class>/ folder (or <split>/<class>/)")
    split_dirs = sorted(t for t in tops if t in SPLIT_NAMES)
    if split_dirs:
        others = sorted(t for t in tops if t not in SPLIT_NAMES)
        if others:
            raise DataError(f"{path}: split folders ({', '.join(split_dirs)}) beside other folders "
                            f"({', '.join(others[:5])})", "keep either <split>/<class>/ or <class>/ folders at the top")
        if split not in split_dirs:
            raise DataError(f"{path}: no split {split!r}", f"available splits: {', '.join(split_dirs)}")
        chosen = [(p[1:], b) for p, b in images if p[0] == split]
        sub = {p[1:] for p in dirs if p[0] == split and len(p) >= 2}
        used = split
        # class indices from every split's class folders: a split that lacks a class keeps the others' indices
        every = {p[1] for p, _ in images if len(p) >= 3}
    else:
        chosen, sub, used = images, dirs, "all"
        every = set()
    loose = [p for p, _ in chosen if len(p) < 2]
    if loose:
        raise DataError(f"{path}: images directly in the split folder {split!r} (e.g. {'/'.join(loose[0])})",
                        "put them in <split>/<class>/ folders")
    present = {p[0] for p, _ in chosen}
    classes = sorted(present | every)
    empty = sorted({p[0] for p in sub if len(p) >= 1} - set(classes))
    if empty:
        raise DataError(f"{path}: class folders without images: {', '.join(empty[:5])}",
                        "remove them or add their images (an empty class would shift every class index)")
    return chosen, used, classes


_CACHE_WARNED = False


def _cache_write(cfile: Path, payload: dict) -> None:
    """Write the decoded cache atomically; an unusable cache folder warns once and carries on."""
    global _CACHE_WARNED
    try:
        with atomic_path(cfile) as tmp:
            torch.save(payload, tmp)
    except OSError as e:
        if not _CACHE_WARNED:
            _CACHE_WARNED = True
            warnings.warn(f"resprobe: cannot write the decoded-image cache in {cfile.parent} ({e.strerror or e}); "
                          "carrying on without it (set RESPROBE_CACHE to a writable folder)", stacklevel=3)


def load_imagefolder(path, split: str = "test", cache: bool = True, progress: bool = False) -> Dataset:
    path = Path(path)
    if not path.exists():
        raise DataError(f"image folder or archive not found: {path}", "check the path after imagefolder:")
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{path}: the archive is empty")
    key = _content_key(path)
    cfile = cache_dir() / "imagefolder" / f"{key[:32]}-{split}-v{CACHE_VERSION}.pt"
    source = dict(path=os.fspath(path), content_sha256=key)
    if cache:
        try:
            d = torch.load(cfile, map_location="cpu", weights_only=True)
            absent = sorted(set(d["classes"]) - set(d["classes"][i] for i in d["labels"].unique().tolist()))
            return Dataset(d["images"], d["labels"], list(d["classes"]), f"imagefolder:{path}", d["split"],
                           dict(source, cached=True, **({"classes_absent": absent} if absent else {})))
        except FileNotFoundError:
            pass
        except Exception:  # noqa: BLE001 - a broken or unreadable cache file is rebuilt
            pass
    files, dirs = read_members(path)
    chosen, used_split, classes = _layout(path, files, dirs, split)
    cidx = {c: i for i, c in enumerate(classes)}
    chosen.sort(key=lambda pb: pb[0])
    imgs, labels = [], []
    size = None
    for parts, (data, name) in chosen:
        arr = decode_image(data, name, path)
        if size is None:
            size = arr.shape
            require_memory(arr.nbytes * len(chosen) * 2,   # the list, then the stacked tensor
                           f"{path}: {len(chosen):,} images of {arr.shape[1]}×{arr.shape[0]} pixels",
                           "use a smaller split or fewer images", error=DataError)
        elif arr.shape != size:
            raise DataError(f"{path}: image {name} has shape {arr.shape}, others {size}",
                            "resprobe expects images of one size")
        imgs.append(arr)
        labels.append(cidx[parts[0]])
    images = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()
    absent = sorted(set(classes) - {parts[0] for parts, _ in chosen})
    if absent:
        source["classes_absent"] = absent
        from ..progress import note
        note(f"resprobe: note: split {used_split!r} of {path} has no images of {len(absent)} of the "
             f"{len(classes)} classes of its archive ({', '.join(absent[:5])}); class indices follow all splits")
    ds = Dataset(images, torch.tensor(labels, dtype=torch.long), classes, f"imagefolder:{path}", used_split,
                 dict(source, cached=False))
    if cache:
        _cache_write(cfile, {"images": images, "labels": ds.labels, "classes": classes, "split": used_split})
    return ds


# --- CIFAR-10 (python format) -----------------------------------------------------------------------


# --- Fashion-MNIST (IDX) ----------------------------------------------------------------------------


# --- synthetic ----------------------------------------------------------------------------------------

SYNTHETIC_KINDS = ["horizontal", "vertical", "diagonal", "checker", "ring", "antidiagonal"]


def make_synthetic(n: Optional[int] = None, classes: int = 4, size: int = 32, seed: int = 0,
                   split: str = "train", noise: float = 0.25) -> Dataset:
    """Seeded procedural images: oriented stripes, checkerboards and rings of random frequency,
    phase and colours, plus pixel noise. Train and test splits use different seeds."""
    if not 2 <= classes <= len(SYNTHETIC_KINDS):
        raise DataError(f"synthetic: classes must be 2..{len(SYNTHETIC_KINDS)}, got {classes}")
    n = n if n is not None else (2000 if split == "train" else 500)
    g = torch.Generator().manual_seed(seed * 1000 + (0 if split == "train" else 1))
    labels = torch.arange(n) % classes
    labels = labels[torch.randperm(n, generator=g)]
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    freq = 2 * math.pi * (torch.rand(n, 1, 1, generator=g) * 0.15 + 0.1)
    phase = torch.rand(n, 1, 1, generator=g) * 2 * math.pi
    cx = size / 2 + (torch.rand(n, 1, 1, generator=g) - 0.5) * size / 2
    cy = size / 2 + (torch.rand(n, 1, 1, generator=g) - 0.5) * size / 2
    coords = {
        "horizontal": yy.expand(n, size, size) * freq,
        "vertical": xx.expand(n, size, size) * freq,
        "diagonal": (xx + yy).expand(n, size, size) * freq / math.sqrt(2),
        "antidiagonal": (xx - yy).expand(n, size, size) * freq / math.sqrt(2),
        "ring": torch.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) * freq,
    }
    pats = torch.empty(n, size, size)
    for k in range(classes):
        mask = labels == k
        kind = SYNTHETIC_KINDS[k]
        if kind == "checker":
            v = torch.sin(xx * freq[mask] + phase[mask]) * torch.sin(yy * freq[mask] + phase[mask])
        else:
            v = torch.sin(coords[kind][mask] + phase[mask])
        pats[mask] = v
    pats = (pats > 0).float()
    c0 = torch.rand(n, 3, 1, 1, generator=g)
    c1 = torch.rand(n, 3, 1, 1, generator=g)
    img = c0 + (c1 - c0) * pats.unsqueeze(1) + noise * torch.randn(n, 3, size, size, generator=g)
    images = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    return Dataset(images, labels.long(), SYNTHETIC_KINDS[:classes], "synthetic", split,
                   dict(seed=seed, n=n, classes=classes, size=size, noise=noise))

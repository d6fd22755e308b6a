"""Batched execution over a data set: the one loop every probe, evaluation and the lesion sweeps use.

:class:`RunSpec` holds how to run (batch size, device, dtype, seed, bootstrap size, progress);
:func:`batches` yields this process's share of normalized batches with progress reporting (in a
``torchrun`` job, batch ``b`` goes to rank ``b % world``); :func:`check_finite` stops a run at the first
non-finite value. Memory follows the batch size, never the data-set size (only per-image scalars are
kept).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import distributed as dist
from .anatomy.hooks import preserved_state
from .errors import NonFiniteError, UsageError
from .io.data import Dataset
from .progress import progress

__all__ = ["RunSpec", "Predictions", "batches", "predict", "evaluate", "resolve_device", "check_finite",
           "per_image", "batch_generator", "PerImageStore", "DTYPES"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_device(device) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise UsageError(f"unknown device {device!r}", "use cpu, cuda, cuda:N or auto") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device} was asked for, but torch sees no CUDA device", "use --device cpu")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"device type {dev.type!r} is not supported", "use cpu or cuda")
    return dev


@dataclass(frozen=True)
class RunSpec:
    """How to run a probe: batch size, device, dtype (``bfloat16`` is opt-in, for sweeps), the seed of
    every random choice, the bootstrap size, progress display, and whether non-finite values are
    allowed (marked in the results) instead of stopping the run."""

    batch_size: int = 256
    device: str = "cpu"
    seed: int = 0
    n_boot: int = 1000
    progress: bool = True
    dtype: str = "float32"
    allow_nonfinite: bool = False

    def __post_init__(self):
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise UsageError(f"batch size must be a positive integer, got {self.batch_size!r}")
        if self.n_boot < 100:
            raise UsageError(f"the bootstrap needs at least 100 resamples, got {self.n_boot}")
        if self.dtype not in DTYPES:
            raise UsageError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")

    @property
    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def replace(self, **kw) -> "RunSpec":
        return replace(self, **kw)

    def autocast(self):
        """Mixed precision for ``bfloat16`` (the model's weights are not cast); a no-op for float32."""
        if self.dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(self.torch_device.type, dtype=DTYPES[self.dtype])

    def describe(self) -> dict:
        return dict(batch_size=self.batch_size, device=str(self.device), seed=self.seed, n_boot=self.n_boot,
                    dtype=self.dtype, allow_nonfinite=self.allow_nonfinite, world_size=dist.world())


_ON_DEVICE: dict = {}


def _resident(data: Dataset, device: torch.device) -> Dataset:
    """The data held on ``device`` (copied once per data set and device, not per batch)."""
    if device.type == "cpu":
        return data
    key = (id(data), str(device))
    if key not in _ON_DEVICE:
        _ON_DEVICE.clear()
        _ON_DEVICE[key] = data.to(device)
    return _ON_DEVICE[key]


class PerImageStore:
    """Per-image results of one pass over a data set of ``n`` images, written in place: each key's column
    (``n`` rows, the value's dtype and trailing shape) is allocated once, at its first write, and batches
    write their rows by image index. Nothing small and long-lived is allocated batch after batch — such
    allocations, interleaved with the freed activation buffers, pin the C heap and let the resident size
    grow with the number of images (issue 13: 5 GB for the identity report of 10k images before this)."""

    def __init__(self, n: int):
        self.n = n
        self.seen = np.zeros(n, dtype=bool)
        self.columns: dict = {}

    def mark(self, idx) -> np.ndarray:
        """Record the images of a batch (positions in the data set); returns them as a numpy array."""
        i = idx.numpy() if isinstance(idx, torch.Tensor) else np.asarray(idx)
        self.seen[i] = True
        return i

    def put(self, key, idx: np.ndarray, values) -> None:
        v = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
        col = self.columns.get(key)
        if col is None:
            col = self.columns[key] = np.zeros((self.n,) + v.shape[1:], dtype=v.dtype)
        col[idx] = v

    def index(self) -> np.ndarray:
        """This process's images, in data order."""
        return np.flatnonzero(self.seen)

    def arrays(self, name: Callable = str) -> dict:
        """``{name(key): this process's rows of the column}`` in data order."""
        if self.seen.all():  # every image: the columns themselves
            return {name(k): c for k, c in self.columns.items()}
        i = self.index()
        return {name(k): c[i] for k, c in self.columns.items()}

    def gather(self, name: Callable = str) -> Optional[dict]:
        """Every process's rows, on rank 0 in data order (:func:`resprobe.distributed.gather_rows`)."""
        return dist.gather_rows(self.index(), self.arrays(name))


def batch_generator(spec: RunSpec, *parts) -> torch.Generator:
    """A generator seeded by the run's seed and ``parts`` (e.g. a batch's first image index): random
    choices do not depend on how batches are spread over processes."""
    from .metrics.stats import stable_seed
    return torch.Generator().manual_seed(stable_seed(spec.seed, *parts))


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


def require_memory(nbytes: float, what: str, fix: str) -> None:
    """Refuse, before the work starts, settings whose arrays cannot fit in memory."""
    have = available_memory()
    if have is not None and nbytes > 0.9 * have:
        raise UsageError(f"{what} need about {nbytes / 2**30:,.1f} GiB of memory; {have / 2**30:,.1f} GiB are available",
                         fix)


class _Heap:
    """glibc heap settings for the batch loops (no-ops elsewhere).

    glibc maps a block above its mmap threshold fresh from the system and unmaps it when freed, and trims the
    heap's top; ``malloc_trim`` after every batch (issue 13's way to keep the resident size flat) also hands
    back the freed pages inside the heap. Either way every batch's activations are fresh pages the kernel must
    fault in and zero: ~40,000 page faults per ResNet-56 batch of 256, about a sixth of the forward's time on
    the development machine (``benchmarks/heap.py``). Inside
    :func:`batches` blocks up to 32 MiB come from the heap and stay there to be reused by the next batch;
    the freed heap is handed back (``malloc_trim``) only when the resident size has grown by a tenth (plus
    64 MiB) over the largest of its sizes after the first four batches (one batch can need more than another:
    the identity study's CKA minibatches fall unevenly into batches, and its first batch learns which sums
    the fused addition gives; a trim at such a batch faults the pages in again) — small allocations between
    batches can pin freed blocks,
    and the resident size would otherwise grow with the number of batches (issue 13) — and when the
    outermost loop ends, which also restores glibc's thresholds (128 KiB). A resident size that comes back
    to the level of the last trim (within 2% + 16 MiB) is the loop's working set, not growth: it becomes the
    new reference instead of being trimmed (and faulted in) after every batch."""

    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    WARMUP = 4  # batches whose largest resident size is the loop's reference
    MMAP = 32 << 20  # glibc's largest mmap threshold on 64-bit systems
    DEFAULT = 128 << 10

    def __init__(self):
        self.depth = 0
        self.base: Optional[int] = None
        self.last: Optional[int] = None  # resident size that triggered the last trim
        self.batches = 0  # batches of the outermost loop so far
        self.trims = 0
        self._mallopt = self._trim = None
        try:
            import ctypes
            import ctypes.util
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            trim, mallopt = libc.malloc_trim, libc.mallopt
            trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            self._trim, self._mallopt = trim, mallopt
        except (OSError, AttributeError):  # not glibc: nothing to do
            pass
        self.tuned = os.environ.get("RESPROBE_HEAP", "1") != "0" and self._mallopt is not None

    @staticmethod
    def resident() -> Optional[int]:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    def trim(self) -> None:
        if self._trim is not None:
            self._trim(0)
            self.trims += 1

    def __enter__(self):
        self.depth += 1
        if self.depth == 1:
            self.base, self.batches = None, 0
            if self.tuned:
                self._mallopt(self.M_MMAP_THRESHOLD, self.MMAP)
                self._mallopt(self.M_TRIM_THRESHOLD, 2**31 - 1)
        return self

    def after_batch(self) -> None:
        if not self.tuned:
            self.trim()
            return
        rss = self.resident()
        if rss is None:
            return
        self.batches += 1
        if self.batches <= self.WARMUP:  # the reference: the largest of the first batches
            self.base = rss if self.base is None else max(self.base, rss)
            self.last = None
        elif rss > 1.1 * self.base + (64 << 20):
            if self.last is not None and rss <= 1.02 * self.last + (16 << 20):
                # back at the level of the last trim, not above it: that is the loop's working set (the
                # first batch was lighter), not growth; trimming again would only fault it in afresh
                self.base = rss
            else:
                self.trim()
                self.last = rss

    def __exit__(self, *exc):
        self.depth -= 1
        if self.depth == 0:
            if self.tuned:
                self._mallopt(self.M_TRIM_THRESHOLD, self.DEFAULT)
                self._mallopt(self.M_MMAP_THRESHOLD, self.DEFAULT)
            self.trim()
        return False


_HEAP = _Heap()


def heap_kept() -> _Heap:
    """The batch loops' heap settings as a context manager, for other work on large temporaries (a bootstrap's
    resample matrices): freed blocks up to 32 MiB are reused instead of being faulted in afresh."""
    return _HEAP


def batches(data: Dataset, spec: RunSpec, normalize: str = "none", desc: str = "",
            unit_weight: int = 1, order: Optional[torch.Tensor] = None
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """This process's share of ``(x, y, idx)`` batches (images scaled to [0, 1] and normalized, on the
    device), with progress reported as ``desc`` (``unit_weight``: work units per batch; ``order``: a
    permutation of the images to read them in, default data order)."""
    dev = spec.torch_device
    n_batches = -(-len(data) // spec.batch_size)
    mine = set(dist.shard(n_batches))
    src = _resident(data, dev)
    with progress(len(mine) * unit_weight, desc, "batches" if unit_weight == 1 else "steps",
                  enabled=spec.progress) as bar, _HEAP:
        for x, y, idx in src.batches(spec.batch_size, normalize, dev, only=mine, order=order):
            yield x, y, idx
            del x, y, idx
            _HEAP.after_batch()
            bar.update(unit_weight)


def check_finite(t: torch.Tensor, what: str, spec: RunSpec,
                 locate: Optional[Callable[[], str]] = None) -> bool:
    """True if ``t`` is finite. Otherwise: with ``spec.allow_nonfinite`` return False (the caller marks
    its rows), else raise :class:`NonFiniteError` naming ``what`` (and, via ``locate``, the first
    unit that produced a non-finite value)."""
    if bool(torch.isfinite(t).all()):
        return True
    if spec.allow_nonfinite:
        return False
    where = f" (first produced by {locate()})" if locate is not None else ""
    raise NonFiniteError(f"non-finite values (NaN or inf) in {what}{where}",
                         "check the weights and the input normalization; --allow-nonfinite marks such rows "
                         "instead of stopping")


@dataclass
class Predictions:
    """Per-image results of one network over a data set (in data order)."""

    pred: np.ndarray
    label: np.ndarray
    loss: np.ndarray
    top5: Optional[np.ndarray] = None

    @property
    def wrong(self) -> np.ndarray:
        return self.pred != self.label

    def summary(self) -> dict:
        n = len(self.label)
        out = dict(error=float(self.wrong.mean()), loss=float(self.loss.mean()), n_images=int(n),
                   n_wrong=int(self.wrong.sum()))
        if self.top5 is not None:
            out["top5_error"] = float((n - int(self.top5.sum())) / n)
        return out


def per_image(logits: torch.Tensor, y: torch.Tensor) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """(prediction, loss, top-5 hit) per image for one batch of logits."""
    logits = logits.float()
    loss = F.cross_entropy(logits, y, reduction="none")
    pred = logits.argmax(1)
    top5 = None
    if logits.shape[1] >= 10:
        top5 = (logits.topk(5, dim=1).indices == y.unsqueeze(1)).any(1).cpu().numpy()
    return pred.cpu().numpy(), loss.cpu().numpy(), top5


def predict(model: nn.Module, data: Dataset, spec: RunSpec, normalize: str = "none", desc: str = "eval",
            module: Optional[nn.Module] = None, forward: Optional[Callable] = None) -> Optional[Predictions]:
    """Run ``model`` (or ``forward``, a callable on image batches) over ``data`` in eval mode; per-image
    results in data order (on rank 0 of a distributed run; None on the others)."""
    mod = module if module is not None else model
    fn = forward or model
    store = PerImageStore(len(data))
    with torch.no_grad(), preserved_state(mod), spec.autocast():
        mod.eval()
        for x, y, idx in batches(data, spec, normalize, desc):
            logits = fn(x)
            check_finite(logits, f"the logits of {desc}", spec)
            p, l_, t5 = per_image(logits, y)
            i = store.mark(idx)
            for k, v in (("pred", p), ("loss", l_), ("label", y), ("top5", t5)):
                if v is not None:
                    store.put(k, i, v)
    got = store.gather()
    if got is None:
        return None
    return Predictions(got["pred"], got["label"], got["loss"], got.get("top5"))


def evaluate(model: nn.Module, data: Dataset, spec: RunSpec, normalize: str = "none", desc: str = "eval") -> dict:
    """Error, loss, n_images, n_wrong (and top5_error for >= 10 classes) of ``model`` on ``data``."""
    p = predict(model, data, spec, normalize, desc)
    return p.summary() if p is not None else {}

"""Batched execution over a data set: the one loop every probe, evaluation and the lesion sweeps use.

:class:`RunSpec` holds how to run (batch size, device, dtype, seed, bootstrap size, progress);
:func:`batches` yields this process's share of normalized batches with progress reporting (in a
``torchrun`` job, batch ``b`` goes to rank ``b % world``); :func:`check_finite` stops a run at the first
non-finite value. Memory follows the batch size, never the data-set size (only per-image scalars are
kept).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import distributed as dist
from .anatomy.hooks import preserved_state
from . import checks
from .checks import require_memory  # noqa: F401 - the probes import it from here
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
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(f"--device {device} was asked for, but torch sees {torch.cuda.device_count()} CUDA "
                         "device(s)", f"use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError(f"--device {device} was asked for, but this torch has no usable MPS device",
                         "use --device cpu (or cuda where there is one)")
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
        checks.seed(self.seed)
        checks.n_boot(self.n_boot)
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
                  enabled=spec.progress) as bar:
        for x, y, idx in src.batches(spec.batch_size, normalize, dev, only=mine, order=order):
            yield x, y, idx
            del x, y, idx
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


def predict(model: nn.Module, data: Dataset, spec: RunSpec, normalize: str = "none", desc: str = "eval"
            ) -> Optional[Predictions]:
    """Run ``model`` over ``data`` in eval mode; per-image results in data order (on rank 0 of a distributed
    run; None on the others)."""
    mod = fn = model
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

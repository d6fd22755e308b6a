"""Training (He et al. recipe by default): SGD + momentum + weight decay (or AdamW), step or cosine
schedule with an optional linear warm-up, random crop + flip, a checkpoint every epoch, exact resume,
a metrics CSV. Causal language models train the same way on token windows (``TextData``): next-token
cross-entropy over every token; ``train_error``/``test_error`` are then the top-1 next-token error and
the losses are in nats per token."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from .engine import RunSpec, evaluate
from . import checks
from .errors import NonFiniteError, OutputError, UsageError
from .io.atomic import atomic_path, write_text
from .io.data import Dataset
from .progress import note, progress

__all__ = ["TrainRun", "Recipe", "train", "RUN_FILES"]

METRIC_COLUMNS = ["epoch", "lr", "train_loss", "train_error", "test_loss", "test_error", "seconds"]
RUN_FILES = ("model.pt", "last.pt", "metrics.csv", "config.json")


@dataclass(frozen=True)
class Recipe:
    """How to train. ``schedule``: ``step`` (/10 at 50% and 75% of the epochs, He et al.'s 32k/48k of 64k
    iterations), ``cosine`` or ``constant``; ``warmup_epochs``: linear warm-up of the learning rate over
    the first epochs (per step); ``optimizer``: ``sgd`` (momentum) or ``adamw``."""

    epochs: int
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 128
    schedule: str = "step"
    optimizer: str = "sgd"
    warmup_epochs: int = 0
    normalize: str = "none"
    augment: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 1:
            raise UsageError(f"--epochs must be >= 1, got {self.epochs}")
        checks.number("--lr", self.lr, 0, lo_open=True)
        checks.number("--momentum", self.momentum, 0, 1, hi_open=True)
        checks.number("--weight-decay", self.weight_decay, 0)
        checks.seed(self.seed)
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.schedule not in ("step", "cosine", "constant"):
            raise UsageError(f"--schedule must be step, cosine or constant, got {self.schedule!r}")
        if self.optimizer not in ("sgd", "adamw"):
            raise UsageError(f"--optimizer must be sgd or adamw, got {self.optimizer!r}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise UsageError(f"--warmup-epochs must lie in 0..epochs-1, got {self.warmup_epochs}")

    def lr_factor(self, epoch: int) -> float:
        """Learning-rate multiplier of ``epoch`` (0-based) from the schedule."""
        if self.schedule == "step":
            return 0.1 ** (int(epoch >= 0.5 * self.epochs) + int(epoch >= 0.75 * self.epochs))
        if self.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * epoch / self.epochs))
        return 1.0


# the keys a resumed run must share with the run it continues
RECIPE_KEYS = ("model", "lr", "momentum", "weight_decay", "batch_size", "schedule", "normalize", "augment", "seed",
               "epochs", "optimizer", "warmup_epochs")


def _atomic_save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _check_same_recipe(path: Path, cfg: dict) -> None:
    """--resume continues one run: refuse when the recipe recorded beside the checkpoint differs."""
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    defaults = {"optimizer": "sgd", "warmup_epochs": 0}  # runs recorded before these settings existed
    diff = [f"{k}: {old.get(k, defaults.get(k))!r} then, {cfg.get(k)!r} now" for k in RECIPE_KEYS
            if k in cfg and (k in old or k in defaults) and old.get(k, defaults.get(k)) != cfg[k]]
    a, b = (old.get("train_data") or {}), (cfg.get("train_data") or {})
    for sub in ("spec", "n_images", "content_sha256"):
        if a.get(sub) != b.get(sub):
            diff.append(f"train_data.{sub}: {a.get(sub)!r} then, {b.get(sub)!r} now")
    if diff:
        raise UsageError(f"--resume: {path.parent} holds a run with another recipe ({'; '.join(diff)})",
                         "resume with the same settings or train into a new --out")


def _check_out(out: Path, resume: bool, overwrite: bool) -> None:
    present = [f for f in RUN_FILES if (out / f).exists()]
    if present and not resume and not overwrite:
        raise OutputError(f"{out} already holds a training run ({', '.join(present)})",
                          "pass --resume to continue it, --overwrite to replace it, or another --out")


def _optimizer(model: nn.Module, r: Recipe) -> torch.optim.Optimizer:
    if r.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=r.lr, weight_decay=r.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay)


@dataclass(frozen=True)
class TrainRun:
    """How a training run is carried out (not what it learns, which is the :class:`Recipe`): the device,
    whether to continue the run in ``out`` (``resume``) or replace it (``overwrite``), a progress bar, and
    extra ``config`` recorded in ``config.json``."""

    device: str = "cpu"
    resume: bool = False
    overwrite: bool = False
    progress_bar: bool = True
    config: Optional[dict] = None


def train(model: nn.Module, train_data: Dataset, test_data: Optional[Dataset], recipe: Recipe, out: str | Path,
          run: TrainRun = TrainRun()) -> pd.DataFrame:
    """Train ``model`` in place; write ``last.pt`` (resumable), ``model.pt`` (weights) and ``metrics.csv``.

    The data order and augmentation of epoch e come from a generator seeded with (seed, e), so a
    resumed run continues exactly as an uninterrupted one would."""
    device, resume, overwrite, progress_bar, config = run.device, run.resume, run.overwrite, run.progress_bar, run.config
    out = Path(out)
    _check_out(out, resume, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device)
    model.to(dev)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest convolutions
    if dev.type != "cpu":  # hold the uint8 images on the accelerator: no copy per batch
        train_data = train_data.to(dev)
        test_data = test_data.to(dev) if test_data is not None else None
    opt = _optimizer(model, recipe)
    start, rows = 0, []
    ckpt = out / "last.pt"
    cfg = dict(config or {}, **asdict(recipe), train_data=train_data.describe(),
               test_data=test_data.describe() if test_data else None)
    if resume and ckpt.is_file():
        _check_same_recipe(out / "config.json", cfg)
        state = torch.load(ckpt, map_location=dev, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = int(state["epoch"]) + 1
        if (out / "metrics.csv").is_file():
            rows = pd.read_csv(out / "metrics.csv").query("epoch < @start").to_dict("records")
        note(f"resuming {out} from epoch {start + 1} of {recipe.epochs}")
    elif resume:
        raise UsageError(f"--resume: no checkpoint {ckpt} to resume from", "train without --resume first")
    write_text(out / "config.json", json.dumps(cfg, indent=2, default=str))
    eval_spec = RunSpec(batch_size=max(recipe.batch_size, 256), device=str(dev), progress=False, allow_nonfinite=True)
    for epoch in range(start, recipe.epochs):
        row = _epoch(model, opt, train_data, recipe, epoch, progress_bar)
        if test_data is not None:
            ev = _evaluate_tokens(model, test_data, recipe.batch_size, dev) if _is_text(test_data) else \
                evaluate(model, test_data, eval_spec, recipe.normalize)
            if not math.isfinite(ev["loss"]):
                raise NonFiniteError(f"training diverged in epoch {epoch + 1}: the loss is not finite on the test set "
                                     f"(lr {row['lr']})", "lower --lr (or add --warmup-epochs)")
            row.update(test_loss=ev["loss"], test_error=ev["error"])
        else:
            row.update(test_loss=float("nan"), test_error=float("nan"))
        rows.append(row)
        # last.pt is written last: it is the commit point that --resume trusts
        with atomic_path(out / "metrics.csv") as tmp:
            pd.DataFrame(rows, columns=METRIC_COLUMNS).to_csv(tmp, index=False)
        _atomic_save(model.state_dict(), out / "model.pt")
        _atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch}, ckpt)
        if progress_bar:
            note(f"epoch {epoch + 1}/{recipe.epochs}: train error {row['train_error']:.4f}, test error "
                 f"{row['test_error']:.4f}, {row['seconds']:.1f}s")
    model.eval()
    return pd.DataFrame(rows, columns=METRIC_COLUMNS)


def _is_text(data) -> bool:
    from .io.text import TextData
    return isinstance(data, TextData)


def _logits_and_loss(model, x, y):
    """Images: ``(N, classes)`` logits and the cross-entropy; token windows ``(N, T)``: the causal LM's
    ``(N, T, V)`` logits and the mean next-token cross-entropy over every token."""
    if x.dtype in (torch.int64, torch.int32):
        logits = model(input_ids=x, use_cache=False).logits
        return logits, F.cross_entropy(logits.flatten(0, 1), y.flatten())
    logits = model(x)
    return logits, F.cross_entropy(logits, y)


@torch.no_grad()
def _evaluate_tokens(model, data, batch_size: int, dev) -> dict:
    """Mean next-token loss (nats) and top-1 error over every token of the held-out windows."""
    model.eval()
    loss = torch.zeros((), dtype=torch.float64)
    wrong, n = 0, 0
    for x, y, _ in data.batches(batch_size, device=dev):
        logits, mean = _logits_and_loss(model, x, y)
        loss += mean.double().cpu() * y.numel()
        wrong += int((logits.argmax(-1) != y).sum())
        n += y.numel()
    return dict(loss=float(loss) / n, error=wrong / n)


def _epoch(model, opt, train_data: Dataset, r: Recipe, epoch: int, progress_bar: bool) -> dict:
    import time
    dev = next(model.parameters()).device
    t0 = time.time()
    cur_lr = r.lr * r.lr_factor(epoch)
    for group in opt.param_groups:
        group["lr"] = cur_lr
    g = torch.Generator().manual_seed(r.seed * 100003 + epoch)
    model.train()
    # running sums stay on the device: one synchronisation per epoch, not per step
    tot_loss = torch.zeros((), dtype=torch.float64, device=dev)
    tot_wrong = torch.zeros((), dtype=torch.long, device=dev)
    tot_n = 0
    steps = -(-len(train_data) // r.batch_size)
    warm = r.warmup_epochs * steps
    it = train_data.batches(r.batch_size, r.normalize, dev, augment=r.augment, order=g)
    with progress(steps, f"epoch {epoch + 1}/{r.epochs}", "steps", enabled=progress_bar) as bar:
        for step, (x, y, _) in enumerate(it):
            k = epoch * steps + step
            if k < warm:
                for group in opt.param_groups:
                    group["lr"] = cur_lr * (k + 1) / warm
            logits, loss = _logits_and_loss(model, x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n = y.numel()
            tot_loss += loss.detach() * n
            tot_wrong += (logits.detach().argmax(-1) != y).sum()
            tot_n += n
            bar.update(1)
    if not torch.isfinite(tot_loss):
        raise NonFiniteError(f"training diverged in epoch {epoch + 1}: the loss is not finite (lr {cur_lr})",
                             "lower --lr (or add --warmup-epochs)")
    return dict(epoch=epoch, lr=cur_lr, train_loss=tot_loss.item() / tot_n, train_error=tot_wrong.item() / tot_n,
                seconds=time.time() - t0)

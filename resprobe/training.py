"""Training (He et al. recipe by default): SGD + momentum + weight decay, step or cosine schedule,
random crop + flip, a checkpoint every epoch, exact resume, a metrics CSV."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional

import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .engine import evaluate
from .io.data import Dataset

__all__ = ["train"]

METRIC_COLUMNS = ["epoch", "lr", "train_loss", "train_error", "test_loss", "test_error", "seconds"]


def _lr_factor(schedule: str, epoch: int, epochs: int) -> float:
    """Learning-rate multiplier for ``epoch`` (0-based). step: /10 at 50% and 75% (He et al. 32k/48k of 64k)."""
    if schedule == "step":
        return 0.1 ** (int(epoch >= 0.5 * epochs) + int(epoch >= 0.75 * epochs))
    if schedule == "cosine":
        import math
        return 0.5 * (1 + math.cos(math.pi * epoch / epochs))
    if schedule == "constant":
        return 1.0
    raise ValueError(f"schedule must be step, cosine or constant, got {schedule!r}")


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


RECIPE_KEYS = ("model", "lr", "momentum", "weight_decay", "batch_size", "schedule", "normalize", "augment", "seed",
               "epochs")


def _check_same_recipe(path: Path, cfg: dict) -> None:
    """--resume continues one run: refuse when the recipe recorded beside the checkpoint differs."""
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    diff = [f"{k}: {old.get(k)!r} then, {cfg.get(k)!r} now" for k in RECIPE_KEYS
            if k in old and k in cfg and old[k] != cfg[k]]
    for k in ("train_data",):
        a, b = (old.get(k) or {}), (cfg.get(k) or {})
        for sub in ("spec", "n_images", "content_sha256"):
            if a.get(sub) != b.get(sub):
                diff.append(f"{k}.{sub}: {a.get(sub)!r} then, {b.get(sub)!r} now")
    if diff:
        raise ValueError(f"--resume: {path.parent} holds a run with another recipe ({'; '.join(diff)}); "
                         "resume with the same settings or train into a new --out")


def train(model: nn.Module, train_data: Dataset, test_data: Optional[Dataset], epochs: int, out: str | Path,
          lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 1e-4, batch_size: int = 128,
          schedule: str = "step", normalize: str = "none", augment: bool = True, device="cpu", seed: int = 0,
          resume: bool = False, progress: bool = True, config: Optional[dict] = None) -> pd.DataFrame:
    """Train ``model`` in place; write ``last.pt`` (resumable), ``model.pt`` (weights) and ``metrics.csv``.

    The data order and augmentation of epoch e come from a generator seeded with (seed, e), so a
    resumed run continues exactly as an uninterrupted one would.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.to(device)
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest convolutions
    if torch.device(device).type != "cpu":  # hold the uint8 images on the accelerator: no copy per batch
        train_data = train_data.to(device)
        test_data = test_data.to(device) if test_data is not None else None
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    start, rows = 0, []
    ckpt = out / "last.pt"
    cfg = dict(config or {}, lr=lr, momentum=momentum, weight_decay=weight_decay, batch_size=batch_size,
               schedule=schedule, normalize=normalize, augment=augment, seed=seed, epochs=epochs,
               train_data=train_data.describe(), test_data=test_data.describe() if test_data else None)
    if resume and ckpt.is_file():
        _check_same_recipe(out / "config.json", cfg)
        state = torch.load(ckpt, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = int(state["epoch"]) + 1
        if (out / "metrics.csv").is_file():
            rows = pd.read_csv(out / "metrics.csv").query("epoch < @start").to_dict("records")
    elif resume:
        raise FileNotFoundError(f"--resume: no checkpoint {ckpt} to resume from")
    (out / "config.json").write_text(json.dumps(cfg, indent=2, default=str))
    for epoch in range(start, epochs):
        t0 = time.time()
        cur_lr = lr * _lr_factor(schedule, epoch, epochs)
        for group in opt.param_groups:
            group["lr"] = cur_lr
        g = torch.Generator().manual_seed(seed * 100003 + epoch)
        model.train()
        # running sums stay on the device: one synchronisation per 50 steps, not per step
        tot_loss = torch.zeros((), dtype=torch.float64, device=device)
        tot_wrong = torch.zeros((), dtype=torch.long, device=device)
        tot_n = 0
        it = train_data.batches(batch_size, normalize, device, augment=augment, shuffle=True, generator=g)
        bar = tqdm(it, total=-(-len(train_data) // batch_size), desc=f"epoch {epoch + 1}/{epochs}",
                   disable=not progress, leave=False)
        for step, (x, y, _) in enumerate(bar):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n = len(y)
            tot_loss += loss.detach() * n
            tot_wrong += (logits.detach().argmax(1) != y).sum()
            tot_n += n
            if progress and step % 50 == 0:
                bar.set_postfix(loss=f"{tot_loss.item() / tot_n:.3f}", err=f"{tot_wrong.item() / tot_n:.3f}")
        if not torch.isfinite(tot_loss):
            raise FloatingPointError(f"training diverged in epoch {epoch + 1}: the loss is not finite "
                                     f"(lr {cur_lr}); lower --lr")
        row = dict(epoch=epoch, lr=cur_lr, train_loss=tot_loss.item() / tot_n, train_error=tot_wrong.item() / tot_n)
        if test_data is not None:
            ev = evaluate(model, test_data, max(batch_size, 256), normalize, device, progress=False)
            row.update(test_loss=ev["loss"], test_error=ev["error"])
        else:
            row.update(test_loss=float("nan"), test_error=float("nan"))
        row["seconds"] = time.time() - t0
        rows.append(row)
        # last.pt is written last: it is the commit point that --resume trusts
        pd.DataFrame(rows, columns=METRIC_COLUMNS).to_csv(out / "metrics.csv", index=False)
        _atomic_save(model.state_dict(), out / "model.pt")
        _atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch}, ckpt)
        if progress:
            tqdm.write(f"epoch {epoch + 1}/{epochs}: train error {row['train_error']:.4f}, "
                       f"test error {row['test_error']:.4f}, {row['seconds']:.1f}s")
    model.eval()
    return pd.DataFrame(rows, columns=METRIC_COLUMNS)

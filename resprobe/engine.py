"""Batched execution over a data set.

Everything here streams batches: memory follows the batch size, never the data-set size (only
per-image scalars — losses, correctness — are kept).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .anatomy.hooks import preserved_state
from .io.data import Dataset

__all__ = ["Predictions", "predict", "evaluate", "resolve_device"]


def resolve_device(device: Optional[str]) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device")
    return dev


@dataclass
class Predictions:
    """Per-image results of one network over a data set."""

    pred: np.ndarray        # predicted class
    label: np.ndarray
    loss: np.ndarray        # cross-entropy per image
    top5: Optional[np.ndarray] = None  # True when the label is among the 5 highest logits

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


def predict(model: nn.Module | Callable, data: Dataset, batch_size: int = 256, normalize: str = "none",
            device="cpu", progress: bool = True, desc: str = "eval",
            module: Optional[nn.Module] = None) -> Predictions:
    """Run ``model`` (an ``nn.Module`` or a callable on image batches) over ``data`` in eval mode.

    ``module`` is the ``nn.Module`` whose train/eval mode is set (defaults to ``model``).
    """
    mod = module if module is not None else (model if isinstance(model, nn.Module) else None)
    preds, losses, labels, top5s = [], [], [], []
    with torch.no_grad(), (preserved_state(mod) if mod is not None else nullcontext()):
        if mod is not None:
            mod.eval()
        for x, y, _ in tqdm(data.batches(batch_size, normalize, device), total=-(-len(data) // batch_size),
                            desc=desc, disable=not progress, leave=False):
            p, l_, t5 = per_image(model(x), y)
            preds.append(p)
            losses.append(l_)
            labels.append(y.cpu().numpy())
            if t5 is not None:
                top5s.append(t5)
    return Predictions(np.concatenate(preds), np.concatenate(labels), np.concatenate(losses),
                       np.concatenate(top5s) if top5s else None)


def evaluate(model, data: Dataset, batch_size: int = 256, normalize: str = "none", device="cpu",
             progress: bool = True) -> dict:
    """Error, loss, n_images, n_wrong (and top5_error for >= 10 classes) of ``model`` on ``data``."""
    return predict(model, data, batch_size, normalize, device, progress).summary()

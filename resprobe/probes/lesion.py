"""Lesion experiments (Veit, Wilber & Belongie 2016): delete, sample and reorder residual blocks.

A lesion drops a block's residual branch and keeps its shortcut (identity, projection or zero-pad)
and its post-activation, as the authors' code did; in a plain twin a shape-preserving block is
replaced by the identity (shape-changing ones cannot be deleted and are reported as such).

Method, per batch: compute the stem output and every block's input once; evaluate each configuration
from its first modified block, with configurations sorted by their per-block edits so that any prefix
shared with the previous configuration is reused (lexicographic order makes that the longest shared
prefix available). Only per-configuration counts are kept, so memory follows the batch size and the
depth, not the data-set size or the number of configurations. Finished configurations are written
to ``lesion.csv`` chunk by chunk; rerunning the same command resumes.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..anatomy import AnatomyError, Edits, ResidualView, anatomy, preserved_state
from ..anatomy.adapters import parts_for
from ..io.data import Dataset
from ..metrics.stats import bootstrap_proportion_ci, stable_seed

__all__ = ["LesionConfig", "MODES", "make_configs", "lesion_counts", "naive_predictions", "engine_predictions",
           "run_lesion", "lesion_summary", "COLUMNS", "parse_range"]

MODES = ("single", "set", "random-k", "reorder")
COLUMNS = ["model", "mode", "deleted", "k", "kendall_tau", "error", "loss", "n_images", "n_wrong", "ci_low",
           "ci_high", "seed", "top5_error", "order", "note"]


@dataclass(frozen=True)
class LesionConfig:
    """One modified network: blocks deleted and/or residual branches permuted (``order[i]``: the block
    whose branch block ``i`` runs)."""

    mode: str
    deleted: tuple = ()
    order: Optional[tuple] = None
    k: Optional[int] = None
    kendall_tau: Optional[float] = None
    note: str = ""

    @property
    def runnable(self) -> bool:
        return not self.note

    def edits(self) -> Edits:
        moved = {i: j for i, j in enumerate(self.order or ()) if i != j}
        return Edits(delete=frozenset(self.deleted), branch_from=moved)

    def signature(self, n: int) -> tuple:
        """Per-block edit codes; configurations sorted by it share the longest prefixes."""
        d = set(self.deleted)
        o = self.order or tuple(range(n))
        return tuple((1, 0) if i in d else ((2, o[i]) if o[i] != i else (0, 0)) for i in range(n))

    def key(self, names: Sequence[str]) -> str:
        order = "" if self.order is None else " ".join(map(str, self.order))
        return f"{self.mode}|{'+'.join(names[i] for i in self.deleted)}|{order}"


def parse_range(text: str, n_max: int) -> list[int]:
    """``"3"`` -> [3]; ``"1:10"`` -> 1..10 inclusive; ``"1:10:2"`` -> 1, 3, ..., 9; ``"1,5,9"``."""
    text = str(text).strip()
    try:
        if "," in text:
            vals = [int(t) for t in text.split(",") if t.strip()]
        elif ":" in text:
            parts = [int(t) if t.strip() else None for t in text.split(":")]
            lo = parts[0] if parts[0] is not None else 1
            hi = parts[1] if len(parts) > 1 and parts[1] is not None else n_max
            step = parts[2] if len(parts) > 2 and parts[2] else 1
            vals = list(range(lo, hi + 1, step))
        else:
            vals = [int(text)]
    except ValueError as e:
        raise ValueError(f"cannot read range {text!r}: use K, LO:HI (inclusive), LO:HI:STEP or a,b,c") from e
    bad = [v for v in vals if not 0 <= v <= n_max]
    if bad or not vals:
        raise ValueError(f"range {text!r} must lie in 0..{n_max}; got {bad or 'nothing'}")
    return vals


def _kendall_tau(order: Sequence[int]) -> float:
    from scipy.stats import kendalltau
    n = len(order)
    return float(kendalltau(np.arange(n), np.asarray(order)).statistic)


def _swap_groups(view: ResidualView) -> list[list[int]]:
    """Blocks whose residual branches can be exchanged: same input and output shape (no downsampling)."""
    groups: dict = {}
    for b in view:
        if b.in_shape is None:
            raise AnatomyError("block shapes unknown: call view.infer_shapes(input_shape) first")
        if tuple(b.in_shape) == tuple(b.out_shape):
            groups.setdefault((b.residual, tuple(b.in_shape), tuple(b.out_shape)), []).append(b.index)
    return [g for g in groups.values() if len(g) >= 2]


def make_configs(view: ResidualView, mode: str, blocks: Optional[Iterable] = None, k: Optional[str] = None,
                 samples: int = 20, seed: int = 0, exclude_downsampling: bool = False) -> list[LesionConfig]:
    """The configurations of a lesion mode (always starting with the unmodified baseline)."""
    if mode not in MODES:
        raise ValueError(f"unknown lesion mode {mode!r}; choose one of {', '.join(MODES)}")
    n = len(view)
    base = LesionConfig(mode="baseline")
    rng = np.random.default_rng(seed)
    if mode == "single":
        out = [base]
        for b in view:
            note = "" if view.deletable(b.index) else "not deletable: plain block changes shape"
            out.append(LesionConfig("single", (b.index,), k=1, note=note))
        return out
    if mode == "set":
        if not blocks:
            raise ValueError("--mode set needs --blocks NAME,NAME,...")
        idx = tuple(sorted(set(view.indices(blocks))))
        bad = [view[i].name for i in idx if not view.deletable(i)]
        if bad:
            raise AnatomyError(f"plain blocks {', '.join(bad)} change shape and cannot be deleted")
        return [base, LesionConfig("set", idx, k=len(idx))]
    if samples < 1:
        raise ValueError(f"--samples must be >= 1, got {samples}")
    if mode == "random-k":
        pool = [b.index for b in view if view.deletable(b.index) and not (exclude_downsampling and b.downsample)]
        ks = parse_range(k or f"1:{len(pool)}", len(pool))
        out = [base]
        for kk in ks:
            if kk == 0:
                continue
            n_comb = math.comb(len(pool), kk)
            if n_comb <= samples:
                from itertools import combinations
                subsets = [tuple(c) for c in combinations(pool, kk)]
            else:
                seen: set = set()
                subsets = []
                while len(subsets) < samples:
                    s = tuple(sorted(rng.choice(pool, size=kk, replace=False).tolist()))
                    if s not in seen:
                        seen.add(s)
                        subsets.append(s)
            out += [LesionConfig("random-k", s, k=kk) for s in subsets]
        return out
    # reorder: k = number of random swaps of residual branches among shape-compatible blocks
    groups = _swap_groups(view)
    if not groups:
        raise AnatomyError("no two blocks have the same shapes: nothing can be reordered")
    pairs = [(a, b) for g in groups for ai, a in enumerate(g) for b in g[ai + 1:]]
    ks = parse_range(k or f"1:{n}", 10 * n)
    out = [base]
    for kk in ks:
        seen = set()
        for _ in range(samples):
            order = list(range(n))
            for _ in range(kk):
                a, b = pairs[rng.integers(len(pairs))]
                order[a], order[b] = order[b], order[a]
            t = tuple(order)
            if t == tuple(range(n)) or t in seen:
                continue
            seen.add(t)
            out.append(LesionConfig("reorder", order=t, k=kk, kendall_tau=_kendall_tau(t)))
    return out


def _common_prefix(a: tuple, b: tuple) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@torch.no_grad()
def _engine_logits(view: ResidualView, x: torch.Tensor, configs: Sequence[LesionConfig], order: Sequence[int]):
    """Yield (config index, logits) for one batch, reusing shared prefixes across sorted configurations."""
    n = len(view)
    hs = view.block_inputs(x)  # clean inputs of blocks 0..n-1 and of the head
    prev_sig = tuple((0, 0) for _ in range(n))
    prev_logits = None
    for ci in order:
        c = configs[ci]
        sig = c.signature(n)
        L = _common_prefix(prev_sig, sig)
        if L == n and prev_logits is not None:
            yield ci, prev_logits
            continue
        edits = c.edits()
        hs = hs[:L + 1]
        for i in range(L, n):
            hs.append(view.run_block(i, hs[i], edits))
        prev_logits = view.head(hs[n])
        prev_sig = sig
        yield ci, prev_logits


class _Counts:
    __slots__ = ("wrong", "loss", "n", "top5_wrong")

    def __init__(self):
        self.wrong, self.loss, self.n, self.top5_wrong = 0, 0.0, 0, 0

    def add(self, logits: torch.Tensor, y: torch.Tensor):
        logits = logits.float()
        self.wrong += int((logits.argmax(1) != y).sum())
        self.loss += float(F.cross_entropy(logits, y, reduction="sum"))
        self.n += len(y)
        if logits.shape[1] >= 10:
            self.top5_wrong += int((~(logits.topk(5, 1).indices == y[:, None]).any(1)).sum())


def _engine_batches(view: ResidualView, data: Dataset, configs: Sequence[LesionConfig], batch_size: int,
                    normalize: str, device):
    """Eval mode over the data: per batch, the labels and the (config index, logits) of every runnable
    configuration, in the prefix-sharing order."""
    n = len(view)
    order = sorted((i for i, c in enumerate(configs) if c.runnable), key=lambda i: configs[i].signature(n))
    with preserved_state(view.model):
        view.model.eval()
        for x, y, _ in data.batches(batch_size, normalize, device):
            yield y, _engine_logits(view, x, configs, order)


def lesion_counts(view: ResidualView, data: Dataset, configs: Sequence[LesionConfig], batch_size: int = 256,
                  normalize: str = "none", device="cpu", progress: bool = True, bar=None) -> list[_Counts]:
    """Per configuration: wrong predictions, summed loss, image count (the engine)."""
    counts = [_Counts() for _ in configs]
    for y, outs in _engine_batches(view, data, configs, batch_size, normalize, device):
        for ci, logits in outs:
            counts[ci].add(logits, y)
        if bar is not None:
            bar.update(1)
    return counts


def engine_predictions(view: ResidualView, data: Dataset, configs: Sequence[LesionConfig], batch_size: int = 256,
                       normalize: str = "none", device="cpu") -> list[np.ndarray]:
    """Per-image predictions of every runnable configuration by the engine (for checks against the
    naive way); non-runnable configurations get an empty array."""
    preds: list[list] = [[] for _ in configs]
    for _, outs in _engine_batches(view, data, configs, batch_size, normalize, device):
        for ci, logits in outs:
            preds[ci].append(logits.argmax(1).cpu().numpy())
    return [np.concatenate(p) if p else np.empty(0, dtype=np.int64) for p in preds]


class _PatchedBlock(nn.Module):
    """Naive surgery: a block module replaced in a copy of the model."""

    def __init__(self, own: nn.Module, deleted: bool, branch_src: Optional[nn.Module]):
        super().__init__()
        self.own, self.src, self.deleted = own, branch_src, deleted

    def forward(self, x):
        p = parts_for(self.own)
        if p.shortcut is None:  # plain block
            return x if self.deleted else self.src(x)
        f = 0 if self.deleted else parts_for(self.src).branch(x)
        return p.post(p.shortcut(x) + f)


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


@torch.no_grad()
def naive_predictions(model: nn.Module, names: Sequence[str], data: Dataset, config: LesionConfig,
                      batch_size: int = 256, normalize: str = "none", device="cpu") -> np.ndarray:
    """The naive way: patch a copy of the model, run its whole forward over the data."""
    m = copy.deepcopy(model).eval()
    mods = dict(m.named_modules())
    originals = {n: mods[n] for n in names}
    order = config.order or tuple(range(len(names)))
    for i, n in enumerate(names):
        deleted = i in config.deleted
        if deleted or order[i] != i:
            _set_submodule(m, n, _PatchedBlock(originals[n], deleted, originals[names[order[i]]]))
    out = [m(x).argmax(1).cpu().numpy() for x, _, _ in data.batches(batch_size, normalize, device)]
    return np.concatenate(out)


# --- the sweep: chunks, rows, resume -------------------------------------------------------------------

def _run_key(meta: dict) -> str:
    return hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _row(model_label, c: LesionConfig, cnt: Optional[_Counts], names, seed, n_classes, n_boot) -> dict:
    row = dict(model=model_label, mode=c.mode, deleted="+".join(names[i] for i in c.deleted),
               k=c.k if c.k is not None else (0 if c.mode == "baseline" else None),
               kendall_tau=c.kendall_tau, seed=seed,
               order="" if c.order is None else " ".join(map(str, c.order)), note=c.note)
    if cnt is None or cnt.n == 0:
        row.update(error=None, loss=None, n_images=0 if cnt is None else cnt.n, n_wrong=None, ci_low=None,
                   ci_high=None, top5_error=None)
        return row
    lo, hi = bootstrap_proportion_ci(cnt.wrong, cnt.n, n_boot=n_boot, seed=stable_seed(seed, c.key(names)))
    row.update(error=cnt.wrong / cnt.n, loss=cnt.loss / cnt.n, n_images=cnt.n, n_wrong=cnt.wrong, ci_low=lo,
               ci_high=hi, top5_error=(cnt.top5_wrong / cnt.n) if n_classes >= 10 else None)
    return row


def run_lesion(model: nn.Module, data: Dataset, mode: str = "single", model_label: str = "model",
               blocks: Optional[Iterable] = None, k: Optional[str] = None, samples: int = 20, seed: int = 0,
               exclude_downsampling: bool = False, batch_size: int = 256, normalize: str = "none", device="cpu",
               out: Optional[str | Path] = None, chunk: int = 64, n_boot: int = 2000, progress: bool = True,
               run_meta: Optional[dict] = None) -> pd.DataFrame:
    """Run a lesion sweep; returns the long DataFrame (the rows of ``lesion.csv``).

    With ``out``, finished configurations are appended to ``out/lesion.csv`` after each chunk, and a
    rerun with the same arguments skips them (``out/lesion.progress.json`` guards against mixing runs).
    """
    view = anatomy(model, data.input_shape)
    names = view.names
    model.to(device)
    configs = make_configs(view, mode, blocks, k, samples, seed, exclude_downsampling)
    model_meta = dict(run_meta or {}, model_label=model_label, normalize=normalize, data=data.describe(),
                      n_boot=n_boot)
    mode_meta = dict(mode=mode, blocks=list(blocks or []), k=k, samples=samples, seed=seed,
                     exclude_downsampling=exclude_downsampling)
    done: dict[tuple, dict] = {}
    csv = None
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        csv = out / "lesion.csv"
        prog = out / "lesion.progress.json"
        runs = json.loads(prog.read_text()) if prog.is_file() else {}
        keys = {model_label: _run_key(model_meta), f"{model_label}|{mode}": _run_key(mode_meta)}
        if csv.is_file():
            clash = [kk for kk, v in keys.items() if kk in runs and runs[kk] != v]
            if clash:
                raise ValueError(f"{csv} holds rows for {model_label!r} from a run with other settings "
                                 f"({', '.join(clash)}); use another --out, or delete it to start over")
            for r in _read_csv(csv).to_dict("records"):
                done[(r["model"], _row_key(r))] = r
        runs.update(keys)
        prog.write_text(json.dumps(runs, indent=2))
    todo = [c for c in configs if (model_label, c.key(names)) not in done]
    rows_new: list[dict] = []
    sig_n = len(view)
    todo.sort(key=lambda c: (not c.runnable, c.signature(sig_n)))
    n_batches = -(-len(data) // batch_size)
    chunks = [todo[i:i + chunk] for i in range(0, len(todo), chunk)]
    bar = tqdm(total=len(chunks) * n_batches, desc=f"lesion {mode} {model_label}", unit="batch",
               disable=not progress or not chunks)
    try:
        for ch in chunks:
            counts = lesion_counts(view, data, ch, batch_size, normalize, device, progress=False, bar=bar)
            for c, cnt in zip(ch, counts):
                rows_new.append(_row(model_label, c, cnt if c.runnable else None, names, seed, data.num_classes,
                                     n_boot))
            if csv is not None:
                _append(csv, rows_new[-len(ch):])
    finally:
        bar.close()
    wanted = {(model_label, c.key(names)) for c in configs}
    rows_old = [r for mk, r in done.items() if mk in wanted]
    df = _typed(pd.DataFrame(rows_old + rows_new, columns=COLUMNS))
    return _order_rows(df)


def _row_key(r: dict) -> str:
    """The key of a CSV row; equals ``LesionConfig.key`` of the configuration that made it."""
    def text(v):
        return v if isinstance(v, str) else ""
    return f"{r['mode']}|{text(r['deleted'])}|{text(r['order'])}"


_TEXT = ["model", "mode", "deleted", "order", "note"]
_FLOAT = ["kendall_tau", "error", "loss", "ci_low", "ci_high", "top5_error"]
_INT = ["k", "n_images", "n_wrong", "seed"]


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    """One dtype per column, whether rows come from this run or from the CSV of an earlier one."""
    df = df.copy()
    for c in _TEXT:
        df[c] = df[c].fillna("").astype(str)
    for c in _FLOAT:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    for c in _INT:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
    return df


def _read_csv(csv: Path) -> pd.DataFrame:
    return _typed(pd.read_csv(csv, keep_default_na=False, na_values=[""], dtype={c: str for c in _TEXT}))


def _append(csv: Path, rows: list[dict]) -> None:
    df = pd.DataFrame(rows, columns=COLUMNS)
    if csv.is_file():
        df = pd.concat([_read_csv(csv), df], ignore_index=True)
    from ..report.tables import write_table
    write_table(df, csv)


def _order_rows(df: pd.DataFrame) -> pd.DataFrame:
    mode_rank = {"baseline": 0, "single": 1, "set": 2, "random-k": 3, "reorder": 4}
    df = df.assign(_m=df["mode"].map(mode_rank))
    df = df.sort_values(["model", "_m", "k", "deleted", "order"], kind="stable", na_position="first")
    return df.drop(columns="_m").reset_index(drop=True)


def lesion_summary(df: pd.DataFrame, view: Optional[ResidualView] = None) -> dict:
    """Per model: baseline error, worst single deletion, median single deletion, downsampling blocks."""
    out = {}
    for model, g in df.groupby("model", sort=False):
        s: dict = {}
        base = g[g["mode"] == "baseline"]
        if len(base):
            s["baseline_error"] = float(base["error"].iloc[0])
        single = g[(g["mode"] == "single") & g["error"].notna()]
        if len(single):
            worst = single.loc[single["error"].idxmax()]
            s["worst_block"] = dict(block=worst["deleted"], error=float(worst["error"]))
            s["median_single_deletion_error"] = float(single["error"].median())
            if view is not None:
                ds = {b.name for b in view if b.downsample}
                s["downsampling_blocks"] = {r["deleted"]: float(r["error"]) for _, r in single.iterrows()
                                            if r["deleted"] in ds}
        rk = g[g["mode"] == "random-k"]
        if len(rk):
            s["random_k_median_error"] = {int(kk): float(v) for kk, v in rk.groupby("k")["error"].median().items()}
        ro = g[g["mode"] == "reorder"]
        if len(ro):
            s["reorder_median_error_by_swaps"] = {int(kk): float(v) for kk, v in ro.groupby("k")["error"].median().items()}
        out[str(model)] = s
    return out

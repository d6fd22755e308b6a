"""Language models on text: the tokenizer of a loaded model, its token data, and its next-token loss with
confidence intervals over documents (``resprobe eval --data text:...``)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
import torch
import torch.nn as nn

from . import distributed as dist
from .engine import RunSpec, check_finite
from .errors import UsageError
from .io.text import TextData, load_text
from .models.lm import is_placed
from .metrics.lm import document_ratio_ci, per_document, window_sums, windows_per_batch
from .progress import progress

DEFAULT_SEQ_LEN = 128

__all__ = ["TextRequest", "DEFAULT_SEQ_LEN", "tokenizer_for", "text_for", "evaluate_text", "eval_text_command", "load_text_subjects", "subset_windows", "train_text_command"]


def tokenizer_for(prov: dict):
    """The tokenizer saved beside a model's weights (``hf:`` folders, ``smollm2-135m``), else None (bytes)."""
    w = prov.get("weights")
    folder = Path(w).parent if w else None
    if folder is None or not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return None
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(folder))


def text_for(model: nn.Module, prov: dict, spec: str, seq_len: int) -> TextData:
    """The windows of ``spec`` in the model's tokens (its tokenizer, else UTF-8 bytes), checked against its
    embedding and its positions."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if limit and seq_len > limit:
        raise UsageError(f"--seq-len {seq_len} exceeds the model's {limit} positions", f"use --seq-len <= {limit}")
    tok = tokenizer_for(prov)
    vocab = model.get_input_embeddings().num_embeddings
    if tok is None:
        return load_text(spec, seq_len, None, "bytes", vocab)
    name = f"{type(tok).__name__} of {Path(str(getattr(tok, 'name_or_path', ''))).name or 'the model'}"
    return load_text(spec, seq_len, lambda t: tok(t, add_special_tokens=False)["input_ids"], name, vocab)


@torch.no_grad()
def evaluate_text(model: nn.Module, data: TextData, spec: RunSpec) -> dict:
    """Mean next-token loss (nats) and perplexity with 95% CIs that resample documents."""
    model.eval()
    spec = spec.replace(batch_size=min(spec.batch_size, windows_per_batch(data.seq_len, model.config.vocab_size)))
    rows = []
    with progress(len(data), "eval text", "windows", enabled=spec.progress) as bar:
        for s in range(0, len(data), spec.batch_size):
            x, y = data.inputs_and_targets(slice(s, s + spec.batch_size))
            logits = model(input_ids=x.to(spec.torch_device), use_cache=False).logits
            check_finite(logits, f"the logits of windows {s}..{s + len(x) - 1}", spec)
            rows.append(window_sums(logits, y.to(spec.torch_device)))
            bar.update(len(x))
    sums = torch.cat(rows).numpy()
    by_doc, _ = per_document(sums, data.docs.numpy())
    loss, lo, hi = document_ratio_ci(by_doc[:, 0], by_doc[:, 1], spec.n_boot, seed=spec.seed)
    return dict(loss=loss, loss_ci=[lo, hi], perplexity=float(np.exp(loss)), perplexity_ci=[float(np.exp(lo)),
                float(np.exp(hi))], **data.describe(), ci="95% percentile bootstrap over documents")


def subset_windows(data: TextData, limit, seed: int) -> TextData:
    """A seeded random subset of ``limit`` windows (in window order); all of them when ``limit`` is None."""
    if not limit or limit >= len(data):
        return data
    keep = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
    return TextData(data.ids[keep], data.docs[keep], data.names, data.spec, data.tokenizer,
                    dict(data.source, limit=limit, subset_seed=seed))


def _check_weights(spec: str, weights, access) -> None:
    """``weights``: the list of state dicts given for ``spec`` (None entries: none)."""
    from .models.lm import carries_weights
    if weights and any(w for w in weights) and not spec.startswith("hf-config:"):
        raise UsageError(f"--weights does not apply to {spec}: its weights are named by the spec",
                         "load a state dict into an hf-config:FAMILY(...) model, or name the weights (hf:FOLDER)")
    if weights and all(w for w in weights):
        return
    if not carries_weights(spec) and not access.random_init:
        raise UsageError(f"{spec} has no weights: resprobe would probe a randomly initialised model",
                         "pass --random-init to probe one on purpose, or name weights (hf:FOLDER, smollm2-135m)")


class TextRequest(NamedTuple):
    """Which windows: the ``text:`` spec, tokens per window, and a seeded subset of ``limit`` windows."""

    spec: str
    seq_len: int = DEFAULT_SEQ_LEN
    limit: Optional[int] = None


def _short(spec: str) -> str:
    """A display label: ``hf-config:llama(...)`` -> ``llama``; ``hf:PATH`` -> the folder's or file's name."""
    if spec.startswith("hf-config:"):
        return spec.split(":", 1)[1].split("(", 1)[0].strip()
    if spec.startswith("hf:"):
        return Path(spec[3:].rstrip("/")).name or spec
    return spec


def _named(spec: str, w: Optional[str]) -> Optional[str]:
    """The file of a named checkpoint (``zoo:lm_twin_res``), which must have been trained as ``spec``."""
    from .io import published
    if not published.is_name(w):
        return w
    path, entry = published.resolve(w)
    if entry.model != spec:
        raise UsageError(f"{w} is a {entry.model} checkpoint, but --model says {spec}", f"pass --model \"{entry.model}\"")
    return str(path)


def _seed_group(ws) -> Optional[str]:
    """The common name of seed folders ``NAME``, ``NAME_seed1``, ... (None when they differ)."""
    import re
    names = {re.sub(r"_seed\d+$", "", Path(w).parent.name) for w in ws if w}
    return names.pop() if len(names) == 1 and "" not in names else None


def load_text_subjects(specs, labels, weights, access, text: TextRequest):
    """``(TextData, [Subject])`` for language models on ``text:`` data: each model loaded (a random one from
    ``access.seed``), the windows of ``text`` cut with the first model's tokenizer (every model must give the
    same token ids: one tokenizer for all, checked), a seeded subset of ``text.limit`` windows.

    ``weights[i]`` (``hf-config:`` models only) is None, one state dict, or a list of them — the training
    seeds of one network, labelled ``GROUP/sSEED`` with the seed and recipe ``resprobe train`` recorded
    beside each, exactly as for images."""
    data_spec, seq_len, limit = text
    from .loading import label_for, load_model, recipe_key, recorded
    from .io.checkpoint import check_file
    from .metrics.stats import stable_seed
    from .study import Subject
    labels = list(labels or [None] * len(specs))
    if len(labels) != len(specs):
        raise UsageError(f"give one --label per --model ({len(specs)} models, {len(labels)} labels)")
    weights = list(weights or [None] * len(specs))
    if len(weights) != len(specs):
        raise UsageError(f"give one --weights per --model ({len(specs)} models, {len(weights)} weights)")
    weights = [[None] if w is None else [w] if isinstance(w, str) else [x or None for x in w] or [None]
               for w in weights]
    weights = [[_named(spec, x) for x in ws] for spec, ws in zip(specs, weights)]
    for spec, ws in zip(specs, weights):
        _check_weights(spec, ws, access)
        for x in ws:
            if x is not None:
                check_file(Path(x))
    subjects, data, first = [], None, None
    shorts = [_short(s) for s in specs]
    for pos, (spec, label, ws) in enumerate(zip(specs, labels, weights)):
        short = shorts[pos] if shorts.count(shorts[pos]) == 1 else spec   # two models of one family: the spec
        group = label or (_seed_group(ws) or short if len(ws) > 1 else None)
        for k, w in enumerate(ws):
            rec = recorded(w)
            seed = rec.get("seed", k) if w else None
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(stable_seed(access.seed, "init", spec, pos))
                model, prov = load_model(spec, w, access)
            ids = text_for(model, prov, data_spec, seq_len)
            if data is None:
                data, first = ids, spec
            elif ids.ids.shape != data.ids.shape or not torch.equal(ids.ids, data.ids):
                raise UsageError(f"{spec} tokenizes {data_spec} differently from {first}: their windows cannot be "
                                 "compared", "probe models with different tokenizers in separate runs")
            lab = f"{group}/s{seed}" if len(ws) > 1 else label or (label_for(spec, w) if w else short)
            subjects.append(Subject(lab, model.eval(), "none", prov, group=group or lab,
                                    seed=int(seed) if seed is not None else None,
                                    recipe=recipe_key(w, spec) if w else None))
    labs = [s.label for s in subjects]
    if len(set(labs)) < len(labs):
        raise UsageError("two language models would share a label", "give each --model its own --label")
    return subset_windows(data, limit, access.seed), subjects


def eval_text_command(args, spec: RunSpec, access) -> int:
    """``resprobe eval --data text:...``: the model's loss on the windows (``--limit``: a seeded subset)."""
    from .loading import load_model
    _check_weights(args.model, [args.weights], access)
    model, prov = load_model(args.model, args.weights, access)
    data = subset_windows(text_for(model, prov, args.data, args.seq_len or DEFAULT_SEQ_LEN), args.limit, args.seed)
    t0 = time.time()
    res = evaluate_text(model if is_placed(model) else model.to(spec.torch_device), data, spec)
    if not dist.is_main():
        return 0
    out = dict(res, model=args.model, weights=prov.get("weights"), weights_sha256=prov.get("weights_sha256"),
               seconds=round(time.time() - t0, 3))
    if args.json:
        from .io.tables import clean
        print(json.dumps(clean(out), allow_nan=False))
    else:
        lo, hi = res["loss_ci"]
        print(f"{args.model} on {args.data}: {res['n_windows']} windows of {res['seq_len']} tokens from "
              f"{res['n_documents']} documents ({res['tokenizer']} tokens): loss {res['loss']:.4f} nats "
              f"[{lo:.4f}, {hi:.4f}], perplexity {res['perplexity']:.2f}")
    return 0


def train_text_command(args, recipe, dev, access) -> int:
    """``resprobe train --data text:...@train --test-data text:...@test``: a causal LM from its random
    initialisation (seeded), next-token loss; the held-out documents must be other documents."""
    import sys

    from .loading import load_model
    from .outputs import claim
    from .study import versions
    from .models.lm import is_lm_spec
    from .training import TrainRun, train
    if not is_lm_spec(args.model):
        raise UsageError(f"--data {args.data} is text, but {args.model} is not a language model",
                         "train hf-config:resprobe_twin(...) (or another hf-config: family) on text")
    if not args.test_data or not args.test_data.startswith("text:"):
        raise UsageError("training on text needs held-out documents: --test-data text:...",
                         f"e.g. --data {args.data.split('@')[0]}@train --test-data {args.data.split('@')[0]}@test")
    seq = args.seq_len or DEFAULT_SEQ_LEN
    with claim(args.out):
        torch.manual_seed(args.seed)
        model, prov = load_model(args.model, args.weights, access)
        train_data = subset_windows(text_for(model, prov, args.data, seq), args.limit, args.seed)
        test_data = subset_windows(text_for(model, prov, args.test_data, seq), args.test_limit, args.seed)
        shared = sorted(set(train_data.names) & set(test_data.names))
        if shared:
            raise UsageError(f"{len(shared)} documents are in both --data and --test-data ({', '.join(shared[:3])}"
                             f"{', ...' if len(shared) > 3 else ''}): the test would not be held out",
                             "split them: --data text:...@train --test-data text:...@test")
        cfg = dict(model=args.model, init_weights=prov["weights"], command=" ".join(["resprobe"] + sys.argv[1:]),
                   versions=versions(), device=str(dev), seq_len=seq)
        df = train(model, train_data, test_data, recipe, args.out,
                   TrainRun(device=dev, resume=args.resume, overwrite=args.overwrite, progress_bar=not args.quiet,
                            config=cfg))
    last = df.iloc[-1]
    print(f"trained {args.model}: final train loss {last.train_loss:.4f} nats/token (top-1 error "
          f"{last.train_error:.4f}), held-out loss {last.test_loss:.4f} (top-1 error {last.test_error:.4f}); "
          f"weights in {Path(args.out) / 'model.pt'}, metrics in {Path(args.out) / 'metrics.csv'}")
    return 0
